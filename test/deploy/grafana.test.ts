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

t.test('the panels an operator wants', async (t) => {
  const rows = dashboard.panels.filter((p) => p.type === 'row')
  const rowTitles = rows.map((r) => r.title)
  for (const wanted of ['Traffic, errors and latency', 'Readiness and dependencies', 'Node.js runtime', 'PostgreSQL pool', 'Conversations', 'Cache hit ratio', 'LLM providers', 'Agents']) {
    t.ok(rowTitles.includes(wanted), `row: ${wanted}`)
  }
  const exprs = queryPanels.flatMap((p) => (p.targets ?? []).map((target) => target.expr ?? ''))
  const uses = (pattern: RegExp, what: string) => t.ok(exprs.some((e) => pattern.test(e)), what)
  uses(/sum by \(method, route\) \(rate\(http_request_duration_seconds_count/, 'traffic by route')
  uses(/status_code=~"5\.\."/, '5xx errors')
  for (const q of ['0.50', '0.90', '0.99']) uses(new RegExp(`histogram_quantile\\(${q}, sum by \\(le, route\\)`), `latency p${Number(q) * 100} by route`)
  uses(/smalltalk_ready/, 'readiness')
  uses(/smalltalk_dependency_up/, 'PostgreSQL and Redis checks')
  uses(/smalltalk_cache_up/, 'cache backend')
  uses(/nodejs_eventloop_lag_p99_seconds/, 'event-loop delay')
  uses(/nodejs_heap_size_used_bytes/, 'heap')
  uses(/process_resident_memory_bytes/, 'RSS')
  uses(/smalltalk_db_pool_connections/, 'PostgreSQL pool')

  // Conversations
  uses(/^max\(smalltalk_active_sessions\{/, 'active sessions (a count in the shared database: the max over replicas, not the sum)')
  for (const counter of ['created', 'invalidated', 'expired']) uses(new RegExp(`rate\\(smalltalk_sessions_${counter}_total\\{`), `sessions ${counter} per second`)
  uses(/sum by \(role\) \(rate\(smalltalk_messages_total\{/, 'messages per second by role')
  for (const q of ['0.50', '0.95', '0.99']) {
    uses(new RegExp(`histogram_quantile\\(${q}, sum by \\(le, agent\\) \\(rate\\(smalltalk_reply_duration_seconds_bucket\\{`), `reply latency p${Number(q) * 100} by agent`)
  }
  uses(/smalltalk_reply_duration_seconds_count\{[^}]*outcome!="ok"[^}]*\}.*\/ ignoring \(outcome\) group_left sum by \(agent\)/, 'reply error ratio by agent and outcome')
  uses(/sum by \(kind\) \(rate\(smalltalk_conflicts_total\{/, 'conflicts by kind (busy, version)')
  uses(/rate\(smalltalk_idempotent_replays_total\{/, 'idempotent replays')
  // Cache
  uses(/sum by \(cache\) \(rate\(smalltalk_cache_lookups_total\{[^}]*result="hit"[^}]*\}.*\/ sum by \(cache\) \(rate\(smalltalk_cache_lookups_total\{/, 'cache hit ratio by cache')

  // LLM providers: by provider and model, the error ratio as SmallTalkLlmErrorRatioHigh computes it
  uses(/sum by \(provider, model, outcome\) \(rate\(smalltalk_llm_requests_total\{/, 'LLM calls per second by provider, model and outcome')
  uses(
    /sum by \(provider, model\) \(rate\(smalltalk_llm_requests_total\{[^}]*outcome!~"ok\|cancelled"[^}]*\}.*\/ sum by \(provider, model\) \(rate\(smalltalk_llm_requests_total\{[^}]*outcome!="cancelled"/,
    'LLM error ratio by provider and model (cancelled left out, like the alert)'
  )
  for (const histogram of ['smalltalk_llm_request_duration_seconds', 'smalltalk_llm_time_to_first_token_seconds']) {
    for (const q of ['0.50', '0.95', '0.99']) {
      uses(new RegExp(`histogram_quantile\\(${q}, sum by \\(le, provider, model\\) \\(rate\\(${histogram}_bucket\\{`), `${histogram} p${Number(q) * 100} by provider and model`)
    }
  }
  uses(/sum by \(provider, model, kind\) \(rate\(smalltalk_llm_tokens_total\{/, 'tokens per second by provider, model and kind')
  uses(/rate\(smalltalk_llm_retries_total\{/, 'retries')
  uses(/smalltalk_llm_circuit_state\{[^}]*state="open"/, 'circuit breaker state')
  // Agents
  uses(/smalltalk_agent_health_state\{[^}]*state="down"/, 'agent health state')
  uses(/sum by \(agent, fallback\) \(rate\(smalltalk_agent_fallbacks_total\{/, 'fallbacks by agent')
  uses(/rate\(smalltalk_router_decisions_total\{/, 'router decisions')

  // Every row is real: expanded, with query panels and no placeholder note.
  const rowPanels = (title: string): Panel[] => {
    const index = dashboard.panels.findIndex((p) => p.type === 'row' && p.title === title)
    if (index < 0) return []
    const row = dashboard.panels[index]!
    if (row.collapsed) return row.panels ?? []
    const next = dashboard.panels.findIndex((p, i) => i > index && p.type === 'row')
    return dashboard.panels.slice(index + 1, next < 0 ? undefined : next)
  }
  t.same(rows.filter((r) => r.collapsed).map((r) => r.title), [], 'no collapsed (placeholder) rows')
  for (const title of rowTitles) {
    const inside = rowPanels(title)
    t.ok(inside.length > 0 && inside.every((p) => p.type !== 'text' && (p.targets ?? []).length > 0), `${title}: query panels only, no placeholder`)
  }
})

t.test('the layout: no two panels overlap', async (t) => {
  // Top-level panels as Grafana lays them out (collapsed rows' panels are not shown), then each
  // collapsed row's panels among themselves (placed below the row when it is expanded).
  const overlaps = (list: Panel[]) => {
    const found: string[] = []
    list.forEach((a, i) =>
      list.slice(i + 1).forEach((b) => {
        const apart =
          a.gridPos.x + a.gridPos.w <= b.gridPos.x ||
          b.gridPos.x + b.gridPos.w <= a.gridPos.x ||
          a.gridPos.y + a.gridPos.h <= b.gridPos.y ||
          b.gridPos.y + b.gridPos.h <= a.gridPos.y
        if (!apart) found.push(`${a.title} / ${b.title}`)
      })
    )
    return found
  }
  t.same(overlaps(dashboard.panels), [], 'the dashboard')
  for (const row of dashboard.panels.filter((p) => p.type === 'row' && p.collapsed)) {
    t.same(overlaps(row.panels ?? []), [], `inside ${row.title}`)
    t.ok((row.panels ?? []).every((p) => p.gridPos.y > row.gridPos.y), `${row.title}: its panels below it`)
  }
  const ys = dashboard.panels.map((p) => p.gridPos.y)
  t.same(ys, [...ys].sort((a, b) => a - b), 'panels listed top to bottom (the order Grafana reads them in)')
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
