import t, { type Test } from 'tap'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { AgentDefinition } from '../../src/agents/agent.js'
import type { Environment } from '../../src/config.js'
import { buildService, testEnv } from '../helper.js'
import { LlmStub, type StubRequest } from '../support/llm-stub.js'

// ROUTER=llm through the whole app, the router agent's model behind the loopback stub: its deadline
// is the router's own, and a slow routing answer says nothing of a model that other agents reply with.

const TEAM = `agents:
  - { id: writer, name: Writer, description: Writes prose., provider: openai, model: gpt-shared, expertise: [poem] }
  - { id: coder, name: Coder, description: Writes code., provider: openai, model: gpt-code, expertise: [code] }
  - { id: router, name: Router, description: Routes messages., provider: openai, model: gpt-shared }
`

const routing = (request: StubRequest) => request.kind === 'chat' && (request.system ?? '').startsWith('You route a user message')

async function setup (t: Test, overrides: Environment = {}) {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = t.testdir({ 'team.yaml': TEAM })
  const env = await testEnv(t, {
    AGENTS_FILE: join(dir, 'team.yaml'),
    OPENAI_API_KEY: 'sk-router-test-0123456789',
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    ROUTER: 'llm',
    ROUTER_AGENT: 'router',
    ROUTER_TIMEOUT_MS: '100',
    LLM_BREAKER_FAILURES: '3',
    AGENT_HEALTH_CHECK_INTERVAL: '60',
    ...overrides
  })
  const { app } = await buildService(t, env)
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['writer', 'coder'] } })).json() as { id: string }
  return { stub, app, session: session.id }
}

const breaker = (app: FastifyInstance) => app.providerGuard.breakerState(app.agents.get('router') as AgentDefinition, 'openai')

function post (app: FastifyInstance, session: string, content: string) {
  return app.inject({ method: 'POST', url: `/v1/sessions/${session}/messages`, payload: { content } })
}

/** The traffic samples written so far (by the test's runs and any tick), added up per agent. */
async function traffic (app: FastifyInstance) {
  const { rows } = await app.pg.pool.query(
    "SELECT agent_id, sum(attempts)::int AS attempts, sum(failures)::int AS failures FROM health_checks WHERE source = 'traffic' GROUP BY agent_id ORDER BY agent_id"
  )
  return rows
}

async function agentStatus (app: FastifyInstance, id: string): Promise<string | undefined> {
  const { agents } = (await app.inject('/v1/agents')).json() as { agents: { id: string; status: string }[] }
  return agents.find((agent) => agent.id === id)?.status
}

t.test("the router's own timeout counts neither in the breaker nor in the health of its model", async (t) => {
  const { stub, app, session } = await setup(t)
  // The routing question is never answered (ROUTER_TIMEOUT_MS ends it); a reply is answered at once.
  stub.setDefault((request) => (routing(request) ? { hang: true } : { text: `answer from ${request.model}` }))
  // Messages for the coder: nothing but the router's calls reaches the shared model, one after another.
  for (let i = 0; i < 4; i++) {
    const res = await post(app, session, `a bug in my code (${i})`)
    t.equal(res.statusCode, 201, `message ${i}: answered`)
    t.match(res.json().reply, { agent: 'coder', content: 'answer from gpt-code' }, `message ${i}: scoring chose`)
  }
  t.match(await app.metricsRegistry.getSingleMetricAsString('smalltalk_router_decisions_total'), /outcome="fallback"\} 4/)
  const requests = await app.metricsRegistry.getSingleMetricAsString('smalltalk_llm_requests_total')
  t.match(requests, /smalltalk_llm_requests_total\{provider="openai",model="gpt-shared",outcome="timeout"\} 4/, 'the timeouts are in the metrics')
  t.equal(breaker(app), 'closed', 'the breaker of the shared model stayed closed')

  const report = await app.agentHealth.runOnce()
  t.same(report.transitions, [], 'no agent changed state')
  t.equal(await agentStatus(app, 'router'), 'healthy')
  t.same(await traffic(app), [{ agent_id: 'coder', attempts: 4, failures: 0 }], "the router's timeouts are no traffic; the replies are")

  const poem = await post(app, session, 'a poem about the sea')
  t.equal(poem.statusCode, 201)
  t.match(poem.json().reply, { agent: 'writer', model: 'gpt-shared', content: 'answer from gpt-shared' }, 'the writer replies on the shared model')
  t.equal(await agentStatus(app, 'writer'), 'healthy')
})

t.test('a real provider error of the router model still counts', async (t) => {
  // A deadline the 500 always beats, however busy the machine.
  const { stub, app, session } = await setup(t, { ROUTER_TIMEOUT_MS: '30000' })
  stub.setDefault((request) => (routing(request) ? { status: 500 } : { text: `answer from ${request.model}` }))
  for (let i = 0; i < 3; i++) t.equal((await post(app, session, `a bug in my code (${i})`)).json().reply.agent, 'coder', 'scoring decided')
  t.equal(breaker(app), 'open', 'three 500s in a row opened the breaker of the router model')
  await app.agentHealth.runOnce()
  t.same(await traffic(app), [{ agent_id: 'coder', attempts: 3, failures: 0 }, { agent_id: 'router', attempts: 3, failures: 3 }], 'and all three reached the health traffic')
})
