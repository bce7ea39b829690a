import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildTestApp, eventually, tempDir, testEnv } from '../helper.js'
import { LlmStub, type StubRequest } from '../support/llm-stub.js'
import { MCP_TEST_SERVER_ARGS, startHttpMcpServer } from '../support/mcp-test-server.js'
import { data, sse } from '../support/sse.js'

// The reply loop of DESIGN section 14 through the whole app: agents on each provider's real SDK
// talking to the loopback LLM stub, which asks for tool calls in its wire format; the calls run on a
// real MCP test server (stdio, started by the service; streamable HTTP in this process) through the
// SDK client; the calls and results stored as role "tool" messages in the real PostgreSQL.

const KEYS = { OPENAI_API_KEY: 'sk-openai-secret-1234', ANTHROPIC_API_KEY: 'sk-ant-secret-5678', GEMINI_API_KEY: 'gm-secret-9012' }

const agent = (id: string, provider: string, extra = '') => `
  - id: ${id}
    name: ${id[0]!.toUpperCase()}${id.slice(1)}
    description: Agent ${id}.
    provider: ${provider}
    model: ${id}-model
    systemPrompt: You are ${id}.${extra}`

function manifest (httpUrl: string, extra = ''): string {
  return `
mcpServers:
  - id: local
    transport: stdio
    command: ${process.execPath}
    args: ${JSON.stringify(MCP_TEST_SERVER_ARGS)}
    env: [TOOLS_TEST_VISIBLE]
  - id: remote
    transport: http
    url: ${httpUrl}
    allow: [echo, add]
agents:${agent('assistant', 'openai', '\n    tools: [local]\n    maxToolSteps: 2')}${agent('coder', 'anthropic', '\n    tools: [local/add, local/fail, remote/echo]')}${agent('writer', 'gemini', '\n    tools: [local/add, local/slow]')}${agent('compat', 'openai-compatible', '\n    tools: [local/add]\n    baseUrl: BASE')}${agent('plain', 'openai')}${agent('echoer', 'echo', '\n    tools: [local]')}
${extra}`
}

const chat = (request: StubRequest) => request.kind === 'chat'

interface World {
  app: FastifyInstance
  stub: LlmStub
  base: string
}

async function world (t: Test, env: Environment = {}, extra = ''): Promise<World> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const http = await startHttpMcpServer()
  t.teardown(() => http.close())
  const file = join(await tempDir(t), 'agents.yaml')
  await writeFile(file, manifest(http.url, extra).replace('BASE', stub.urlFor('compat')))
  const app = await buildTestApp(t, await testEnv(t, {
    REDIS_URL,
    AGENTS_FILE: file,
    ...KEYS,
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    ANTHROPIC_BASE_URL: stub.anthropicBaseUrl,
    GEMINI_BASE_URL: stub.geminiBaseUrl,
    LLM_RETRY_BASE_MS: '10',
    LLM_RETRY_MAX_MS: '50',
    TOOL_TIMEOUT_MS: '1500',
    // The environment the manifest's servers are given from: only the named one reaches them.
    TOOLS_TEST_VISIBLE: 'visible-value',
    TOOLS_TEST_HIDDEN: 'hidden-value',
    ...env
  }))
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  const connected = await eventually(async () => {
    const servers = (await app.inject('/v1/tools')).json().servers as Array<{ status: string }>
    return servers.every((server) => server.status === 'connected')
  }, 20_000)
  if (!connected) throw new Error(`the MCP servers did not connect: ${(await app.inject('/v1/tools')).body}`)
  return { app, stub, base }
}

async function createSession (app: FastifyInstance, agents: string[], group?: Record<string, unknown>): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents, ...(group ? { group } : {}) } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

const post = (app: FastifyInstance, id: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> =>
  app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: body, headers })

async function history (app: FastifyInstance, id: string): Promise<Array<{ seq: number; role: string; content: string; agent?: string; metadata: Record<string, any> }>> {
  return (await app.inject(`/v1/sessions/${id}/messages?limit=200`)).json().messages
}

async function calls (app: FastifyInstance, server: 'local'): Promise<Record<string, number>> {
  // The test server's own count of its calls (its `calls` tool), asked through the catalog.
  const outcome = await app.tools.call(server, 'calls', {}, AbortSignal.timeout(5000))
  return JSON.parse(outcome.content)
}

t.test('each provider, JSON and SSE: tools offered in its format, the call run, stored, and the answer after it', async (t) => {
  const { stub, app, base } = await world(t)
  // coder's echo is on the streamable-HTTP server; the others' add on the stdio one.
  const add = { name: 'add', arguments: { a: 2, b: 3 }, server: 'local' }
  const cases = [
    { agent: 'assistant', protocol: 'openai', call: add, offered: ['add', 'calls', 'crash', 'echo', 'env', 'fail', 'grow', 'mixed', 'slow'] },
    { agent: 'coder', protocol: 'anthropic', call: { name: 'echo', arguments: { text: '5' }, server: 'remote' }, offered: ['add', 'echo', 'fail'] },
    { agent: 'writer', protocol: 'gemini', call: add, offered: ['add', 'slow'] },
    { agent: 'compat', protocol: 'openai', call: add, offered: ['add'] }
  ]
  for (const c of cases) {
    for (const mode of ['json', 'sse'] as const) {
      const id = await createSession(app, [c.agent])
      stub.reset()
      stub.enqueue({ text: 'Let me add.', toolCalls: [{ name: c.call.name, arguments: c.call.arguments }] }, { when: chat })
      stub.enqueue({ text: 'It is 5.' }, { when: chat })
      let reply: any
      let toolCalls: any[]
      if (mode === 'json') {
        const res = await post(app, id, { content: 'what is 2+3?' })
        t.equal(res.statusCode, 201, `${c.agent} ${mode}: ${res.body}`)
        reply = res.json().reply
        toolCalls = res.json().toolCalls
      } else {
        const result = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'what is 2+3?' })
        t.equal(result.status, 200)
        const names = result.events.map((e) => e.event)
        t.same(names.filter((n) => n !== 'delta'), ['message', 'agent', 'tool_call', 'tool_result', 'done'], `${c.agent}: the SSE events in order`)
        t.ok(names.lastIndexOf('delta') > names.indexOf('tool_result'), 'the deltas of the step after the result follow it')
        t.match(data(result.events.find((e) => e.event === 'tool_call')), { tool: c.call.name, server: c.call.server, arguments: c.call.arguments })
        t.match(data(result.events.find((e) => e.event === 'tool_result')), { isError: false, content: '5' })
        reply = data(result.events.at(-1))
        toolCalls = []
      }
      t.equal(reply.content, 'Let me add.It is 5.', `${c.agent} ${mode}: the reply is the text of both steps`)
      if (mode === 'json') t.match(toolCalls, [{ tool: c.call.name, server: c.call.server, arguments: c.call.arguments, isError: false, content: '5' }])

      const [first, second] = stub.chatRequests()
      t.equal(first!.protocol, c.protocol)
      t.same(first!.tools?.map((tool) => tool.name).sort(), c.offered, `${c.agent}: its tools offered`)
      const sentCall = second!.messages.find((m) => m.toolCalls)
      const sentResult = second!.messages.find((m) => m.toolResults)
      t.ok(sentCall && sentResult, `${c.agent}: the second request carries the call and its result in the provider's format`)
      t.match(sentResult!.toolResults, [{ content: '5', isError: false }])

      const stored = await history(app, id)
      t.same(stored.map((m) => m.role), ['user', 'tool', 'assistant'], 'the tool message between the user message and the reply')
      t.match(stored[1], { content: '5', agent: c.agent, metadata: { tool: c.call.name, server: c.call.server, arguments: c.call.arguments, isError: false, outcome: 'ok', step: 1 } })
    }
  }
  const { rows } = await app.pg.pool.query("SELECT type, data FROM event_logs WHERE type LIKE 'tool.%' ORDER BY id")
  t.equal(rows.filter((r) => r.type === 'tool.called').length, 8, 'a tool.called event per call')
  t.equal(rows.filter((r) => r.type === 'tool.finished').length, 8, 'a tool.finished event per call')
  t.match(rows.find((r) => r.type === 'tool.finished')?.data, { tool: 'add', server: 'local', isError: false, seq: 2 })
})

t.test('parallel calls run together; errors, invalid arguments and unknown tools are results the model reads', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['assistant'])
  stub.enqueue({
    toolCalls: [
      { name: 'slow', arguments: { ms: 400 } },
      { name: 'slow', arguments: { ms: 400 } },
      { name: 'fail', arguments: {} },
      { name: 'add', arguments: { a: 'two', b: 3 } },
      { name: 'delete_everything', arguments: {} },
      { name: 'echo', arguments: '{"text": broken' }
    ]
  }, { when: chat })
  stub.enqueue({ text: 'Done.' }, { when: chat })
  const res = await post(app, id, { content: 'do many things' })
  t.equal(res.statusCode, 201, res.body)
  const toolCalls = res.json().toolCalls
  t.same(toolCalls.map((c: any) => [c.tool, c.isError]), [['slow', false], ['slow', false], ['fail', true], ['add', true], ['delete_everything', true], ['echo', true]])
  t.match(toolCalls[3].content, /a|invalid|must be number/i, 'the schema error says what is wrong')
  t.match(toolCalls[4].content, /not one of this agent's tools/)
  t.match(toolCalls[5].content, /not a JSON object/)
  const counts = await calls(app, 'local')
  t.equal(counts.slowConcurrentMax, 2, 'the two slow calls ran at the same time, not one after the other')
  t.equal(counts.add, undefined, 'invalid arguments never reach the server')
  t.equal(counts.echo, undefined, 'broken arguments never reach the server')
  const second = stub.chatRequests()[1]!
  // OpenAI's role tool message has no error flag: an error result's text says so.
  t.same(second.messages.filter((m) => m.toolResults).flatMap((m) => m.toolResults!.map((r) => r.content.startsWith('Error: '))), [false, false, true, true, true, true], 'every result went back to the model, errors marked')
  const stored = await history(app, id)
  t.same(stored.map((m) => m.role), ['user', 'tool', 'tool', 'tool', 'tool', 'tool', 'tool', 'assistant'])
  t.same(stored.slice(1, 7).map((m) => m.metadata.outcome), ['ok', 'ok', 'error', 'invalid_arguments', 'refused', 'invalid_arguments'], 'in the order the model asked')
})

t.test('a timeout is an error result; maxToolSteps ends the reply with a note, stored', async (t) => {
  const { stub, app } = await world(t, { TOOL_TIMEOUT_MS: '300' })
  const id = await createSession(app, ['assistant'])
  stub.enqueue({ toolCalls: [{ name: 'slow', arguments: { ms: 3000 } }] }, { when: chat })
  stub.enqueue({ text: 'It timed out.' }, { when: chat })
  const res = await post(app, id, { content: 'be slow' })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json().toolCalls, [{ tool: 'slow', isError: true, content: /did not answer within 300 ms/ }])
  t.equal((await history(app, id))[1]?.metadata.outcome, 'timeout')

  // The model keeps asking: after maxToolSteps (2 for assistant) the reply says so.
  stub.reset()
  stub.setDefault((request) => (request.kind === 'chat' ? { text: 'Again.', toolCalls: [{ name: 'add', arguments: { a: 1, b: 1 } }] } : {}))
  const looping = await post(app, id, { content: 'loop forever' })
  t.equal(looping.statusCode, 201, looping.body)
  t.equal(stub.chatRequests().length, 3, 'two tool steps, then the third answer ends it')
  t.equal(looping.json().toolCalls.length, 2)
  t.match(looping.json().reply.content, /^Again\.Again\.Again\.\n\n\[Assistant reached its limit of 2 tool steps \(maxToolSteps\)/)
  const stored = await history(app, id)
  t.equal(stored.at(-1)?.content, looping.json().reply.content, 'the reply with its note is stored')
})

t.test('a provider retry after a stored call does not call the tool again; the next reply sees the exchange', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['coder'])
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 20, b: 22 } }] }, { when: chat })
  stub.enqueue({ status: 500 }, { when: chat, times: 2 })
  stub.enqueue({ text: 'Forty-two.' }, { when: chat })
  const res = await post(app, id, { content: 'add them' })
  t.equal(res.statusCode, 201, res.body)
  t.equal(res.json().reply.content, 'Forty-two.')
  t.equal(stub.chatRequests().length, 4, 'the second model step was retried twice')
  t.equal((await calls(app, 'local')).add, 1, 'the tool ran once')

  stub.reset()
  stub.setDefault({ text: 'Still 42.' })
  t.equal((await post(app, id, { content: 'and again?' })).statusCode, 201)
  const next = stub.chatRequests().at(-1)!
  t.ok(next.messages.some((m) => m.toolCalls?.[0]?.name === 'add'), 'the next reply\'s context has the call in Anthropic\'s format')
  t.ok(next.messages.some((m) => m.toolResults?.[0]?.content === '42'), 'and its result')
})

t.test('a server that dies mid-call is an error result; it is restarted and a later call works; only named env vars reach it', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['assistant'])
  stub.enqueue({ toolCalls: [{ name: 'crash', arguments: {} }] }, { when: chat })
  stub.enqueue({ text: 'It crashed.' }, { when: chat })
  const res = await post(app, id, { content: 'crash it' })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json().toolCalls, [{ tool: 'crash', isError: true }])
  t.ok(await eventually(async () => (await app.inject('/v1/tools')).json().servers.find((s: any) => s.id === 'local')?.status === 'connected', 20_000), 'the stdio server is back')
  stub.reset()
  stub.enqueue({ toolCalls: [{ name: 'env', arguments: { name: 'TOOLS_TEST_VISIBLE' } }, { name: 'env', arguments: { name: 'TOOLS_TEST_HIDDEN' } }] }, { when: chat })
  stub.enqueue({ text: 'ok' }, { when: chat })
  const after = await post(app, id, { content: 'read env' })
  t.equal(after.statusCode, 201, after.body)
  t.same(after.json().toolCalls.map((c: any) => c.content), ['visible-value', '(not set)'], 'a named variable passes, another does not')
})

t.test('a group turn uses its agent\'s tools; the other agents see the exchange in words', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['assistant', 'plain'], { strategy: 'round-robin', maxTurns: 2 })
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 1, b: 2 } }] }, { when: chat })
  stub.enqueue({ text: 'Three.' }, { when: chat })
  stub.enqueue({ text: 'Agreed.' }, { when: chat })
  const res = await post(app, id, { content: 'sum 1 and 2', agent: 'assistant' })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { round: { turns: 2 }, toolCalls: [{ tool: 'add', content: '3', agent: 'assistant' }] })
  t.same((await history(app, id)).map((m) => m.role), ['user', 'tool', 'assistant', 'assistant'])
  const plainRequest = stub.chatRequests().at(-1)!
  t.equal(plainRequest.tools, undefined, 'plain has no tools: none offered')
  t.ok(plainRequest.messages.some((m) => m.role === 'user' && m.content.includes('[tool call local/add {"a":1,"b":2} -> 3]')), 'the exchange in words for the agent without it')
})

t.test('echo asks for a tool on a /tool line, with no key: the loop is visible offline', async (t) => {
  const { app, base } = await world(t)
  const id = await createSession(app, ['echoer'])
  const res = await post(app, id, { content: '/tool add {"a":2,"b":3}' })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { reply: { content: 'Echo (echoer-model): add -> 5' }, toolCalls: [{ tool: 'add', server: 'local', content: '5' }] })
  const streamed = await sse(`${base}/v1/sessions/${id}/messages`, { content: '/tool echo {"text":"<b>hi</b>"}' })
  t.match(data(streamed.events.find((e) => e.event === 'tool_result')), { content: '<b>hi</b>', isError: false }, 'the result is passed on as text, as it came')
})

t.test('an idempotent retry replays the tool calls without running them again', async (t) => {
  const { stub, app, base } = await world(t)
  const id = await createSession(app, ['assistant'])
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 4, b: 5 } }] }, { when: chat })
  stub.enqueue({ text: 'Nine.' }, { when: chat })
  const first = await post(app, id, { content: 'add' }, { 'idempotency-key': 'k-1' })
  t.equal(first.statusCode, 201)
  const again = await post(app, id, { content: 'add' }, { 'idempotency-key': 'k-1' })
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), first.json(), 'the same answer, tool calls included')
  const replayed = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'add' }, { headers: { 'idempotency-key': 'k-1' } })
  t.same(replayed.events.map((e) => e.event), ['message', 'agent', 'tool_call', 'tool_result', 'delta', 'done'])
  t.equal((await calls(app, 'local')).add, 1, 'the tool ran once')
  t.equal((await history(app, id)).length, 3, 'nothing new stored')
})

t.test('the OpenAI-compatible route runs the agent\'s tools and answers the final text; a stored session keeps them', async (t) => {
  const { stub, base, app } = await world(t)
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 1, b: 1 } }] }, { when: chat })
  stub.enqueue({ text: 'Two.' }, { when: chat })
  const res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'assistant', messages: [{ role: 'user', content: '1+1' }] }) })
  t.equal(res.status, 200)
  t.equal((await res.json()).choices[0].message.content, 'Two.')

  // store: true keeps the exchange in a session, tool messages included; a continuation sees them.
  stub.reset()
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 2, b: 2 } }] }, { when: chat })
  stub.enqueue({ text: 'Four.' }, { when: chat })
  const stored = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'assistant', store: true, messages: [{ role: 'user', content: '2+2' }] }) })
  t.equal(stored.status, 200)
  const sessionId = stored.headers.get('x-smalltalk-session-id')!
  t.same((await history(app, sessionId)).map((m) => m.role), ['user', 'tool', 'assistant'])
  stub.reset()
  stub.setDefault({ text: 'Still four.' })
  const continued = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-smalltalk-session-id': sessionId }, body: JSON.stringify({ model: 'assistant', messages: [{ role: 'user', content: 'sure?' }] }) })
  t.equal(continued.status, 200)
  t.ok(stub.chatRequests().at(-1)!.messages.some((m) => m.toolResults?.[0]?.content === '4'), 'the continuation\'s context has the stored tool result')
})

t.test('a reply that fails after a tool step: the stored call stays, the history shows it, the next reply sees it', async (t) => {
  const { stub, app } = await world(t)
  const id = await createSession(app, ['assistant'])
  t.equal((await post(app, id, { content: 'warm the cache' })).statusCode, 201)
  await history(app, id)
  stub.reset()
  stub.enqueue({ toolCalls: [{ name: 'add', arguments: { a: 1, b: 2 } }] }, { when: chat })
  stub.enqueue({ status: 400, errorMessage: 'context too long' }, { when: chat })
  const failed = await post(app, id, { content: 'add then fail' })
  t.equal(failed.statusCode, 502, failed.body)
  t.same((await history(app, id)).map((m) => m.role), ['user', 'assistant', 'user', 'tool'], 'the tool message is read back at once (no stale cached record)')
  stub.reset()
  stub.setDefault({ text: 'ok' })
  t.equal((await post(app, id, { content: 'go on' })).statusCode, 201)
  const sent = stub.chatRequests().at(-1)!
  t.ok(sent.messages.some((m) => m.toolResults?.[0]?.content === '3'), 'the next reply\'s context has the stored result')
})
