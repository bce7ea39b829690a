import t from 'tap'
import { REDIS_URL, REQUIRE_SERVICES, createTestDatabase, eventually } from '../helper.js'
import { startServerProcess } from '../support/server-process.js'
import {
  allPanels,
  alertRules,
  parseExposition,
  parseExpositionValues,
  promqlReferences,
  readDashboard,
  sampleValue,
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

// Label values that a query matches exactly (label="value") but that a running service exports only
// in some configurations: checked only when that configuration is the one under test.
const CONDITIONAL_VALUES: Array<{ metric: string; label: string; value: string; when: string; applies: boolean }> = [
  { metric: 'smalltalk_dependency_up', label: 'dependency', value: 'redis', when: 'REDIS_URL is set', applies: Boolean(REDIS_URL) }
]

interface Query {
  where: string
  expr: string
  label?: string
}

function queries (): Query[] {
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
  t.same(
    refs.matcherLabels.map(({ label, op, value }) => `${label}${op}${value}`),
    ['job=smalltalk', 'route!~.*/x'],
    'matcher operators and values'
  )
  t.same([...refs.groupingLabels].sort(), ['job', 'le', 'route'], 'grouping labels')
  const ratio = promqlReferences(
    'sum by (agent, outcome) (rate(m_count{job=~"$job", outcome!="ok"}[5m])) / ignoring (outcome) group_left sum by (agent) (rate(m_count{job=~"$job"}[5m]))'
  )
  t.same([...ratio.metrics], ['m_count'], 'one metric, used twice')
  t.same([...ratio.groupingLabels].sort(), ['agent', 'outcome'], 'ignoring and group_left')
  t.same(ratio.matcherLabels.map(({ label, op, value }) => `${label}${op}${value}`), ['job=~$job', 'outcome!=ok', 'job=~$job'], 'Grafana variables in values')
  const text = '# HELP x y\n# TYPE x gauge\nx{a="1",b="q\\"uote"} 1\nx{a="2",b=""} 1\ny 2\n'
  const exposition = parseExposition(text)
  t.same([...exposition.keys()], ['x', 'y'], 'sample names')
  t.same([...exposition.get('x')!], ['a', 'b'], 'label names')
  const values = parseExpositionValues(text)
  t.same([...values.get('x')!.get('a')!], ['1', '2'], 'label values')
  t.same([...values.get('x')!.get('b')!], ['q"uote', ''], 'escapes resolved')
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

  // The conversation path (the API runs open: no API_KEYS): a session and a message with its reply,
  // so the series that exist only once something happened (the reply histogram by agent and
  // outcome) are there too. Labelled counters (messages by role, conflicts by kind, cache lookups)
  // export zero-valued series from the start.
  const json = { 'content-type': 'application/json' }
  const created = await fetch(`${server.apiUrl}/v1/sessions`, { method: 'POST', headers: json, body: '{}' })
  t.equal(created.status, 201, 'POST /v1/sessions creates a session')
  const session = (await created.json()) as { id: string }
  const posted = await fetch(`${server.apiUrl}/v1/sessions/${session.id}/messages`, {
    method: 'POST',
    headers: json,
    body: JSON.stringify({ content: 'hello' })
  })
  t.equal(posted.status, 201, 'POST /v1/sessions/:id/messages answers with the reply', { body: posted.status === 201 ? undefined : await posted.text() })
  t.equal((await fetch(`${server.apiUrl}/v1/sessions/${session.id}`)).status, 200, 'GET /v1/sessions/:id (a session cache lookup)')
  // A tool call of the default team (the built-in MCP server, echo asking for it), for the tool series.
  const connected = await eventually(async () => {
    const tools = (await (await fetch(`${server.apiUrl}/v1/tools`)).json()) as { servers: Array<{ status: string }> }
    return tools.servers.length > 0 && tools.servers.every((s) => s.status === 'connected')
  }, 20_000)
  t.ok(connected, 'the built-in MCP server is connected')
  const tooled = await fetch(`${server.apiUrl}/v1/sessions/${session.id}/messages`, {
    method: 'POST',
    headers: json,
    body: JSON.stringify({ agent: 'assistant', content: '/tool calculator {"expression":"1+1"}' })
  })
  t.equal(tooled.status, 201, 'a reply with a tool call', { body: tooled.status === 201 ? undefined : await tooled.text() })

  const scrape = await fetch(`${server.opsUrl}/metrics`)
  t.equal(scrape.status, 200, 'the ops port serves /metrics')
  const body = await scrape.text()
  const exported = parseExposition(body)
  const exportedValues = parseExpositionValues(body)
  for (const [name, labels] of Object.entries(PROMETHEUS_SERIES)) exported.set(name, new Set(labels))
  const labelsOf = (metric: string) => new Set([...(exported.get(metric) ?? []), ...TARGET_LABELS])

  // What the traffic above must have produced (the checks below would also pass on zero-valued
  // series; these say the conversation path is really instrumented).
  const sample = (name: string, labels: Record<string, string> = {}) => sampleValue(body, name, labels)
  t.equal(sample('smalltalk_sessions_created_total'), 1, 'one session created')
  t.equal(sample('smalltalk_messages_total', { role: 'user' }), 2, 'two user messages')
  t.equal(sample('smalltalk_messages_total', { role: 'assistant' }), 2, 'two assistant replies')
  t.equal(sample('smalltalk_messages_total', { role: 'tool' }), 1, 'one tool message')
  t.equal(sample('smalltalk_tool_calls_total', { server: 'builtin', tool: 'calculator', outcome: 'ok' }), 1, 'one tool call, outcome ok')
  t.equal(sample('smalltalk_mcp_server_up', { server: 'builtin' }), 1, 'the built-in server is up')
  t.equal(sample('smalltalk_reply_duration_seconds_count', { outcome: 'ok' }), 2, 'two replies observed, outcome ok')
  t.ok((exportedValues.get('smalltalk_reply_duration_seconds_bucket')?.get('agent')?.size ?? 0) > 0, 'the reply histogram is labelled by agent')
  t.ok((sample('smalltalk_active_sessions') ?? 0) >= 1, 'the active sessions gauge counts it')
  t.equal(sample('smalltalk_dependency_up', { dependency: 'postgres' }), 1, 'smalltalk_dependency_up{dependency="postgres"} is 1 on a ready instance')
  if (REDIS_URL) t.equal(sample('smalltalk_dependency_up', { dependency: 'redis' }), 1, 'smalltalk_dependency_up{dependency="redis"} is 1 with REDIS_URL')
  else t.equal(sample('smalltalk_dependency_up', { dependency: 'redis' }), undefined, 'no redis series without REDIS_URL')
  t.equal(sample('smalltalk_ready'), 1, 'smalltalk_ready is 1')

  const all = queries()
  t.ok(all.length > 30, `${all.length} queries to check`)
  for (const query of all) {
    const refs = promqlReferences(query.expr)
    t.ok(refs.metrics.size > 0, `${query.where}: refers to a metric`)
    for (const metric of refs.metrics) {
      t.ok(exported.has(metric), `${query.where}: ${metric} is exported`)
    }
    for (const { metric, label, op, value } of refs.matcherLabels) {
      t.ok(labelsOf(metric).has(label), `${query.where}: ${metric} has the label ${label}`)
      // An exact match on a value the service never exports selects nothing, silently.
      if (op !== '=' || TARGET_LABELS.includes(label) || !exported.has(metric) || metric in PROMETHEUS_SERIES) continue
      const conditional = CONDITIONAL_VALUES.find((c) => c.metric === metric && c.label === label && c.value === value)
      if (conditional && !conditional.applies) {
        const why = `${query.where}: ${metric}{${label}="${value}"} is exported only when ${conditional.when}`
        if (REQUIRE_SERVICES) t.fail(`${why}, and REQUIRE_SERVICES is set`)
        else t.comment(`not checked: ${why}`)
        continue
      }
      t.ok(exportedValues.get(metric)?.get(label)?.has(value), `${query.where}: ${metric} has a series with ${label}="${value}"`)
    }
    const available = new Set([...refs.metrics].flatMap((metric) => [...labelsOf(metric)]))
    for (const label of refs.groupingLabels) {
      t.ok(available.has(label), `${query.where}: grouping label ${label} exists on its metrics`)
    }
    if (query.label) t.ok(available.has(query.label), `${query.where}: label_values over ${query.label}, which exists`)
  }

  t.equal(await stopChild({ ...server }), 0, 'SIGTERM: the server exits 0')
})
