import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { stringify as toYaml } from 'yaml'
import { allPanels, haveTool, readDashboard, readYaml, run, variableQuery, type Panel } from './support.js'

// The provisioned Grafana: a datasource the dashboard points at, a dashboard provider whose path
// compose mounts, and a dashboard whose every panel queries something (metric names are checked
// against a running service in metrics-exist.test.ts).

interface Datasources {
  apiVersion: number
  datasources: Array<{ name: string; uid: string; type: string; url: string; access: string; isDefault?: boolean }>
}
interface Providers {
  apiVersion: number
  providers: Array<{ name: string; type: string; options: { path: string } }>
}
interface RawCompose {
  services: Record<string, { volumes?: string[]; command?: string[] }>
}

const dashboard = readDashboard()
const panels = allPanels(dashboard)
const queryPanels = panels.filter((p) => p.type !== 'row' && p.type !== 'text')
const datasources = readYaml<Datasources>('monitoring', 'grafana', 'provisioning', 'datasources', 'prometheus.yml')
const prometheusSource = datasources.datasources.find((d) => d.type === 'prometheus')

t.test('the datasource: the compose Prometheus, under the uid the dashboard uses', async (t) => {
  t.equal(datasources.apiVersion, 1, 'provisioning apiVersion 1')
  t.ok(prometheusSource, 'a Prometheus datasource')
  t.equal(prometheusSource?.url, 'http://prometheus:9090', 'at the prometheus compose service')
  t.equal(prometheusSource?.access, 'proxy', 'queried by the Grafana server (the browser cannot reach the compose network)')
  t.equal(prometheusSource?.isDefault, true, 'the default datasource')
})

t.test('the dashboard provider reads the directory compose mounts', async (t) => {
  const providers = readYaml<Providers>('monitoring', 'grafana', 'provisioning', 'dashboards', 'smalltalk.yml')
  const compose = readYaml<RawCompose>('compose.yaml')
  const mounts = compose.services.grafana?.volumes ?? []
  t.equal(providers.providers.length, 1, 'one provider')
  const provider = providers.providers[0]!
  t.equal(provider.type, 'file', 'file provider')
  t.ok(mounts.includes(`./monitoring/grafana/dashboards:${provider.options.path}:ro`), `compose mounts monitoring/grafana/dashboards at ${provider.options.path}`)
  t.ok(mounts.includes('./monitoring/grafana/provisioning:/etc/grafana/provisioning:ro'), 'and the provisioning directory where Grafana looks for it')
})

t.test('the dashboard', async (t) => {
  t.equal(dashboard.uid, 'smalltalk-server', 'a stable uid (links survive re-provisioning)')
  t.ok(dashboard.title, 'a title')
  const ids = panels.map((p) => p.id)
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique')
  for (const panel of panels) {
    t.ok(panel.gridPos.x + panel.gridPos.w <= 24 && panel.gridPos.w > 0 && panel.gridPos.h > 0, `${panel.title}: fits the 24-column grid`)
  }
  t.ok(queryPanels.length >= 20, `${queryPanels.length} query panels`)
  for (const panel of queryPanels) {
    const targets = panel.targets ?? []
    t.ok(targets.length > 0, `${panel.title}: has a query`)
    t.equal(panel.datasource?.uid, prometheusSource?.uid, `${panel.title}: uses the provisioned datasource`)
    for (const target of targets) {
      t.ok(target.expr && target.expr.trim().length > 0, `${panel.title} ${target.refId}: a non-empty PromQL expression`)
      t.match(target.expr, /job=~"\$job"/, `${panel.title} ${target.refId}: filtered by $job`)
      t.match(target.expr, /instance=~"\$instance"/, `${panel.title} ${target.refId}: filtered by $instance`)
    }
    const refIds = targets.map((target) => target.refId)
    t.equal(new Set(refIds).size, refIds.length, `${panel.title}: distinct refIds`)
  }
})

t.test('template variables instance and job', async (t) => {
  const byName = new Map(dashboard.templating.list.map((v) => [v.name, v]))
  const job = byName.get('job')
  const instance = byName.get('instance')
  t.equal(job?.type, 'query', 'job is a query variable')
  t.equal(instance?.type, 'query', 'instance is a query variable')
  t.same(variableQuery(job!), { expr: 'smalltalk_uptime_seconds', label: 'job' }, 'job: the jobs that export SmallTalk metrics')
  t.same(variableQuery(instance!), { expr: 'smalltalk_uptime_seconds{job=~"$job"}', label: 'instance' }, 'instance: the instances of the chosen job')
  t.equal(instance?.multi, true, 'several instances can be chosen')
  t.equal(instance?.includeAll, true, 'with an All option')
  for (const variable of [job, instance]) t.equal(variable?.datasource?.uid, prometheusSource?.uid, `${variable?.name}: the provisioned datasource`)
})

t.test('the panels an operator wants, and rows prepared for the conversation metrics', async (t) => {
  const rows = dashboard.panels.filter((p) => p.type === 'row')
  const rowTitles = rows.map((r) => r.title)
  for (const wanted of ['Traffic, errors and latency', 'Readiness and dependencies', 'Node.js runtime', 'PostgreSQL pool']) {
    t.ok(rowTitles.includes(wanted), `row: ${wanted}`)
  }
  const exprs = queryPanels.flatMap((p) => (p.targets ?? []).map((target) => target.expr ?? ''))
  const uses = (pattern: RegExp, what: string) => t.ok(exprs.some((e) => pattern.test(e)), what)
  uses(/sum by \(method, route\) \(rate\(http_request_duration_seconds_count/, 'traffic by route')
  uses(/status_code=~"5\.\."/, '5xx errors')
  for (const q of ['0.50', '0.90', '0.99']) uses(new RegExp(`histogram_quantile\\(${q}, sum by \\(le, route\\)`), `latency p${Number(q) * 100} by route`)
  uses(/smalltalk_ready/, 'readiness')
  uses(/smalltalk_cache_up/, 'cache state')
  uses(/nodejs_eventloop_lag_p99_seconds/, 'event-loop delay')
  uses(/nodejs_heap_size_used_bytes/, 'heap')
  uses(/process_resident_memory_bytes/, 'RSS')
  uses(/smalltalk_db_pool_connections/, 'PostgreSQL pool')

  const prepared = rows.filter((r) => r.collapsed)
  for (const topic of ['Conversations', 'LLM providers', 'Agents']) {
    const row = prepared.find((r) => r.title.startsWith(topic))
    t.ok(row, `a collapsed row for ${topic}`)
    const texts = (row?.panels ?? []).filter((p: Panel) => p.type === 'text')
    t.ok(texts.length > 0 && texts.every((p) => /`smalltalk_[a-z_]+`/.test(p.options?.content ?? '')), `${topic}: a text panel naming the metrics that will fill it`)
    t.ok((row?.panels ?? []).every((p) => p.type === 'text'), `${topic}: no queries yet (the metrics do not exist)`)
  }
})

t.test('every dashboard query is valid PromQL (promtool)', async (t) => {
  if (!haveTool(t, 'promtool')) return
  // Grafana's variables replaced by what they expand to, each query as a recording rule.
  const expand = (expr: string) =>
    expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', 'smalltalk').replaceAll('$instance', '.*')
  const rules = queryPanels.flatMap((panel) =>
    (panel.targets ?? []).map((target, i) => ({ record: `dashboard:panel_${panel.id}_${i}`, expr: expand(target.expr ?? '') }))
  )
  for (const variable of dashboard.templating.list) {
    rules.push({ record: `dashboard:variable_${variable.name}`, expr: expand(variableQuery(variable).expr) })
  }
  const dir = await mkdtemp(join(tmpdir(), 'smalltalk-dashboard-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'dashboard-queries.yml')
  await writeFile(file, toYaml({ groups: [{ name: 'dashboard', rules }] }))
  const result = await run('promtool', ['check', 'rules', file])
  t.equal(result.code, 0, `promtool parses all ${rules.length} queries`, { output: result.stdout + result.stderr })
})
