import t, { type Test } from 'tap'
import { join } from 'node:path'
import pg from 'pg'
import type { FastifyInstance } from 'fastify'
import type { Environment } from '../../src/config.js'
import { buildService, eventually, testEnv } from '../helper.js'
import { LlmStub } from '../support/llm-stub.js'
import { ManualClock } from '../support/manual-clock.js'

// The monitor's ticks and probe timeouts run on a manual clock that the tests move; when a model is
// due is the database's clock, moved by ageProbes().

const KEY = 'sk-test-plugin-secret-0123456789'
const INTERVAL_MS = 60_000
const TEAM = `agents:
  - { id: gpt, name: GPT, provider: openai, model: gpt-x, fallback: offline }
  - { id: offline, name: Offline, provider: echo, model: echo-1 }
`

async function setup (t: Test, overrides: Environment = {}) {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = t.testdir({ 'team.yaml': TEAM })
  const env = await testEnv(t, {
    AGENTS_FILE: join(dir, 'team.yaml'),
    OPENAI_API_KEY: KEY,
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    AGENT_HEALTH_CHECK_INTERVAL: String(INTERVAL_MS / 1000),
    AGENT_HEALTH_PROBE_TIMEOUT_MS: '800',
    ...overrides
  })
  const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: 2 })
  pool.on('error', () => undefined)
  t.teardown(() => pool.end())
  return { stub, env, pool }
}

/** Makes every last probe an hour old, so that the next tick probes again. */
async function ageProbes (pool: pg.Pool): Promise<void> {
  await pool.query("UPDATE agent_health SET probed_at = probed_at - interval '1 hour'")
}

/** Moves the clock to the next tick of every replica and waits until each has run it (and set the next). */
async function tick (clock: ManualClock, replicas = 1): Promise<void> {
  clock.advance(clock.pending[0]!)
  await clock.waitForTimer(INTERVAL_MS, replicas)
}

const agentStatus = async (app: FastifyInstance, id: string): Promise<string | undefined> => {
  const { agents } = (await app.inject('/v1/agents')).json() as { agents: { id: string; status: string }[] }
  return agents.find((agent) => agent.id === id)?.status
}

const gaugeLine = (text: string, agent: string, state: string) =>
  new RegExp(`^smalltalk_agent_health_state\\{agent="${agent}",state="${state}"\\} 1$`, 'm').test(text)

t.test('the monitor starts after ready, probes every interval, and its state reaches /v1/agents, /health and the metrics', async (t) => {
  const { stub, env, pool } = await setup(t)
  const clock = new ManualClock()
  const { app, ops } = await buildService(t, env, { clock })
  t.ok(app.hasDecorator('agentHealth'))
  t.same(clock.pending, [1000], 'the first tick a second after ready')
  t.equal(stub.requests.length, 0, 'nothing probed during start-up')

  await tick(clock)
  t.equal((await pool.query("SELECT 1 FROM health_checks WHERE agent_id = 'gpt'")).rowCount, 1, 'the first tick probed')
  t.match(stub.requests[0], { protocol: 'openai', kind: 'models', apiKey: KEY })
  t.equal(await agentStatus(app, 'gpt'), 'healthy')

  await tick(clock)
  t.equal(stub.requests.length, 1, 'a tick before the model is due (in the database) probes nothing')

  stub.setDefault({ status: 503 })
  for (let i = 0; i < 3; i++) {
    await ageProbes(pool)
    await tick(clock)
  }
  t.equal(stub.requests.length, 4, 'one probe per tick once due')
  t.equal(await agentStatus(app, 'gpt'), 'down', 'down after three failing probes')
  const health = (await ops.inject('/health')).json()
  t.match(health.services.agents, { status: 'degraded', message: /1 healthy, 0 degraded, 1 down/ })
  const metrics = (await ops.inject('/metrics')).body
  t.ok(gaugeLine(metrics, 'gpt', 'down'), 'gauge: gpt down')
  t.ok(gaugeLine(metrics, 'offline', 'healthy'), 'gauge: offline healthy')
  const { rows: events } = await pool.query("SELECT type FROM event_logs WHERE agent_id = 'gpt' ORDER BY id")
  t.same(events.map((e) => e.type), ['agent.status_changed', 'agent.status_changed', 'agent.failed'])
  const listed = (await app.inject('/v1/events?type=agent.*')).json().events
  t.same(listed.map((e: { type: string }) => e.type), ['agent.status_changed', 'agent.status_changed', 'agent.failed'], 'visible in the event log API')

  stub.setDefault({})
  for (let i = 0; i < 2; i++) {
    await ageProbes(pool)
    await tick(clock)
  }
  t.equal(await agentStatus(app, 'gpt'), 'healthy', 'recovered after two good probes')
})

t.test('replies that fail teach the monitor: a burst takes the agent down before the next probe', async (t) => {
  const { stub, env, pool } = await setup(t, { LLM_RETRY_BASE_MS: '5', LLM_RETRY_MAX_MS: '10' })
  const clock = new ManualClock()
  const { app } = await buildService(t, env, { clock })
  await tick(clock)
  const probes = stub.requests.length
  t.equal(probes, 1, 'first probe done')
  stub.enqueue({ status: 503 }, { times: 3, when: (r) => r.kind === 'chat' })
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['gpt', 'offline'] } })).json()
  const reply = await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, payload: { content: 'hello', agent: 'gpt' } })
  t.equal(reply.statusCode, 201, 'the fallback answered')
  t.equal(stub.chatRequests().length, 3, 'the first attempt and two retries, each reported to the monitor')
  t.ok(await eventually(async () => (await agentStatus(app, 'gpt')) === 'down', 5000), 'down from the replies alone')
  t.equal(stub.requests.filter((r) => r.kind !== 'chat').length, probes, 'no extra probe')
  const { rows } = await pool.query("SELECT data FROM event_logs WHERE agent_id = 'gpt' AND type = 'agent.status_changed'")
  t.match(rows, [{ data: { from: 'healthy', to: 'down', source: 'traffic', reason: /^3 replies in a row failed: server: / } }])
  const { rows: samples } = await pool.query("SELECT attempts, failures, failure_streak FROM health_checks WHERE source = 'traffic'")
  t.same(samples, [{ attempts: 3, failures: 3, failure_streak: 3 }], 'one aggregated sample')
})

t.test('two replicas on one database: one probe per interval between them, and both show the same state', async (t) => {
  const { stub, env, pool } = await setup(t)
  const clock = new ManualClock()
  const a = await buildService(t, env, { clock })
  const b = await buildService(t, env, { clock })
  stub.setDefault({ status: 500 })
  await tick(clock, 2)
  for (let i = 0; i < 2; i++) {
    await ageProbes(pool)
    await tick(clock, 2)
  }
  t.equal(stub.requests.length, 3, 'both replicas ticked three times together: one probe each time between them')
  t.ok(await eventually(async () => (await agentStatus(a.app, 'gpt')) === 'down' && (await agentStatus(b.app, 'gpt')) === 'down'), 'both replicas show gpt down')
  const { rows } = await pool.query("SELECT count(*)::int AS n FROM event_logs WHERE type = 'agent.failed' AND agent_id = 'gpt'")
  t.equal(rows[0].n, 1, 'one transition, written once')
})

t.test('close with a probe in flight: aborted, the timers cleared, nothing written after', async (t) => {
  const { stub, env, pool } = await setup(t, { AGENT_HEALTH_PROBE_TIMEOUT_MS: '30000' })
  stub.setDefault({ hang: true })
  const clock = new ManualClock()
  const { app } = await buildService(t, env, { clock })
  clock.advance(1000)
  await stub.waitForRequests(1, 5000)
  t.same(clock.pending, [30_000], 'the probe waits for its timeout')
  // With the clock standing still: close cannot be waiting for the probe timeout.
  await app.close()
  t.same(clock.pending, [], 'no timer left: neither the probe timeout nor a next tick')
  await stub.idle()
  const { rows } = await pool.query('SELECT count(*)::int AS n FROM health_checks')
  t.equal(rows[0].n, 0)
  t.equal(stub.requests.length, 1)
})

t.test('AGENT_HEALTH_PROBE must be models or completion', async (t) => {
  const env = await testEnv(t, { AGENT_HEALTH_PROBE: 'ping' })
  await t.rejects(buildService(t, env), { message: /AGENT_HEALTH_PROBE must be one of models, completion/ })
})
