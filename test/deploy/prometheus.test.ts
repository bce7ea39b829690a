import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { alertRules, haveTool, promqlReferences, readRepoFile, readYaml, repoPath, run } from './support.js'

// Prometheus's own checker on the config and the rules, the rule unit tests, and what promtool
// cannot know: that every alert is tested both ways, points at the scraped job and at a runbook.

interface PrometheusConfig {
  rule_files: string[]
  scrape_configs: Array<{ job_name: string; metrics_path?: string; static_configs: Array<{ targets: string[] }> }>
}
interface RuleTests {
  rule_files: string[]
  tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts: unknown[] }> }>
}

const REQUIRED_ALERTS = [
  'SmallTalkDown',
  'SmallTalkNotReady',
  'SmallTalkHighErrorRatio',
  'SmallTalkHighLatencyP99',
  'SmallTalkEventLoopDelayHigh',
  'SmallTalkPostgresDown',
  'SmallTalkPostgresPoolSaturated',
  'SmallTalkRedisDegraded',
  'SmallTalkAgentDown',
  'SmallTalkAgentDegraded',
  'SmallTalkLlmErrorRatioHigh',
  'SmallTalkLlmCircuitOpen'
]

t.test('promtool check config', async (t) => {
  if (!haveTool(t, 'promtool')) return
  const result = await run('promtool', ['check', 'config', 'monitoring/prometheus.yml'])
  t.equal(result.code, 0, 'prometheus.yml is valid', { output: result.stdout + result.stderr })
  t.match(result.stdout + result.stderr, /1 rule files found/, 'and loads the rule file')
})

t.test('promtool check rules', async (t) => {
  if (!haveTool(t, 'promtool')) return
  const result = await run('promtool', ['check', 'rules', 'monitoring/alerts.yml'])
  t.equal(result.code, 0, 'alerts.yml is valid', { output: result.stdout + result.stderr })
  t.match(result.stdout, new RegExp(`SUCCESS: ${alertRules().length} rules found`), 'every rule is read')
})

t.test('promtool test rules', async (t) => {
  if (!haveTool(t, 'promtool')) return
  const result = await run('promtool', ['test', 'rules', 'monitoring/alerts.test.yml'])
  t.equal(result.code, 0, 'every rule unit test passes', { output: result.stdout + result.stderr })

  // The tests are not vacuous: each of these changes to the rules makes them fail.
  const dir = await mkdtemp(join(tmpdir(), 'smalltalk-rules-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await cp(repoPath('monitoring', 'alerts.test.yml'), join(dir, 'alerts.test.yml'))
  const rules = await readFile(repoPath('monitoring', 'alerts.yml'), 'utf8')
  const mutations: Array<{ what: string; from: RegExp | string; to: string }> = [
    {
      what: 'a 0.6 s event-loop threshold',
      from: 'nodejs_eventloop_lag_p99_seconds{job="smalltalk"} > 0.2',
      to: 'nodejs_eventloop_lag_p99_seconds{job="smalltalk"} > 0.6'
    },
    {
      // postgres is 0 while an instance starts (nothing checked yet) and while it shuts down
      what: 'SmallTalkPostgresDown without its readiness guard (pages for every slow start)',
      from: /\s*and on \(job, instance\)\s*smalltalk_ready\{job="smalltalk"\} == 1/,
      to: ''
    },
    {
      what: 'SmallTalkRedisDegraded on smalltalk_cache_up (misses a Redis that hangs with its connection open)',
      from: 'smalltalk_dependency_up{job="smalltalk", dependency="redis"} == 0',
      to: 'smalltalk_cache_up{job="smalltalk", backend="redis"} == 0'
    },
    {
      what: 'SmallTalkLlmErrorRatioHigh without its traffic guard (pages on one failed call at low traffic)',
      from: /\s*and\s*sum by \(job, provider, model\) \(rate\(smalltalk_llm_requests_total\{[^}]*\}\[5m\]\)\) > 0\.05/,
      to: ''
    },
    {
      what: 'SmallTalkLlmErrorRatioHigh counting cancelled calls (clients going away) as provider failures',
      from: 'outcome!~"ok|cancelled"',
      to: 'outcome!="ok"'
    },
    {
      what: 'SmallTalkLlmCircuitOpen on state="open" (every half_open probe restarts its for:)',
      from: 'smalltalk_llm_circuit_state{job="smalltalk", state="closed"}) == 0',
      to: 'smalltalk_llm_circuit_state{job="smalltalk", state="open"}) == 1'
    }
  ]
  for (const { what, from, to } of mutations) {
    const mutated = rules.replace(from, to)
    t.not(mutated, rules, `${what}: the mutation applies`)
    await writeFile(join(dir, 'alerts.yml'), mutated)
    const broken = await run('promtool', ['test', 'rules', join(dir, 'alerts.test.yml')])
    t.not(broken.code, 0, `${what}: fails the unit tests`)
  }
})

t.test('every alert: the agreed set, a severity, annotations, a runbook, a test each way', async (t) => {
  const rules = alertRules()
  const names = rules.map((rule) => rule.alert)
  for (const required of REQUIRED_ALERTS) t.ok(names.includes(required), `${required} exists`)
  t.equal(new Set(names).size, names.length, 'alert names are unique')

  const tests = readYaml<RuleTests>('monitoring', 'alerts.test.yml')
  t.same(tests.rule_files, ['alerts.yml'], 'the unit tests load alerts.yml')
  const cases = tests.tests.flatMap((test) => test.alert_rule_test ?? [])
  const docs = readRepoFile('DOCKER.md')
  const anchors = new Set(
    [...docs.matchAll(/^#{1,6}\s+(.+)$/gm)].map((m) => m[1]!.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-'))
  )
  for (const rule of rules) {
    t.ok(['critical', 'warning'].includes(rule.labels?.severity ?? ''), `${rule.alert}: severity critical or warning`)
    t.ok(rule.annotations?.summary && rule.annotations.description, `${rule.alert}: summary and description`)
    const runbook = rule.annotations?.runbook ?? ''
    t.match(runbook, /^DOCKER\.md#/, `${rule.alert}: a runbook in DOCKER.md`)
    t.ok(anchors.has(runbook.replace(/^DOCKER\.md#/, '')), `${rule.alert}: DOCKER.md has the section ${runbook}`)
    const mine = cases.filter((c) => c.alertname === rule.alert)
    t.ok(mine.some((c) => c.exp_alerts.length > 0), `${rule.alert}: a unit test where it fires`)
    t.ok(mine.some((c) => c.exp_alerts.length === 0), `${rule.alert}: a unit test where it stays quiet`)
    if (rule.alert !== 'SmallTalkRestarting') t.ok(rule.for, `${rule.alert}: a for: duration (no page on one bad scrape)`)
  }
})

t.test('prometheus.yml scrapes the ops port of the app service, and the rules use its job', async (t) => {
  const config = readYaml<PrometheusConfig>('monitoring', 'prometheus.yml')
  t.same(config.rule_files, ['alerts.yml'], 'loads alerts.yml (beside it, in the repository and in the container)')
  const job = config.scrape_configs.find((c) => c.static_configs.some((s) => s.targets.includes('app:3001')))
  t.ok(job, 'a job scrapes app:3001 (the compose service, ops port)')
  t.equal(job?.metrics_path ?? '/metrics', '/metrics', 'at /metrics')
  for (const rule of alertRules()) {
    const jobs = [...rule.expr.matchAll(/\bjob\s*=\s*"([^"]*)"/g)].map((m) => m[1])
    t.ok(jobs.length > 0, `${rule.alert}: selects the job`)
    t.ok(jobs.every((name) => name === job?.job_name), `${rule.alert}: job "${job?.job_name}"`)
    t.ok(promqlReferences(rule.expr).metrics.size > 0, `${rule.alert}: refers to a metric`)
  }
})
