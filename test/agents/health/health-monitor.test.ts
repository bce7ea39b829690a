import t, { type Test } from 'tap'
import pg from 'pg'
import pino from 'pino'
import { Registry } from 'prom-client'
import type { AgentDefinition, AgentStatus } from '../../../src/agents/agent.js'
import { HealthMonitor, type HealthMonitorOptions } from '../../../src/agents/health/health-monitor.js'
import { HEALTH_LOCK_KEY } from '../../../src/agents/health/health-store.js'
import { AgentRegistry } from '../../../src/agents/registry.js'
import { runMigrations } from '../../../src/db/migrate.js'
import { LlmMetrics } from '../../../src/metrics/llm-metrics.js'
import { createTestDatabase, eventually } from '../../helper.js'
import { LlmStub } from '../../support/llm-stub.js'
import { ManualClock } from '../../support/manual-clock.js'

const silent = pino({ level: 'silent' })
const KEY = 'sk-test-health-secret-0123456789'

// The monitor against the real PostgreSQL and the real OpenAI adapter talking to a loopback stub. Its
// ticks, early runs and probe timeouts run on a manual clock that the tests move; when a model is due
// is the database's clock, moved by ageProbes().

function agent (id: string, provider: AgentDefinition['provider'], model: string, extra: Partial<AgentDefinition> = {}): AgentDefinition {
  return { id, name: id, description: '', provider, model, systemPrompt: '', temperature: 0.7, maxTokens: 100, expertise: [], ...extra }
}

async function migratedPool (t: Test, url?: string): Promise<{ pool: pg.Pool; url: string }> {
  const databaseUrl = url ?? (await createTestDatabase(t))
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  pool.on('error', () => undefined)
  t.teardown(() => pool.end())
  if (!url) await runMigrations(pool, silent)
  return { pool, url: databaseUrl }
}

interface Replica {
  monitor: HealthMonitor
  registry: AgentRegistry
  prom: Registry
  clock: ManualClock
}

/**
 * One replica: gpt and mini share model gpt-x (one probe), other has its own model and base URL,
 * offline runs on echo. The SDKs are loaded first, as the app does before it reports ready.
 */
async function replica (t: Test, pool: pg.Pool, stub: LlmStub, options: Partial<HealthMonitorOptions> = {}): Promise<Replica> {
  const definitions = [
    agent('gpt', 'openai', 'gpt-x', { fallback: 'offline' }),
    agent('mini', 'openai', 'gpt-x'),
    agent('other', 'openai', 'gpt-y', { baseUrl: stub.urlFor('other') }),
    agent('offline', 'echo', 'echo-1')
  ]
  // The real registry builds the real OpenAI adapter for the stub's base URLs.
  const registry = new AgentRegistry(definitions, { OPENAI_API_KEY: KEY, OPENAI_BASE_URL: stub.openaiBaseUrl })
  await registry.preload()
  const prom = new Registry()
  const metrics = new LlmMetrics(prom, definitions.map((a) => ({ id: a.id, provider: registry.effectiveProvider(a.id), model: a.model })))
  const clock = new ManualClock()
  const monitor = new HealthMonitor({
    pool,
    registry,
    metrics,
    log: silent,
    intervalMs: 60_000,
    probeMode: 'models',
    probeTimeoutMs: 2000,
    slowProbeMs: 1000,
    retentionDays: 7,
    secrets: [KEY],
    clock,
    ...options
  })
  t.teardown(() => monitor.stop())
  return { monitor, registry, prom, clock }
}

async function startStub (t: Test): Promise<LlmStub> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  return stub
}

/** Makes every last probe an hour old, so that the next run probes again (instead of waiting an interval). */
async function ageProbes (pool: pg.Pool): Promise<void> {
  await pool.query("UPDATE agent_health SET probed_at = probed_at - interval '1 hour'")
}

async function events (pool: pg.Pool, agentId: string) {
  const { rows } = await pool.query<{ type: string; tenant: string | null; data: Record<string, unknown> }>(
    'SELECT type, tenant, data FROM event_logs WHERE agent_id = $1 ORDER BY id',
    [agentId]
  )
  return rows
}

async function gauge (prom: Registry, agentId: string): Promise<Record<string, number>> {
  const metric = await prom.getSingleMetric('smalltalk_agent_health_state')!.get()
  return Object.fromEntries(metric.values.filter((v) => v.labels.agent === agentId).map((v) => [String(v.labels.state), v.value]))
}

const onlyMain = (r: { prefix: string }) => r.prefix === ''

t.test('probes: healthy → degraded → down on failing probes, back to healthy after two successes, with events and samples', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, prom } = await replica(t, pool, stub)

  const first = await monitor.runOnce()
  t.equal(first.leader, true)
  t.same(new Set(first.probed), new Set(['gpt', 'mini', 'other', 'offline']))
  t.same(first.transitions, [], 'a first successful probe is no transition')
  t.equal(stub.requests.filter((r) => r.kind === 'models').length, 2, 'one probe per distinct provider+model+baseUrl (gpt and mini share one)')
  t.ok(stub.requests.every((r) => r.apiKey === KEY && r.path.endsWith('/v1/models')), 'the real client listed the models with the key')
  const { rows: samples } = await pool.query('SELECT agent_id, provider, model, status, source, latency_ms, error, folded_at FROM health_checks ORDER BY agent_id')
  t.match(samples, [
    { agent_id: 'gpt', provider: 'openai', model: 'gpt-x', status: 'healthy', source: 'probe', error: null },
    { agent_id: 'mini', provider: 'openai', model: 'gpt-x', status: 'healthy', source: 'probe' },
    { agent_id: 'offline', provider: 'echo', model: 'echo-1', status: 'healthy', source: 'probe' },
    { agent_id: 'other', provider: 'openai', model: 'gpt-y', status: 'healthy', source: 'probe' }
  ])
  t.ok(samples.every((s) => typeof s.latency_ms === 'number' && s.folded_at instanceof Date))
  t.equal(registry.health('gpt').message.startsWith('probe answered in'), true)
  t.not(registry.health('gpt').checkedAt, null)

  const again = await monitor.runOnce()
  t.same(again.probed, [], 'never more often than the interval')
  t.equal(stub.requests.length, 2)

  const expectStatus = async (status: AgentStatus, message: string) => {
    await ageProbes(pool)
    await monitor.runOnce()
    t.equal(registry.status('gpt'), status, message)
    t.equal(registry.status('mini'), status, `${message} (mini shares the probe)`)
    t.equal(registry.status('other'), 'healthy', 'the other model is unaffected')
  }
  stub.enqueue({ status: 503, errorMessage: `overloaded, key ${KEY}` }, { times: 3, when: onlyMain })
  await expectStatus('degraded', 'first failure: degraded')
  t.same(await gauge(prom, 'gpt'), { healthy: 0, degraded: 1, down: 0 })
  await expectStatus('degraded', 'second failure: still degraded')
  await expectStatus('down', 'third failure: down')
  t.ok(registry.isDown('gpt'), 'routing skips it')
  t.same(await gauge(prom, 'gpt'), { healthy: 0, degraded: 0, down: 1 })
  t.same(await gauge(prom, 'other'), { healthy: 1, degraded: 0, down: 0 })
  t.match(registry.health('gpt').message, /^probe failed: server: /)
  await expectStatus('down', 'one success is not enough')
  await expectStatus('healthy', 'two successes in a row: healthy')
  t.same(await gauge(prom, 'gpt'), { healthy: 1, degraded: 0, down: 0 })

  const gptEvents = await events(pool, 'gpt')
  t.same(gptEvents.map((e) => e.type), ['agent.status_changed', 'agent.status_changed', 'agent.failed', 'agent.status_changed', 'agent.recovered'])
  t.ok(gptEvents.every((e) => e.tenant === null), 'agent health events belong to every tenant')
  t.match(gptEvents[0]!.data, { from: 'healthy', to: 'degraded', source: 'probe', reason: /^probe failed: server: / })
  t.match(gptEvents[1]!.data, { from: 'degraded', to: 'down', source: 'probe' })
  t.match(gptEvents[2]!.data, { source: 'monitor', from: 'degraded', reason: /^probe failed: server: / })
  t.match(gptEvents[3]!.data, { from: 'down', to: 'healthy', source: 'probe', reason: /^probe answered in/ })
  t.match(gptEvents[4]!.data, { source: 'monitor', to: 'healthy', downSeconds: Number })
  t.same((await events(pool, 'mini')).map((e) => e.type), gptEvents.map((e) => e.type), 'every agent of the model has its own events')
  t.same(await events(pool, 'other'), [])

  const { rows: history } = await pool.query("SELECT status, error FROM health_checks WHERE agent_id = 'gpt' AND source = 'probe' ORDER BY id")
  t.same(history.map((r) => r.status), ['healthy', 'down', 'down', 'down', 'healthy', 'healthy'], 'each sample holds its own verdict')
  t.match(history[1]!.error, /^server: /)
  const { rows: leaks } = await pool.query(
    "SELECT (SELECT count(*) FROM health_checks WHERE error LIKE '%' || $1 || '%') + (SELECT count(*) FROM event_logs WHERE data::text LIKE '%' || $1 || '%') + (SELECT count(*) FROM agent_health WHERE reason LIKE '%' || $1 || '%') AS n",
    [KEY]
  )
  t.equal(Number(leaks[0].n), 0, 'the key the provider echoed is stored nowhere')
  const { rows: state } = await pool.query("SELECT status, failures, successes FROM agent_health WHERE agent_id = 'gpt'")
  t.same(state, [{ status: 'healthy', failures: 0, successes: 2 }])
})

t.test('no pooled connection and no lock is held while a probe is on the network', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry } = await replica(t, pool, stub)
  let answer!: () => void
  stub.enqueue({ until: new Promise<void>((resolve) => { answer = resolve }) }, { when: onlyMain })
  const running = monitor.runOnce()
  await stub.waitForRequests(2)
  t.equal(pool.totalCount - pool.idleCount, 0, 'every client of the pool is idle while the probe waits for its answer')
  const { rows: locks } = await pool.query(
    `SELECT count(*)::int AS n FROM pg_locks
      WHERE locktype = 'advisory' AND ((classid::bigint << 32) | objid::bigint) = $1
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [HEALTH_LOCK_KEY]
  )
  t.equal(locks[0].n, 0, "and no session holds the monitor's lock")
  answer()
  const report = await running
  t.same({ leader: report.leader, probed: new Set(report.probed) }, { leader: true, probed: new Set(['gpt', 'mini', 'other', 'offline']) })
  t.match(registry.health('gpt').message, /^probe answered in/)
})

t.test('slow and rate-limited probes degrade but never take an agent down; auth failures do', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, clock } = await replica(t, pool, stub, { slowProbeMs: 150 })
  await monitor.runOnce()

  let answer!: () => void
  stub.enqueue({ until: new Promise<void>((resolve) => { answer = resolve }) }, { when: onlyMain })
  await ageProbes(pool)
  const slow = monitor.runOnce()
  await stub.waitForRequests(4)
  await clock.waitFor((pending) => pending.length === 1, "gpt-x's probe alone in flight")
  clock.advance(200)
  answer()
  await slow
  t.equal(registry.status('gpt'), 'degraded')
  t.equal(registry.health('gpt').message, 'probe slow: 200 ms (limit 150 ms)')

  stub.enqueue({ status: 429, headers: { 'retry-after': '1' } }, { times: 4, when: onlyMain })
  for (let i = 0; i < 4; i++) {
    await ageProbes(pool)
    await monitor.runOnce()
  }
  t.equal(registry.status('gpt'), 'degraded', 'rate limited four times: still degraded, not down')
  t.match(registry.health('gpt').message, /^probe rate_limited: /)
  const { rows: limited } = await pool.query("SELECT status, rate_limited FROM health_checks WHERE agent_id = 'gpt' ORDER BY id DESC LIMIT 1")
  t.same(limited, [{ status: 'degraded', rate_limited: 1 }])

  stub.enqueue({ status: 401, errorMessage: `Incorrect API key provided: ${KEY}` }, { times: 3, when: onlyMain })
  for (let i = 0; i < 3; i++) {
    await ageProbes(pool)
    await monitor.runOnce()
  }
  t.equal(registry.status('gpt'), 'down', 'a refused key: down after three probes')
  t.match(registry.health('gpt').message, /^probe failed: auth: /)
  t.notMatch(registry.health('gpt').message, KEY)
})

t.test('a probe that hangs fails at the probe timeout, and its connection is closed', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, clock } = await replica(t, pool, stub, { probeTimeoutMs: 300 })
  stub.enqueue({ hang: true }, { when: onlyMain })
  const running = monitor.runOnce()
  await stub.waitForRequests(2)
  await clock.waitFor((pending) => pending.length === 1, "gpt-x's probe alone in flight")
  clock.advance(299)
  t.equal(registry.status('gpt'), 'healthy', 'still waiting 1 ms before the timeout')
  clock.advance(1)
  const report = await running
  t.equal(report.transitions.length, 2, 'gpt and mini degraded')
  t.equal(registry.status('gpt'), 'degraded')
  t.equal(registry.status('other'), 'healthy', 'the other probe ran in parallel and answered')
  const { rows } = await pool.query("SELECT status, error, latency_ms FROM health_checks WHERE agent_id = 'gpt'")
  t.equal(rows[0].error, 'timeout: no answer within 300 ms')
  t.equal(rows[0].latency_ms, 300)
  await stub.idle()
  t.equal(stub.inFlight, 0, 'the hung request was aborted')
})

t.test('the probe timeout is capped at the interval; completion probes ask for one token', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, clock } = await replica(t, pool, stub, { intervalMs: 250, probeTimeoutMs: 10_000, probeMode: 'completion' })
  stub.enqueue({ hang: true }, { when: (r) => r.kind === 'chat' && r.model === 'gpt-x' })
  const running = monitor.runOnce()
  await stub.waitForRequests(2)
  await clock.waitFor((pending) => pending.length === 1, "gpt-x's probe alone in flight")
  t.same(clock.pending, [250], 'its timeout is the interval')
  clock.advance(250)
  await running
  t.equal(registry.status('gpt'), 'degraded', 'failed at the 250 ms interval, not the 10 s timeout')
  t.equal(registry.health('gpt').message, 'probe failed: timeout: no answer within 250 ms')
  const chats = stub.chatRequests()
  t.equal(chats.length, 2)
  t.ok(chats.every((r) => r.maxTokens === 1 && r.stream === false), 'a non-streamed completion of one token')
})

t.test('stop() with a probe in flight: aborted at once, nothing written, no timer left', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, clock } = await replica(t, pool, stub, { firstTickDelayMs: 0, probeTimeoutMs: 30_000, intervalMs: 60_000 })
  stub.enqueue({ hang: true }, { when: onlyMain })
  monitor.start()
  clock.advance(0)
  await stub.waitForRequests(2)
  // With the clock standing still: stop cannot be waiting for the probe timeout.
  await monitor.stop()
  t.same(clock.pending, [], 'no timer left: neither the next tick nor the probe timeout')
  await stub.idle()
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM health_checks')
  t.equal(rows[0].n, 0, 'a cut run writes no samples')
  const { rows: held } = await pool.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
  t.equal(held[0].n, 0, 'the lock was released')
  t.equal(registry.status('gpt'), 'healthy')
  const report = await monitor.runOnce()
  t.same(report, { leader: false, probed: [], flushed: 0, folded: 0, transitions: [], purged: 0 }, 'a stopped monitor does nothing')
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 1, errorKind: 'server' })
  t.equal(stub.requests.length, 2, 'and probes nothing')
})

t.test('traffic: aggregated samples, a burst of failures takes an agent down before the next probe, successes recover it', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry, prom } = await replica(t, pool, stub, { firstTickDelayMs: 60_000 })
  await monitor.runOnce()

  for (let i = 0; i < 40; i++) monitor.recordTraffic('gpt', { ok: true, latencyMs: 100 + i })
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 5, errorKind: 'bad_request', error: 'context too long' })
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 5, errorKind: 'cancelled' })
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 5, errorKind: 'circuit_open' })
  monitor.recordTraffic('offline', { ok: false, latencyMs: 5, errorKind: 'server' })
  monitor.recordTraffic('nobody', { ok: false, latencyMs: 5, errorKind: 'server' })
  monitor.recordTraffic('other', { ok: false, latencyMs: Number.NaN, errorKind: 'server', error: `boom ${KEY}` })
  monitor.recordTraffic('other', { ok: true, latencyMs: 20 })
  const report = await monitor.runOnce()
  t.equal(report.flushed, 2, 'one sample per agent with traffic, not one per reply')
  t.equal(report.folded, 2)
  t.match(report.transitions, [{ agentId: 'other', from: 'healthy', to: 'degraded', source: 'traffic', reason: '1 of 2 replies failed or were rate limited (last: server: boom [redacted])' }], 'gpt: successes and ignored outcomes, no change')
  t.equal(report.transitions.length, 1)
  const { rows: traffic } = await pool.query("SELECT agent_id, status, attempts, failures, failure_streak, latency_ms, error, folded_at FROM health_checks WHERE source = 'traffic' ORDER BY agent_id")
  t.match(traffic, [
    { agent_id: 'gpt', status: 'healthy', attempts: 40, failures: 0, failure_streak: 0, latency_ms: 120, error: null },
    { agent_id: 'other', status: 'degraded', attempts: 2, failures: 1, failure_streak: 0, latency_ms: 10, error: 'server: boom [redacted]' }
  ])
  t.ok(traffic.every((r) => r.folded_at instanceof Date))
  t.equal(registry.status('other'), 'degraded', 'one failure in two replies is above the error ratio')
  t.equal(registry.status('gpt'), 'healthy')

  // A burst: three failures in a row ask for an early run, long before the next tick.
  monitor.start()
  for (let i = 0; i < 3; i++) monitor.recordTraffic('gpt', { ok: false, latencyMs: 30, errorKind: 'server', error: '503 service unavailable' })
  t.ok(await eventually(() => registry.isDown('gpt'), 5000), 'down from traffic alone')
  t.same(await gauge(prom, 'gpt'), { healthy: 0, degraded: 0, down: 1 })
  t.equal(registry.status('mini'), 'healthy', 'traffic is per agent, even on a shared model')
  const gptEvents = await events(pool, 'gpt')
  t.match(gptEvents, [
    { type: 'agent.status_changed', data: { from: 'healthy', to: 'down', source: 'traffic', reason: '3 replies in a row failed: server: 503 service unavailable' } },
    { type: 'agent.failed', data: { source: 'monitor', from: 'healthy' } }
  ])
  t.equal(stub.requests.length, 2, 'the early run probed nothing (not due)')

  // Only one early run per agent per interval: a second burst waits for the tick.
  for (let i = 0; i < 3; i++) monitor.recordTraffic('mini', { ok: false, latencyMs: 30, errorKind: 'timeout' })
  t.ok(await eventually(() => registry.isDown('mini'), 5000))
  for (let i = 0; i < 5; i++) monitor.recordTraffic('mini', { ok: false, latencyMs: 30, errorKind: 'timeout' })
  // An early run would be queued before this one and would have written mini's window already.
  t.equal((await monitor.runOnce()).flushed, 1, 'no second early run within the interval: the tick writes the window')

  monitor.recordTraffic('gpt', { ok: true, latencyMs: 50 })
  monitor.recordTraffic('gpt', { ok: true, latencyMs: 50 })
  await monitor.runOnce()
  t.equal(registry.status('gpt'), 'healthy', 'replies answered again: recovered')
  t.match((await events(pool, 'gpt')).at(-1), { type: 'agent.recovered', data: { source: 'monitor', to: 'healthy', reason: '2 replies answered' } })
})

t.test('traffic: a share of failures or rate limits above the ratio degrades', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry } = await replica(t, pool, stub)
  await monitor.runOnce()
  for (let i = 0; i < 20; i++) {
    monitor.recordTraffic('gpt', { ok: true, latencyMs: 10 })
    if (i % 5 === 0) monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'rate_limited', error: '429 rate limited' })
  }
  const report = await monitor.runOnce()
  t.match(report.transitions, [{ agentId: 'gpt', from: 'healthy', to: 'degraded', source: 'traffic', reason: '4 of 24 replies failed or were rate limited (last: rate_limited: 429 rate limited)' }])
  t.equal(registry.status('gpt'), 'degraded')
})

t.test('traffic samples that cannot be written are kept for the next run', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry } = await replica(t, pool, stub)
  await monitor.runOnce()
  await pool.query('ALTER TABLE health_checks RENAME TO health_checks_away')
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'server' })
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'server' })
  await t.rejects(monitor.runOnce(), /health_checks/)
  await pool.query('ALTER TABLE health_checks_away RENAME TO health_checks')
  monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'connection' })
  const report = await monitor.runOnce()
  t.equal(report.flushed, 1)
  t.equal(registry.status('gpt'), 'down', 'the failures before and after the outage add up to a burst of three')
  const { rows } = await pool.query("SELECT attempts, failures, failure_streak FROM health_checks WHERE source = 'traffic'")
  t.same(rows, [{ attempts: 3, failures: 3, failure_streak: 3 }])
})

t.test('several replicas: one probe per model and interval between them, followers learn the state', async (t) => {
  const stub = await startStub(t)
  const { pool: poolA, url } = await migratedPool(t)
  const { pool: poolB } = await migratedPool(t, url)
  const a = await replica(t, poolA, stub)
  const b = await replica(t, poolB, stub)

  // A's probe of gpt-x takes a while: B's step meanwhile leads (A holds no lock while it probes) but
  // finds that A claimed every probe.
  let answer!: () => void
  stub.enqueue({ until: new Promise<void>((resolve) => { answer = resolve }) }, { when: onlyMain })
  const running = a.monitor.runOnce()
  await stub.waitForRequests(2)
  const during = await b.monitor.runOnce()
  t.same({ leader: during.leader, probed: during.probed }, { leader: true, probed: [] })
  answer()
  const leader = await running
  t.equal(leader.leader, true)
  t.equal(stub.requests.length, 2, 'only the claimer probed')
  t.equal(b.registry.status('gpt'), 'healthy')

  // After A's step too, B probes only what is due: nothing, A probed a moment ago.
  const next = await b.monitor.runOnce()
  t.equal(next.leader, true)
  t.same(next.probed, [])
  t.equal(stub.requests.length, 2, 'a model is never probed more often than the interval, whichever replica leads')

  // A takes gpt down; B learns it at its next run (as a follower, or from the shared state as the leader).
  stub.enqueue({ status: 500 }, { times: 3, when: onlyMain })
  for (let i = 0; i < 3; i++) {
    await ageProbes(poolA)
    await a.monitor.runOnce()
  }
  t.ok(a.registry.isDown('gpt'))
  t.equal(b.registry.status('gpt'), 'healthy', 'B has not looked yet')
  await b.monitor.sync()
  t.ok(b.registry.isDown('gpt'), 'B reads the shared state')
  t.same(await gauge(b.prom, 'gpt'), { healthy: 0, degraded: 0, down: 1 }, "B's gauge agrees")
  t.equal(b.registry.health('gpt').message, a.registry.health('gpt').message)

  // A follower's traffic reaches the state through its samples, folded by whichever replica leads.
  b.monitor.recordTraffic('other', { ok: false, latencyMs: 5, errorKind: 'server' })
  const lockHolder = new pg.Client({ connectionString: url })
  await lockHolder.connect()
  t.teardown(() => lockHolder.end())
  await lockHolder.query('SELECT pg_advisory_lock($1)', [HEALTH_LOCK_KEY])
  const blocked = await b.monitor.runOnce()
  t.same({ leader: blocked.leader, flushed: blocked.flushed }, { leader: false, flushed: 1 }, 'the follower wrote its sample')
  t.equal(b.registry.status('other'), 'healthy', 'but does not judge it')
  await lockHolder.query('SELECT pg_advisory_unlock($1)', [HEALTH_LOCK_KEY])
  const folded = await a.monitor.runOnce()
  t.equal(folded.folded, 1, "A folds B's sample")
  t.equal(a.registry.status('other'), 'degraded')
  await b.monitor.runOnce()
  t.equal(b.registry.status('other'), 'degraded')

  // requestSync (what the plugin calls on a NOTIFY) coalesces and applies.
  await poolA.query("UPDATE agent_health SET status = 'healthy', reason = 'forced' WHERE agent_id = 'gpt'")
  b.monitor.requestSync()
  b.monitor.requestSync()
  t.ok(await eventually(() => b.registry.status('gpt') === 'healthy', 5000))
  t.equal(b.registry.health('gpt').message, 'forced')
})

t.test('echo agents are always healthy', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry } = await replica(t, pool, stub)
  await pool.query("INSERT INTO agent_health (agent_id, status, reason, failures) VALUES ('offline', 'down', 'from an older deployment', 3)")
  registry.setStatus('offline', 'down')
  await monitor.sync()
  t.equal(registry.status('offline'), 'down', 'sync leaves echo agents to the monitor run')
  const report = await monitor.runOnce()
  t.match(report.transitions, [{ agentId: 'offline', from: 'down', to: 'healthy', reason: 'built-in echo provider', source: 'echo' }])
  t.equal(registry.status('offline'), 'healthy')
  monitor.recordTraffic('offline', { ok: false, latencyMs: 1, errorKind: 'server' })
  t.equal((await monitor.runOnce()).flushed, 0, 'echo traffic is not recorded')
})

t.test('retention: samples older than HEALTH_CHECK_RETENTION_DAYS are deleted by the lock holder', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor } = await replica(t, pool, stub, { retentionDays: 3 })
  await pool.query(
    `INSERT INTO health_checks (agent_id, provider, model, status, source, checked_at, folded_at)
     SELECT 'gpt', 'openai', 'gpt-x', 'healthy', 'probe', now() - make_interval(days => d), now()
       FROM generate_series(1, 6) AS d, generate_series(1, 2000)`
  )
  const report = await monitor.runOnce()
  t.equal(report.purged, 8000, 'days 3 to 6, in bounded batches')
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM health_checks WHERE checked_at < now() - interval '1 hour'")
  t.equal(rows[0].n, 4000, 'days 1 and 2 are kept')
})

t.test('probes speak each provider: Anthropic, Gemini, an OpenAI-compatible server; one failing endpoint spares the others', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const definitions = [
    agent('claude', 'anthropic', 'claude-x'),
    agent('flash', 'gemini', 'gemini-x'),
    agent('local', 'openai-compatible', 'llama-x', { baseUrl: stub.urlFor('ollama') })
  ]
  const registry = new AgentRegistry(definitions, { ANTHROPIC_API_KEY: KEY, ANTHROPIC_BASE_URL: stub.anthropicBaseUrl, GEMINI_API_KEY: KEY, GEMINI_BASE_URL: stub.geminiBaseUrl })
  await registry.preload()
  const monitor = new HealthMonitor({ pool, registry, metrics: new LlmMetrics(new Registry(), []), log: silent, intervalMs: 60_000, probeMode: 'models', probeTimeoutMs: 2000, retentionDays: 7, secrets: [KEY], clock: new ManualClock() })
  t.teardown(() => monitor.stop())
  stub.enqueue({ status: 500 }, { when: (r) => r.protocol === 'gemini' })
  const report = await monitor.runOnce()
  t.same(new Set(stub.requests.map((r) => r.protocol)), new Set(['anthropic', 'gemini', 'openai']), 'one probe per wire format')
  t.ok(stub.requests.every((r) => r.kind !== 'chat'), 'models mode: model lookups, no completion')
  t.equal(stub.requests.find((r) => r.protocol === 'openai')!.prefix, '/ollama', "the agent's own base URL")
  t.same(report.transitions.map((x) => [x.agentId, x.to]), [['flash', 'degraded']])
  t.equal(registry.status('claude'), 'healthy')
  t.equal(registry.status('local'), 'healthy')
})

t.test('a burst while another replica holds the lock is evaluated right after that step, not an interval later', async (t) => {
  const stub = await startStub(t)
  const { pool, url } = await migratedPool(t)
  const { monitor, registry, clock } = await replica(t, pool, stub, { firstTickDelayMs: 60_000 })
  await monitor.runOnce()
  monitor.start()
  const other = new pg.Client({ connectionString: url })
  await other.connect()
  t.teardown(() => other.end())
  await other.query('SELECT pg_advisory_lock($1)', [HEALTH_LOCK_KEY])
  for (let i = 0; i < 3; i++) monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'connection' })
  t.ok(await eventually(async () => (await pool.query("SELECT 1 FROM health_checks WHERE source = 'traffic'")).rowCount === 1, 2000), 'the early step wrote the burst')
  t.equal(registry.status('gpt'), 'healthy', 'but could not judge it')
  await clock.waitForTimer(1000)
  await other.query('SELECT pg_advisory_unlock($1)', [HEALTH_LOCK_KEY])
  clock.advance(1000)
  t.ok(await eventually(() => registry.isDown('gpt'), 5000), 'its retry a second later did')
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM health_checks WHERE source = 'traffic'")
  t.equal(rows[0].n, 1, 'the retry wrote no second sample')
})

t.test('state, samples and events commit together: a failed write leaves nothing half done, and the next step redoes it', async (t) => {
  const stub = await startStub(t)
  const { pool } = await migratedPool(t)
  const { monitor, registry } = await replica(t, pool, stub)
  await monitor.runOnce()
  await pool.query('ALTER TABLE event_logs RENAME TO event_logs_away')
  for (let i = 0; i < 3; i++) monitor.recordTraffic('gpt', { ok: false, latencyMs: 10, errorKind: 'server' })
  await t.rejects(monitor.runOnce(), /event_logs/)
  t.equal(registry.status('gpt'), 'healthy')
  const { rows: state } = await pool.query("SELECT status FROM agent_health WHERE agent_id = 'gpt'")
  t.same(state, [{ status: 'healthy' }], 'no transition without its events')
  const { rows: unfolded } = await pool.query("SELECT count(*)::int AS n FROM health_checks WHERE source = 'traffic' AND folded_at IS NULL")
  t.equal(unfolded[0].n, 1, 'the sample is still waiting to be folded')
  await pool.query('ALTER TABLE event_logs_away RENAME TO event_logs')
  const report = await monitor.runOnce()
  t.same({ leader: report.leader, folded: report.folded, to: report.transitions[0]?.to }, { leader: true, folded: 1, to: 'down' })
  t.same((await events(pool, 'gpt')).map((e) => e.type), ['agent.status_changed', 'agent.failed'])
})
