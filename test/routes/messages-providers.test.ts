import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildService, buildTestApp, tempDir, testEnv } from '../helper.js'
import { LlmStub, type StubRequest } from '../support/llm-stub.js'
import { data, sse } from '../support/sse.js'

// Replies from real provider SDKs (OpenAI, Anthropic, Gemini) talking to a loopback stub of each wire
// format, through the whole app: streaming, fallback before the first token, a stream cut after it,
// the deadline, auth errors, open breakers, 429 Retry-After, and the LLM router.

const KEYS = { OPENAI_API_KEY: 'sk-openai-secret-1234', ANTHROPIC_API_KEY: 'sk-ant-secret-5678', GEMINI_API_KEY: 'gm-secret-9012' }

const TEAM = `
agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: gpt-test
    systemPrompt: You are Assistant.
    temperature: 0.3
    maxTokens: 200
    expertise: [question]
  - id: coder
    name: Coder
    description: Writes code.
    provider: anthropic
    model: claude-test
    systemPrompt: You are Coder.
    expertise: [code, bug]
    fallback: assistant
  - id: writer
    name: Writer
    description: Writes prose.
    provider: gemini
    model: gemini-test
    systemPrompt: You are Writer.
    expertise: [poem, essay]
    fallback: assistant
  - id: router
    name: Router
    description: Routes messages.
    provider: openai
    model: router-test
    systemPrompt: You route.
`

// The agent health monitor of each test app probes the stub's model endpoints about a second after
// start: scripted failures are for chat requests only, so that a probe never takes one.
const chat = (request: StubRequest) => request.kind === 'chat'

interface World {
  stub: LlmStub
  app: FastifyInstance
  base: string
}

async function world (t: Test, env: Environment = {}): Promise<World> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const app = await buildTestApp(
    t,
    await testEnv(t, {
      REDIS_URL,
      AGENTS_FILE: file,
      ...KEYS,
      OPENAI_BASE_URL: stub.openaiBaseUrl,
      ANTHROPIC_BASE_URL: stub.anthropicBaseUrl,
      GEMINI_BASE_URL: stub.geminiBaseUrl,
      LLM_RETRY_BASE_MS: '10',
      LLM_RETRY_MAX_MS: '50',
      ...env
    })
  )
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  return { stub, app, base }
}

async function createSession (app: FastifyInstance, agents = ['assistant', 'coder', 'writer']): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

function post (app: FastifyInstance, id: string, body: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: body })
}

async function history (app: FastifyInstance, id: string): Promise<Array<{ role: string; content: string; agent: string | null; provider: string | null }>> {
  return (await app.inject(`/v1/sessions/${id}/messages`)).json().messages
}

t.test('each provider answers through its own SDK and wire format, with usage and the context sent', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app)
  stub.setDefault((request) => ({ text: `Hi from ${request.protocol}`, usage: { inputTokens: 11, outputTokens: 4 } }))

  const cases = [
    { agent: 'assistant', protocol: 'openai', provider: 'openai', model: 'gpt-test', system: 'You are Assistant.' },
    { agent: 'coder', protocol: 'anthropic', provider: 'anthropic', model: 'claude-test', system: 'You are Coder.' },
    { agent: 'writer', protocol: 'gemini', provider: 'gemini', model: 'gemini-test', system: 'You are Writer.' }
  ]
  for (const [i, c] of cases.entries()) {
    const res = await post(app, id, { content: `message ${i}`, agent: c.agent })
    t.equal(res.statusCode, 201, `${c.agent}: ${res.body}`)
    const reply = res.json().reply
    t.match(reply, { agent: c.agent, provider: c.provider, model: c.model, content: `Hi from ${c.protocol}`, usage: { inputTokens: 11, outputTokens: 4 } })
    const sent = stub.chatRequests().at(-1)!
    t.equal(sent.protocol, c.protocol)
    t.equal(sent.model, c.model)
    t.equal(sent.stream, false, 'a JSON reply asks for the whole answer in one response')
    t.equal(sent.system, c.system, 'the system prompt')
    t.same(sent.messages.at(-1), { role: 'user', content: `message ${i}` }, 'the user message last')
    t.equal(sent.messages.length, 2 * i + 1, 'the history before it, user and assistant turns')
  }
  const keys = stub.chatRequests().map((r) => r.apiKey)
  t.same(keys, [KEYS.OPENAI_API_KEY, KEYS.ANTHROPIC_API_KEY, KEYS.GEMINI_API_KEY], 'each provider got its own key')

  const { rows } = await app.pg.pool.query('SELECT agent_id, reply_count, input_tokens, output_tokens FROM agent_states WHERE session_id = $1 ORDER BY agent_id', [id])
  t.same(
    rows.map((r) => [r.agent_id, Number(r.reply_count), Number(r.input_tokens), Number(r.output_tokens)]),
    [
      ['assistant', 1, 11, 4],
      ['coder', 1, 11, 4],
      ['writer', 1, 11, 4]
    ],
    'agent_states keeps the usage per agent'
  )
})

t.test('SSE: provider tokens reach the client as they arrive', async (t) => {
  const { stub, app, base } = await world(t)
  const id = await createSession(app)
  stub.enqueue({ text: ['one', ' two', ' three', ' four', ' five'], deltaDelayMs: 150 }, { when: chat })
  const arrivals: number[] = []
  const started = performance.now()
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'stream please', agent: 'assistant' }, {
    onEvent: (event) => event.event === 'delta' && arrivals.push(performance.now() - started)
  })
  t.equal(res.status, 200)
  const deltas = res.events.filter((e) => e.event === 'delta').map((e) => data(e).text)
  t.same(deltas, ['one', ' two', ' three', ' four', ' five'], 'one delta per provider token')
  t.equal(stub.chatRequests().at(-1)!.stream, true, 'an SSE reply asks for a token stream')
  t.ok(arrivals[4]! - arrivals[0]! >= 450, `spread over the stream (${Math.round(arrivals[4]! - arrivals[0]!)} ms), not buffered`)
  t.equal(data(res.events.at(-1)).content, 'one two three four five', 'done carries the stored reply')
})

t.test('an agent that fails before its first token hands over to its fallback', async (t) => {
  const { stub, app, base } = await world(t, { LLM_MAX_RETRIES: '1' })
  const id = await createSession(app)
  stub.enqueue({ status: 500 }, { times: 5, when: (r) => chat(r) && r.protocol === 'anthropic' })
  stub.setDefault({ text: 'the assistant steps in' })
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'fix this bug in my code' })
  t.same(res.events.map((e) => e.event), ['message', 'agent', 'agent', 'delta', 'delta', 'delta', 'delta', 'done'])
  const [first, second] = res.events.filter((e) => e.event === 'agent').map((e) => data(e))
  t.match(first, { agent: 'coder', reason: 'expertise' })
  t.match(second, { agent: 'assistant', reason: 'fallback', provider: 'openai', model: 'gpt-test' })
  t.match(data(res.events.at(-1)), { agent: 'assistant', content: 'the assistant steps in' })
  t.equal(stub.chatRequests().filter((r) => r.protocol === 'anthropic').length, 2, 'the coder was tried and retried once')

  const events = (await app.inject(`/v1/events?sessionId=${id}&type=agent.selected`)).json().events
  t.match(events, [
    { agentId: 'coder', data: { reason: 'expertise' } },
    { agentId: 'assistant', data: { reason: 'fallback', fallbackFrom: 'coder' } }
  ])
  const metrics = await app.metricsRegistry.getSingleMetricAsString('smalltalk_agent_fallbacks_total')
  t.match(metrics, /smalltalk_agent_fallbacks_total\{agent="coder",fallback="assistant"\} 1/)
})

t.test('a stream cut after its first token ends with an error event; the partial text is not stored', async (t) => {
  const { stub, app, base } = await world(t)
  const id = await createSession(app)
  stub.enqueue({ text: 'this reply will break off here', cutAfter: 3 }, { when: chat })
  stub.setDefault({ text: 'must not be used: no restart after the first token' })
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'tell me', agent: 'assistant' })
  const kinds = res.events.map((e) => e.event)
  t.same(kinds, ['message', 'agent', 'delta', 'delta', 'delta', 'error'])
  t.match(data(res.events.at(-1)), { statusCode: 502, code: 'LLM_STREAM_INTERRUPTED', message: /assistant.*partial reply was not stored/ })
  t.equal(stub.chatRequests().length, 1, 'not retried, not handed to a fallback')
  const stored = await history(app, id)
  t.same(stored.map((m) => m.role), ['user'], 'only the user message is stored')
  t.equal((await post(app, id, { content: 'again', agent: 'assistant' })).statusCode, 201, 'the session is free again')
})

t.test('LLM_TIMEOUT_MS bounds a reply from a provider that never answers: 504', async (t) => {
  const { stub, app } = await world(t, { LLM_TIMEOUT_MS: '600' })
  const id = await createSession(app)
  stub.setDefault({ hang: true })
  const started = Date.now()
  const res = await post(app, id, { content: 'hello?', agent: 'assistant' })
  const took = Date.now() - started
  t.equal(res.statusCode, 504)
  t.match(res.json(), { code: 'LLM_TIMEOUT', message: /assistant.*600 ms/, details: { messageId: String } })
  t.ok(took < 2_500, `answered ${took} ms after a 600 ms deadline`)
})

t.test('a provider that rejects the key: 502 naming the agent, no retry, no key in the answer', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app)
  stub.enqueue({ status: 401 }, { when: chat })
  stub.setDefault({ text: 'not reached' })
  const res = await post(app, id, { content: 'hello', agent: 'assistant' })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'LLM_AUTH_ERROR', message: /Agent "assistant": openai refused the credentials \(401\)/, details: { provider: 'openai', providerStatus: 401 } })
  t.notMatch(res.body, KEYS.OPENAI_API_KEY)
  t.equal(stub.chatRequests().length, 1)
})

t.test('retries exhausted: 502 after LLM_MAX_RETRIES + 1 attempts', async (t) => {
  const { stub, app } = await world(t, { LLM_MAX_RETRIES: '2' })
  const id = await createSession(app, ['assistant'])
  stub.setDefault({ status: 503 })
  const res = await post(app, id, { content: 'hello' })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'LLM_ERROR', details: { provider: 'openai', providerStatus: 503 } })
  t.equal(stub.chatRequests().length, 3)
})

t.test('a 429 with Retry-After is waited out and the reply succeeds', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['assistant'])
  stub.enqueue({ status: 429, headers: { 'retry-after': '1' } }, { when: chat })
  stub.setDefault({ text: 'patience pays' })
  const started = Date.now()
  const res = await post(app, id, { content: 'hello' })
  t.equal(res.statusCode, 201, res.body)
  t.equal(res.json().reply.content, 'patience pays')
  t.ok(Date.now() - started >= 950, 'the retry waited for Retry-After')
})

t.test('every breaker open: 503 with Retry-After, without calling the provider', async (t) => {
  const { stub, app } = await world(t, { LLM_MAX_RETRIES: '0', LLM_BREAKER_FAILURES: '1', LLM_BREAKER_COOLDOWN_MS: '20000' })
  const id = await createSession(app)
  stub.setDefault({ status: 500 })
  // The coder fails, then its fallback (the assistant) fails: both breakers open.
  const first = await post(app, id, { content: 'a bug in my code' })
  t.equal(first.statusCode, 502)
  t.match(first.json().message, /fallback failed too/)
  const calls = stub.chatRequests().length
  t.equal(calls, 2)

  const second = await post(app, id, { content: 'another bug in my code' })
  t.equal(second.statusCode, 503)
  t.match(second.json(), { code: 'LLM_UNAVAILABLE' })
  const retryAfter = Number(second.headers['retry-after'])
  t.ok(retryAfter >= 1 && retryAfter <= 20, `Retry-After ${retryAfter}`)
  t.equal(stub.chatRequests().length, calls, 'no call reached the provider')
  const metrics = await app.metricsRegistry.getSingleMetricAsString('smalltalk_llm_circuit_state')
  t.match(metrics, /smalltalk_llm_circuit_state\{provider="anthropic",model="claude-test",state="open"\} 1/)
  t.match(metrics, /smalltalk_llm_circuit_state\{provider="openai",model="gpt-test",state="open"\} 1/)
})

t.test('ROUTER=llm: the router agent picks, and scoring decides when it fails or is slow', async (t) => {
  const { stub, app, base } = await world(t, { ROUTER: 'llm', ROUTER_AGENT: 'router', ROUTER_TIMEOUT_MS: '400' })
  const id = await createSession(app)
  let routerScript: Record<string, unknown> = { text: 'writer' }
  stub.setDefault((request) => (request.model === 'router-test' ? routerScript : { text: `answer from ${request.model}` }))

  const picked = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'hello there' })
  t.match(data(picked.events.find((e) => e.event === 'agent')), { agent: 'writer', reason: 'router' })
  t.match(data(picked.events.at(-1)), { agent: 'writer', content: 'answer from gemini-test' })
  const routed = stub.chatRequests().find((r) => r.model === 'router-test')!
  const prompt = routed.messages.at(-1)!.content
  t.match(prompt, /- assistant: Assistant/)
  t.match(prompt, /- writer: Writer/)
  t.notMatch(prompt, /- router:/, 'the router offers only the session\'s agents')
  t.match(prompt, /hello there/)

  routerScript = { status: 500 }
  const failed = await post(app, id, { content: 'a bug in my code' })
  t.equal(failed.statusCode, 201)
  t.equal(failed.json().reply.agent, 'coder', 'scoring decided when the router failed')

  routerScript = { text: 'writer', firstTokenDelayMs: 2_000 }
  const started = Date.now()
  const slow = await post(app, id, { content: 'a bug in my code again' })
  t.equal(slow.json().reply.agent, 'coder', 'scoring decided when the router was slow')
  t.ok(Date.now() - started < 1_800, 'the router cost at most its timeout')

  routerScript = { text: 'I would pick nobody' }
  t.equal((await post(app, id, { content: 'hello' })).json().reply.agent, 'assistant', 'an answer naming no agent: scoring')

  const explicit = await post(app, id, { content: 'hello', agent: 'coder' })
  t.equal(explicit.json().reply.agent, 'coder', 'a named agent skips the router')
  const decisions = await app.metricsRegistry.getSingleMetricAsString('smalltalk_router_decisions_total')
  t.match(decisions, /outcome="ok"\} 1/)
  t.match(decisions, /outcome="fallback"\} 3/)
})

t.test('ROUTER=llm needs a ROUTER_AGENT of the manifest', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  await t.rejects(buildTestApp(t, await testEnv(t, { AGENTS_FILE: file, ROUTER: 'llm' })).then((app) => app.ready()), { name: 'ConfigError', message: /ROUTER_AGENT/ })
  await t.rejects(buildTestApp(t, await testEnv(t, { AGENTS_FILE: file, ROUTER: 'llm', ROUTER_AGENT: 'nobody' })).then((app) => app.ready()), {
    name: 'ConfigError',
    message: /ROUTER_AGENT "nobody" is not an agent/
  })
})

async function listenPort (app: FastifyInstance): Promise<number> {
  if (!app.server.listening) await app.listen({ port: 0, host: '127.0.0.1' })
  return (app.server.address() as { port: number }).port
}

t.test('provider calls show in the metrics of the ops instance; agents without a key answer with echo', async (t) => {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const { app, ops } = await buildService(t, await testEnv(t, { REDIS_URL, AGENTS_FILE: file, OPENAI_API_KEY: KEYS.OPENAI_API_KEY, OPENAI_BASE_URL: stub.openaiBaseUrl }))
  stub.setDefault({ text: 'fine', usage: { inputTokens: 5, outputTokens: 1 } })
  const id = await createSession(app, ['assistant'])
  t.equal((await post(app, id, { content: 'hi' })).statusCode, 201)
  const metrics = (await ops.inject('/metrics')).body
  t.match(metrics, /smalltalk_llm_requests_total\{provider="openai",model="gpt-test",outcome="ok"\} 1/)
  t.match(metrics, /smalltalk_llm_tokens_total\{provider="openai",model="gpt-test",kind="output"\} 1/)
  t.match(metrics, /smalltalk_llm_time_to_first_token_seconds_count\{provider="openai",model="gpt-test"\} 0/, 'a JSON reply has no first token to time')
  const streamed = await fetch(`http://127.0.0.1:${await listenPort(app)}/v1/sessions/${id}/messages`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'text/event-stream' }, body: JSON.stringify({ content: 'again' }) })
  t.match(await streamed.text(), /event: done/)
  t.match((await ops.inject('/metrics')).body, /smalltalk_llm_time_to_first_token_seconds_count\{provider="openai",model="gpt-test"\} 1/, 'an SSE reply has')
  // The agents without a key answer with echo, and say so.
  t.match(metrics, /smalltalk_llm_requests_total\{provider="echo",model="claude-test",outcome="ok"\} 0/)
  const agents = (await app.inject('/v1/agents')).json().agents
  t.match(agents.find((a: { id: string }) => a.id === 'coder'), { provider: 'echo', configuredProvider: 'anthropic' })
  t.match(agents.find((a: { id: string }) => a.id === 'assistant'), { provider: 'openai' })
})
