import t from 'tap'
import { REDIS_URL, createTestDatabase } from '../helper.js'
import { startServerProcess } from '../support/server-process.js'
import {
  allPanels,
  alertRules,
  parseExposition,
  promqlReferences,
  readDashboard,
  stopChild,
  variableQuery
} from './support.js'

// Dashboards and alerts must never point at metrics that do not exist: the real server is started,
// exercised, scraped, and every metric and label name that a dashboard query or an alert expression
// uses is looked up in what it exports.

// Series that Prometheus itself makes for every target, and the labels it adds to every series.
const PROMETHEUS_SERIES: Record<string, string[]> = {
  up: [],
  scrape_duration_seconds: [],
  scrape_samples_scraped: []
}
const TARGET_LABELS = ['job', 'instance']

interface Query {
  where: string
  expr: string
  label?: string
}

function queries(): Query[] {
  const dashboard = readDashboard()
  const found: Query[] = []
  for (const panel of allPanels(dashboard)) {
    for (const target of panel.targets ?? []) found.push({ where: `dashboard panel "${panel.title}" ${target.refId}`, expr: target.expr ?? '' })
  }
  for (const variable of dashboard.templating.list) {
    const { expr, label } = variableQuery(variable)
    found.push({ where: `dashboard variable $${variable.name}`, expr, label })
  }
  for (const rule of alertRules()) found.push({ where: `alert ${rule.alert}`, expr: rule.expr })
  return found
}

t.test('the reference parser reads what the dashboards and alerts write', async (t) => {
  const refs = promqlReferences(
    'histogram_quantile(0.99, sum by (job, route, le) (rate(http_request_duration_seconds_bucket{job="smalltalk", route!~".*/x"}[5m]))) > 1 and on (job, route) up offset 5m'
  )
  t.same([...refs.metrics].sort(), ['http_request_duration_seconds_bucket', 'up'], 'metric names, not functions, keywords or durations')
  t.same(refs.matcherLabels.map((m) => m.label), ['job', 'route'], 'matcher labels')
  t.same([...refs.groupingLabels].sort(), ['job', 'le', 'route'], 'grouping labels')
  const exposition = parseExposition('# HELP x y\n# TYPE x gauge\nx{a="1",b="q\\"uote"} 1\ny 2\n')
  t.same([...exposition.keys()], ['x', 'y'], 'sample names')
  t.same([...exposition.get('x')!], ['a', 'b'], 'label names')
})

t.test('every metric used by the dashboard and the alerts is exported by a running service', async (t) => {
  const env: Record<string, string | undefined> = {
    DATABASE_URL: await createTestDatabase(t),
    LOG_LEVEL: 'warn',
    NODE_ENV: 'test'
  }
  if (REDIS_URL) env.REDIS_URL = REDIS_URL
  const server = await startServerProcess(env)
  t.teardown(() => stopChild({ ...server }, 5000))

  // Traffic on the api port: matched routes and an unmatched one (route label __unknown__).
  for (let i = 0; i < 5; i++) t.equal((await fetch(`${server.apiUrl}/`)).status, 200, `GET / #${i + 1}`)
  t.equal((await fetch(`${server.apiUrl}/no-such-route`)).status, 404, 'GET /no-such-route is a 404')
  const scrape = await fetch(`${server.opsUrl}/metrics`)
  t.equal(scrape.status, 200, 'the ops port serves /metrics')
  const exported = parseExposition(await scrape.text())
  for (const [name, labels] of Object.entries(PROMETHEUS_SERIES)) exported.set(name, new Set(labels))
  const labelsOf = (metric: string) => new Set([...(exported.get(metric) ?? []), ...TARGET_LABELS])

  const all = queries()
  t.ok(all.length > 30, `${all.length} queries to check`)
  for (const query of all) {
    const refs = promqlReferences(query.expr)
    t.ok(refs.metrics.size > 0, `${query.where}: refers to a metric`)
    for (const metric of refs.metrics) {
      t.ok(exported.has(metric), `${query.where}: ${metric} is exported`)
    }
    for (const { metric, label } of refs.matcherLabels) {
      t.ok(labelsOf(metric).has(label), `${query.where}: ${metric} has the label ${label}`)
    }
    const available = new Set([...refs.metrics].flatMap((metric) => [...labelsOf(metric)]))
    for (const label of refs.groupingLabels) {
      t.ok(available.has(label), `${query.where}: grouping label ${label} exists on its metrics`)
    }
    if (query.label) t.ok(available.has(query.label), `${query.where}: label_values over ${query.label}, which exists`)
  }

  t.equal(await stopChild({ ...server }), 0, 'SIGTERM: the server exits 0')
})
