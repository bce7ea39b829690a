import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildTestApp, eventually, testEnv } from '../helper.js'
import { data, sse, type SseResult } from '../support/sse.js'
import type { Message as StoredMessage } from '../../src/messages/message-store.js'

// The message path end to end on the real app, PostgreSQL and (when configured) Redis:
// POST /v1/sessions/:id/messages as JSON and as Server-Sent Events, GET .../messages, the event log.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
const MODELS: Record<string, string> = { assistant: 'gpt-4o-mini', coder: 'claude-haiku-4-5', writer: 'gemini-2.5-flash' }
const echo = (agent: string, content: string) => `Echo (${MODELS[agent]}): ${content}`

type Message = Omit<StoredMessage, 'role'> & { role: 'user' | 'assistant' }

async function start (t: Test, env: Environment = {}): Promise<FastifyInstance> {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL, ...env }))
  await app.ready()
  return app
}

/**
 * The app on a real port, for SSE read through fetch. Node's fetch (undici) opens a spare connection
 * when a request is aborted mid-body; Node's server only drops such a connection after its headers
 * timeout, so the app would take a minute to close: at close, every connection is dropped.
 */
async function startListening (t: Test, env: Environment = {}): Promise<{ app: FastifyInstance; base: string }> {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL, ...env }))
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base }
}

async function createSession (app: FastifyInstance, body: Record<string, unknown> = {}): Promise<{ id: string; agents: string[]; messageCount: number }> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: body })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json()
}

function post (app: FastifyInstance, id: string, body: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({
    method: 'POST',
    url: `/v1/sessions/${id}/messages`,
    headers: { 'content-type': 'application/json', ...headers },
    payload: typeof body === 'string' ? body : JSON.stringify(body)
  })
}

async function messages (app: FastifyInstance, id: string, query = 'limit=200'): Promise<Message[]> {
  const res = await app.inject(`/v1/sessions/${id}/messages?${query}`)
  if (res.statusCode !== 200) throw new Error(`history: ${res.statusCode} ${res.body}`)
  return res.json().messages
}

async function session (app: FastifyInstance, id: string): Promise<{ messageCount: number }> {
  return (await app.inject(`/v1/sessions/${id}`)).json()
}

/** The delta texts of an SSE answer, concatenated. */
function deltaText (result: SseResult): string {
  return result.events.filter((e) => e.event === 'delta').map((e) => data<{ text: string }>(e).text).join('')
}

function assertErrorBody (t: Test, res: LightMyRequestResponse, statusCode: number, code?: string): Record<string, any> {
  if (!t.equal(res.statusCode, statusCode, `status ${statusCode} (${res.body.slice(0, 200)})`)) return {}
  t.match(res.headers['content-type'], /^application\/json/)
  const body = res.json()
  t.equal(body.statusCode, statusCode, 'statusCode in the body')
  t.type(body.error, 'string')
  t.type(body.message, 'string')
  t.ok(body.message.length > 0, 'a message that says what is wrong')
  if (code) t.equal(body.code, code, `code ${code}`)
  t.notMatch(res.body, /\bat .+\.(ts|js):\d+/, 'no stack trace')
  return body
}

t.test('a JSON post answers 201 with the stored user message and the stored reply', async (t) => {
  const app = await start(t)
  const created = await createSession(app)
  t.same(created.agents, ['assistant', 'coder', 'writer'], 'the default team')

  const res = await post(app, created.id, { content: 'Hello there, friend', metadata: { client: 'tap', nested: { n: 1 } } })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.headers['content-type'], /^application\/json/)
  const { message, reply } = res.json() as { message: Message; reply: Message }

  t.match(message, { seq: 1, role: 'user', content: 'Hello there, friend', metadata: { client: 'tap', nested: { n: 1 } } })
  t.match(message.id, UUID)
  t.match(message.createdAt, ISO)
  for (const field of ['agent', 'provider', 'model', 'usage', 'latencyMs']) t.notOk(field in message, `no ${field} on a user message`)

  t.match(reply, { seq: 2, role: 'assistant', agent: 'assistant', provider: 'echo', model: 'gpt-4o-mini', metadata: {} })
  t.equal(reply.content, echo('assistant', 'Hello there, friend'), 'the echo provider answers the user message')
  t.match(reply.id, UUID)
  t.not(reply.id, message.id)
  t.match(reply.createdAt, ISO)
  t.ok(Date.parse(reply.createdAt) >= Date.parse(message.createdAt), 'the reply is not older than the message')
  t.equal(reply.usage?.outputTokens, 5, 'output tokens: the words of the reply')
  t.ok((reply.usage?.inputTokens ?? 0) > 3, 'input tokens: the system prompt and the context')
  t.ok(Number.isInteger(reply.latencyMs) && (reply.latencyMs as number) >= 0, 'latencyMs is a non-negative integer')

  const stored = await messages(app, created.id)
  t.same(stored, [message, reply], 'GET messages returns exactly what the post answered')
  t.equal((await session(app, created.id)).messageCount, 2, 'messageCount counts both')

  // The rows, read straight from PostgreSQL.
  const { rows } = await app.pg.pool.query('SELECT id, seq, role, agent, content, provider, model FROM chat_messages WHERE session_id = $1 ORDER BY seq', [created.id])
  t.same(rows.map((r) => [r.id, Number(r.seq), r.role, r.agent, r.content, r.provider, r.model]), [
    [message.id, 1, 'user', null, message.content, null, null],
    [reply.id, 2, 'assistant', 'assistant', reply.content, 'echo', 'gpt-4o-mini']
  ])
  const state = await app.pg.pool.query('SELECT agent_id, reply_count, output_tokens FROM agent_states WHERE session_id = $1', [created.id])
  t.same(state.rows, [{ agent_id: 'assistant', reply_count: 1, output_tokens: 5 }], 'agent_states records the reply')

  // The event log says the same thing, with the same ids.
  const eventsRes = await app.inject(`/v1/events?sessionId=${created.id}&limit=200`)
  t.equal(eventsRes.statusCode, 200)
  const events = eventsRes.json().events as Array<{ id: string; type: string; agentId: string | null; sessionId: string; data: Record<string, unknown> }>
  t.same(events.map((e) => e.type), ['session.created', 'message.created', 'agent.selected', 'message.created'], 'events in commit order')
  const [, userCreated, selected, replyCreated] = events
  t.match(userCreated, { sessionId: created.id, data: { messageId: message.id, seq: 1, role: 'user' } })
  t.match(selected, { sessionId: created.id, agentId: 'assistant', data: { reason: 'default' } })
  t.match(replyCreated, { sessionId: created.id, agentId: 'assistant', data: { messageId: reply.id, seq: 2, role: 'assistant' } })
  t.same(new Set(events.map((e) => e.id)).size, events.length, 'event ids are unique')

  // A second message continues the sequence and the count.
  const second = await post(app, created.id, { content: 'And again' })
  t.equal(second.statusCode, 201)
  t.match(second.json(), { message: { seq: 3, content: 'And again' }, reply: { seq: 4, content: echo('assistant', 'And again') } })
  t.ok(second.json().reply.usage.inputTokens > reply.usage!.inputTokens, 'the context grew with the history')
  t.equal((await session(app, created.id)).messageCount, 4)
  t.same((await messages(app, created.id)).map((m) => m.seq), [1, 2, 3, 4])
})

t.test('history pagination: after, limit and nextCursor', async (t) => {
  const app = await start(t)
  const { id } = await createSession(app)
  for (let i = 1; i <= 3; i++) t.equal((await post(app, id, { content: `message ${i}` })).statusCode, 201)

  const page = async (query: string) => {
    const res = await app.inject(`/v1/sessions/${id}/messages?${query}`)
    t.equal(res.statusCode, 200, query)
    const body = res.json() as { messages: Message[]; nextCursor: number | null }
    return { seqs: body.messages.map((m) => m.seq), nextCursor: body.nextCursor, messages: body.messages }
  }
  const all = await page('')
  t.same(all.seqs, [1, 2, 3, 4, 5, 6], 'default limit (50) returns everything')
  t.equal(all.nextCursor, null)
  t.same(all.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant', 'user', 'assistant'])
  t.same(all.messages.filter((m) => m.role === 'assistant').map((m) => m.content), [1, 2, 3].map((i) => echo('assistant', `message ${i}`)))

  t.same(await page('limit=4'), { seqs: [1, 2, 3, 4], nextCursor: 4, messages: all.messages.slice(0, 4) })
  t.same(await page('after=4&limit=4'), { seqs: [5, 6], nextCursor: null, messages: all.messages.slice(4) })
  t.same((await page('after=1&limit=2')).nextCursor, 3)
  t.same(await page('after=2&limit=4'), { seqs: [3, 4, 5, 6], nextCursor: null, messages: all.messages.slice(2) }, 'a page that ends exactly at the last message has no next cursor')
  t.same(await page('after=6'), { seqs: [], nextCursor: null, messages: [] })
  t.same(await page('after=100'), { seqs: [], nextCursor: null, messages: [] })

  // Walking the cursor visits every message once, in order.
  const walked: number[] = []
  let cursor: number | null = 0
  for (let guard = 0; cursor !== null && guard < 10; guard++) {
    const next: { seqs: number[]; nextCursor: number | null } = await page(`after=${cursor}&limit=2`)
    walked.push(...next.seqs)
    cursor = next.nextCursor
  }
  t.same(walked, [1, 2, 3, 4, 5, 6])

  for (const bad of ['limit=0', 'limit=201', 'after=-1', 'after=abc', 'limit=1.5']) {
    assertErrorBody(t, await app.inject(`/v1/sessions/${id}/messages?${bad}`), 400)
  }
})

t.test('the agent named in the body answers; one outside the session or unknown is a 400', async (t) => {
  const app = await start(t)
  const { id } = await createSession(app, { agents: ['assistant', 'writer'] })

  const res = await post(app, id, { content: 'please debug this python function', agent: 'writer' })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json().reply, { agent: 'writer', model: 'gemini-2.5-flash', provider: 'echo', content: echo('writer', 'please debug this python function') })

  const notInSession = await post(app, id, { content: 'hi', agent: 'coder' })
  const body = assertErrorBody(t, notInSession, 400, 'AGENT_NOT_IN_SESSION')
  t.match(body.message, /coder/)

  const unknown = await post(app, id, { content: 'hi', agent: 'nobody' })
  t.match(assertErrorBody(t, unknown, 400, 'UNKNOWN_AGENT').message, /nobody/)

  t.same((await messages(app, id)).map((m) => m.seq), [1, 2], 'the refused posts stored nothing')
  t.equal((await session(app, id)).messageCount, 2)

  const events = (await app.inject(`/v1/events?sessionId=${id}&type=agent.selected`)).json().events
  t.match(events, [{ agentId: 'writer', data: { reason: 'requested' } }])
  t.equal(events.length, 1)
})

t.test('expertise routing picks the specialist whose keywords the message matches', async (t) => {
  const app = await start(t)
  const { id } = await createSession(app)
  const cases: Array<[string, string, string]> = [
    ['Can you debug this TypeScript function? It throws an exception.', 'coder', 'expertise'],
    ['Please proofread my essay and fix the grammar', 'writer', 'expertise'],
    ['Good morning!', 'assistant', 'default'],
    ['Write a SQL query for the database', 'coder', 'expertise'],
    ['Explain and summarize the plan', 'assistant', 'expertise']
  ]
  for (const [content, agent] of cases) {
    const res = await post(app, id, { content })
    t.equal(res.statusCode, 201)
    t.equal(res.json().reply.agent, agent, `"${content}" → ${agent}`)
    t.equal(res.json().reply.content, echo(agent, content))
  }
  const selected = (await app.inject(`/v1/events?sessionId=${id}&type=agent.selected`)).json().events
  t.same(selected.map((e: { agentId: string }) => e.agentId), cases.map((c) => c[1]))
  t.same(selected.map((e: { data: { reason: string } }) => e.data.reason), cases.map((c) => c[2]))
  t.ok(['debug', 'function', 'typescript', 'exception'].every((k) => selected[0].data.matched.includes(k)), `matched keywords: ${selected[0].data.matched}`)
})

t.test('bad input: a 4xx that says what is wrong, and nothing stored', async (t) => {
  const app = await start(t, { MAX_MESSAGE_CHARS: '50', BODY_LIMIT: '4096' })
  const { id } = await createSession(app)
  const url = `/v1/sessions/${id}/messages`

  t.test('empty content names the field', async (t) => {
    const body = assertErrorBody(t, await post(app, id, { content: '' }), 400)
    t.ok(JSON.stringify(body.details ?? body.message).includes('content'), `details name content: ${JSON.stringify(body.details)}`)
  })
  t.test('missing content names the field', async (t) => {
    const body = assertErrorBody(t, await post(app, id, { metadata: {} }), 400)
    t.match(JSON.stringify(body.details), /content/)
  })
  t.test('content of the wrong type', async (t) => {
    assertErrorBody(t, await post(app, id, { content: 42 }), 400)
    assertErrorBody(t, await post(app, id, { content: ['a'] }), 400)
    assertErrorBody(t, await post(app, id, { content: 'x', metadata: 'not an object' }), 400)
  })
  t.test('content over MAX_MESSAGE_CHARS', async (t) => {
    const body = assertErrorBody(t, await post(app, id, { content: 'x'.repeat(51) }), 400)
    t.match(JSON.stringify(body.details), /content/)
    t.match(JSON.stringify(body), /50/, 'says the limit')
  })
  t.test('exactly MAX_MESSAGE_CHARS characters is accepted, counted in characters not UTF-16 units', async (t) => {
    const ascii = await post(app, id, { content: 'y'.repeat(50) })
    t.equal(ascii.statusCode, 201, ascii.body)
    const astral = await post(app, id, { content: '😀'.repeat(50) })
    t.equal(astral.statusCode, 201, `50 emoji are 50 characters (${astral.body.slice(0, 200)})`)
    assertErrorBody(t, await post(app, id, { content: '😀'.repeat(51) }), 400)
  })
  t.test('body over BODY_LIMIT is a 413', async (t) => {
    const res = await post(app, id, { content: 'z', metadata: { pad: 'p'.repeat(5000) } })
    assertErrorBody(t, res, 413)
  })
  t.test('malformed JSON is a 400', async (t) => {
    assertErrorBody(t, await post(app, id, '{"content": "unterminated'), 400)
    assertErrorBody(t, await post(app, id, '{content: no quotes}'), 400)
  })
  t.test('an empty body is a 400', async (t) => {
    const res = await app.inject({ method: 'POST', url, headers: { 'content-type': 'application/json' } })
    t.ok(res.statusCode === 400, `status ${res.statusCode}`)
  })
  t.test('a body that is not JSON is a 415', async (t) => {
    for (const type of ['application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      assertErrorBody(t, await app.inject({ method: 'POST', url, headers: { 'content-type': type }, payload: 'content=hello' }), 415)
    }
  })
  t.test('text/plain is a 415 too', async (t) => {
    const res = await app.inject({ method: 'POST', url, headers: { 'content-type': 'text/plain' }, payload: 'hello' })
    assertErrorBody(t, res, 415)
  })
  t.test('an unknown field is a 400 that names it', async (t) => {
    const body = assertErrorBody(t, await post(app, id, { content: 'hi', colour: 'blue' }), 400)
    t.match(JSON.stringify(body), /colour/, `the answer names the unknown field: ${JSON.stringify(body)}`)
  })
  t.test('a session id that is not a UUID is a 400', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/v1/sessions/not-a-uuid/messages', payload: { content: 'hi' } })
    assertErrorBody(t, res, 400)
    assertErrorBody(t, await app.inject('/v1/sessions/not-a-uuid/messages'), 400)
  })
  t.test('an unknown session is a 404', async (t) => {
    const res = await post(app, '00000000-0000-4000-8000-000000000000', { content: 'hi' })
    assertErrorBody(t, res, 404, 'SESSION_NOT_FOUND')
    assertErrorBody(t, await app.inject('/v1/sessions/00000000-0000-4000-8000-000000000000/messages'), 404, 'SESSION_NOT_FOUND')
  })
  t.test('a NUL character is refused with its own code', async (t) => {
    assertErrorBody(t, await post(app, id, { content: 'before\u0000after' }), 400, 'NUL_CHARACTER')
    assertErrorBody(t, await post(app, id, { content: 'fine', metadata: { k: 'v\u0000' } }), 400, 'NUL_CHARACTER')
  })
  t.test('text that is not valid Unicode (a lone surrogate) is a 400, never altered, never a 500', async (t) => {
    // JSON can carry "\ud800" but no UTF-8 text (PostgreSQL's) can: storing it "exactly as sent" is
    // impossible, so the only honest answers are a 400 (or storing it intact, which cannot be done).
    const content = await post(app, id, '{"content":"lone \\ud800 surrogate"}')
    assertErrorBody(t, content, 400)
    const metadata = await post(app, id, '{"content":"fine","metadata":{"k":"\\udc00"}}')
    assertErrorBody(t, metadata, 400)
  })
  t.test('Accept: text/html is a 406', async (t) => {
    assertErrorBody(t, await post(app, id, { content: 'hi' }, { accept: 'text/html' }), 406)
  })
  t.test('a wrong method is not a success', async (t) => {
    const res = await app.inject({ method: 'PUT', url, payload: { content: 'hi' } })
    t.ok(res.statusCode === 404 || res.statusCode === 405, `status ${res.statusCode}`)
  })
  t.test('an Idempotency-Key that is not printable ASCII is a 400', async (t) => {
    assertErrorBody(t, await post(app, id, { content: 'hi' }, { 'idempotency-key': 'x'.repeat(256) }), 400)
  })

  t.test('only the accepted posts were stored', async (t) => {
    const stored = await messages(app, id)
    t.same(stored.filter((m) => m.role === 'user').map((m) => m.content), ['y'.repeat(50), '😀'.repeat(50)])
    t.same(stored.map((m) => m.seq), [1, 2, 3, 4])
    t.equal((await session(app, id)).messageCount, 4)
    const { rows } = await app.pg.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM chat_messages')
    t.equal(rows[0]?.n, 4, 'no stray rows in other sessions either')
  })
})

const TRICKY_TEXTS: Array<[string, string]> = [
  ['SQL', "'); DROP TABLE chat_messages; --"],
  // eslint-disable-next-line no-template-curly-in-string -- a literal ${x} is the point: stored exactly as sent
  ['more SQL', 'Robert\'); DROP TABLE sessions;-- " \\ \\\\ $1 %s %d ${x} `x` \\x00 E\'\\n\' /* */'],
  ['emoji', '👋🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 keycap 1️⃣ ❤️'],
  ['CJK', '你好，世界。日本語のテキスト、カタカナ。한국어 텍스트'],
  ['RTL', 'مرحبا بالعالم — שלום עולם \u202Eevil\u202C \u200Fmark'],
  ['combining marks (NFD kept, not normalised)', 'e\u0301 e\u0301\u0301 A\u030A Z\u0324\u0354\u0367\u0311\u0313 \u1100\u1161\u11A8'],
  ['precomposed (NFC kept)', 'é Å 각'],
  ['4-byte characters', '𝕳𝖊𝖑𝖑𝖔 𐍈 𠜎 🀄 \u{10FFFD}'],
  ['newlines and tabs', 'line1\nline2\r\nline3\ttabbed\t\tend\n\n  trailing spaces  \r'],
  ['invisible and separators', 'a\u200Bb\uFEFFc\u2028d\u2029e\u00A0f\u000Bg\u000Ch'],
  ['HTML and JSON lookalikes', '<script>alert(1)</script> {"a":1} &amp; \\u0000 \\n'],
  ['leading whitespace', '   \t  indented']
]

t.test('any text is stored and returned byte for byte, as JSON and as SSE, and the tables survive', async (t) => {
  const { app, base } = await startListening(t)
  const { id } = await createSession(app, { agents: ['assistant'] })

  const expected: string[] = []
  for (const [name, text] of TRICKY_TEXTS) {
    const res = await post(app, id, { content: text, metadata: { label: text } })
    t.equal(res.statusCode, 201, `${name}: 201`)
    const { message, reply } = res.json() as { message: Message; reply: Message }
    t.ok(Buffer.from(message.content).equals(Buffer.from(text)), `${name}: JSON answer, same bytes`)
    t.equal(message.metadata.label, text, `${name}: metadata kept`)
    t.ok(Buffer.from(reply.content).equals(Buffer.from(echo('assistant', text))), `${name}: the reply echoes the exact text`)
    expected.push(text, echo('assistant', text))

    const streamed = await sse(`${base}/v1/sessions/${id}/messages`, { content: text })
    t.equal(streamed.status, 200, `${name}: SSE 200`)
    const userEvent = data<Message>(streamed.events.find((e) => e.event === 'message'))
    const done = data<Message>(streamed.events.find((e) => e.event === 'done'))
    t.ok(Buffer.from(userEvent.content).equals(Buffer.from(text)), `${name}: SSE message event, same bytes`)
    t.ok(Buffer.from(deltaText(streamed)).equals(Buffer.from(echo('assistant', text))), `${name}: SSE deltas add up to the exact text`)
    t.equal(done.content, echo('assistant', text), `${name}: SSE done`)
    expected.push(text, echo('assistant', text))
  }

  const stored = await messages(app, id)
  t.equal(stored.length, expected.length)
  stored.forEach((m, i) => t.ok(Buffer.from(m.content).equals(Buffer.from(expected[i] as string)), `GET returns message ${m.seq} byte for byte`))

  // Straight from PostgreSQL: the bytes, not a normalised or escaped form.
  const { rows } = await app.pg.pool.query<{ content: string; bytes: number }>(
    'SELECT content, octet_length(convert_to(content, \'UTF8\')) AS bytes FROM chat_messages WHERE session_id = $1 ORDER BY seq',
    [id]
  )
  rows.forEach((row, i) => {
    t.equal(row.content, expected[i], `row ${i + 1} stored as sent`)
    t.equal(row.bytes, Buffer.byteLength(expected[i] as string), `row ${i + 1}: same UTF-8 length`)
  })

  const tables = await app.pg.pool.query<{ t: string | null }>(
    'SELECT to_regclass(name) AS t FROM unnest(ARRAY[\'chat_messages\', \'sessions\', \'event_logs\', \'agent_states\']) AS name'
  )
  t.same(tables.rows.map((r) => r.t), ['chat_messages', 'sessions', 'event_logs', 'agent_states'], 'every table still exists')
  t.equal((await app.inject('/v1/sessions')).statusCode, 200)
})

t.test('SSE: message, agent, deltas, done; ids; deltas add up to the stored reply', async (t) => {
  const { app, base } = await startListening(t, { ECHO_TOKEN_DELAY_MS: '20' })
  const { id } = await createSession(app)
  const content = 'Could you debug this small JavaScript program for me please'
  const result = await sse(`${base}/v1/sessions/${id}/messages`, { content, metadata: { via: 'sse' } })

  t.equal(result.status, 200)
  t.match(result.headers.get('content-type'), /^text\/event-stream/)
  t.match(result.headers.get('cache-control'), /no-cache/)
  t.notOk(result.aborted)
  const names = result.events.map((e) => e.event)
  t.same(names.slice(0, 2), ['message', 'agent'], 'message then agent')
  t.equal(names[names.length - 1], 'done', 'done last')
  const deltas = names.slice(2, -1)
  t.ok(deltas.length > 1 && deltas.every((n) => n === 'delta'), `only deltas in between (${deltas.length})`)
  const reply = echo('coder', content)
  t.equal(deltas.length, reply.split(' ').length, 'one delta per word')

  const ids = result.events.map((e) => e.id)
  t.ok(ids.every((i) => typeof i === 'string' && i.length > 0), 'every event has an id')
  t.equal(new Set(ids).size, ids.length, 'ids are unique')

  const message = data<Message>(result.events[0])
  t.match(message, { seq: 1, role: 'user', content, metadata: { via: 'sse' } })
  t.match(data(result.events[1]), { agent: 'coder', name: 'Coder', reason: 'expertise', provider: 'echo', model: MODELS.coder })
  t.ok(data(result.events[1]).matched.includes('debug'))
  for (const e of result.events.filter((x) => x.event === 'delta')) t.same(Object.keys(data(e)), ['text'], 'delta data is { text }')

  const done = data<Message>(result.events[result.events.length - 1])
  t.equal(deltaText(result), done.content, 'the deltas add up to done.content')
  t.equal(done.content, reply)
  const stored = await messages(app, id)
  t.same(stored, [message, done], 'message and done are the stored rows, field for field')
  t.match(done, { seq: 2, role: 'assistant', agent: 'coder', provider: 'echo', model: MODELS.coder, usage: { outputTokens: reply.split(' ').length } })

  // Streamed, not buffered: the first delta comes long before the end (10 words, 20 ms apart).
  t.ok(result.firstDeltaMs !== undefined && result.firstDeltaMs < result.durationMs - 100, `first delta after ${Math.round(result.firstDeltaMs ?? -1)} ms of ${Math.round(result.durationMs)} ms`)
})

t.test('SSE errors before the stream opens are ordinary HTTP errors', async (t) => {
  const { app, base } = await startListening(t)
  const { id } = await createSession(app, { agents: ['assistant'] })

  const unknown = await sse(`${base}/v1/sessions/00000000-0000-4000-8000-000000000000/messages`, { content: 'hi' })
  t.equal(unknown.status, 404)
  t.match(unknown.headers.get('content-type'), /^application\/json/)
  t.match(JSON.parse(unknown.text), { statusCode: 404, code: 'SESSION_NOT_FOUND' })

  const bad = await sse(`${base}/v1/sessions/${id}/messages`, { content: '' })
  t.equal(bad.status, 400)
  t.equal(bad.events.length, 0)

  const wrongAgent = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'hi', agent: 'writer' })
  t.equal(wrongAgent.status, 400)
  t.match(JSON.parse(wrongAgent.text), { code: 'AGENT_NOT_IN_SESSION' })
  t.same(await messages(app, id), [], 'nothing stored')
})

t.test('an idempotent retry over SSE replays the first reply and stores nothing new', async (t) => {
  const { app, base } = await startListening(t)
  const { id } = await createSession(app)
  const url = `${base}/v1/sessions/${id}/messages`
  const headers = { 'idempotency-key': 'sse-retry-1' }
  const body = { content: 'Tell me a short story about a lighthouse' }

  const first = await sse(url, body, { headers })
  t.equal(first.status, 200)
  t.equal(first.headers.get('idempotent-replayed'), null, 'the first answer is not a replay')
  const firstMessage = data<Message>(first.events.find((e) => e.event === 'message'))
  const firstDone = data<Message>(first.events.find((e) => e.event === 'done'))
  t.equal(firstDone.agent, 'writer')

  const retry = await sse(url, body, { headers })
  t.equal(retry.status, 200)
  t.match(retry.headers.get('content-type'), /^text\/event-stream/)
  t.equal(retry.headers.get('idempotent-replayed'), 'true')
  t.same(retry.events.map((e) => e.event).filter((n, i, all) => n !== 'delta' || all[i - 1] !== 'delta'), ['message', 'agent', 'delta', 'done'], 'message, agent, delta(s), done')
  t.same(data(retry.events.find((e) => e.event === 'message')), firstMessage, 'the same stored user message')
  t.match(data(retry.events.find((e) => e.event === 'agent')), { agent: 'writer', provider: 'echo', model: MODELS.writer })
  t.same(data(retry.events.find((e) => e.event === 'done')), firstDone, 'the same stored reply')
  t.equal(deltaText(retry), firstDone.content, 'the replayed deltas add up to the stored reply')
  const ids = retry.events.map((e) => e.id)
  t.ok(ids.every(Boolean) && new Set(ids).size === ids.length, 'replayed events have unique ids')

  // The same key as JSON: the same result.
  const json = await post(app, id, body, headers)
  t.equal(json.statusCode, 201)
  t.equal(json.headers['idempotent-replayed'], 'true')
  t.same(json.json(), { message: firstMessage, reply: firstDone, toolCalls: [] })

  t.same(await messages(app, id), [firstMessage, firstDone], 'stored once')
  t.equal((await session(app, id)).messageCount, 2)
  const created = (await app.inject(`/v1/events?sessionId=${id}&type=message.created`)).json().events
  t.equal(created.length, 2, 'no duplicate events')
})

t.test('a client that disconnects mid-stream does not lose the reply', async (t) => {
  const { app, base } = await startListening(t, { ECHO_TOKEN_DELAY_MS: '30' })
  const { id } = await createSession(app, { agents: ['assistant'] })
  const words = Array.from({ length: 40 }, (_, i) => `word${i + 1}`)
  const content = words.join(' ')

  const cut = await sse(`${base}/v1/sessions/${id}/messages`, { content }, { abortAfter: (event) => event.event === 'delta' })
  t.equal(cut.status, 200)
  t.ok(cut.aborted, 'the client went away')
  t.same(cut.events.map((e) => e.event), ['message', 'agent', 'delta'], 'after the first delta')

  // The reply is ~1.2 s long: right after the disconnect only the user message is there...
  const early = await messages(app, id)
  t.same(early.map((m) => m.role), ['user'], 'the reply was still being produced when the client left')
  // ...and the reply is completed and stored in full anyway.
  t.ok(await eventually(async () => (await messages(app, id)).length === 2, 10_000), 'the reply is stored')
  const stored = await messages(app, id)
  t.match(stored[1], { seq: 2, role: 'assistant', agent: 'assistant', content: echo('assistant', content) })
  t.equal((await session(app, id)).messageCount, 2)
  const { rows } = await app.pg.pool.query('SELECT reply_lease_until FROM sessions WHERE id = $1', [id])
  t.equal(rows[0].reply_lease_until, null, 'the reply lease was released')

  // The session takes the next message at once.
  const next = await post(app, id, { content: 'still there?' })
  t.equal(next.statusCode, 201, next.body)
  t.match(next.json(), { message: { seq: 3 }, reply: { seq: 4, content: echo('assistant', 'still there?') } })
})

t.test('a second post while a reply is running is a 409 with Retry-After; other sessions are not blocked', async (t) => {
  const { app, base } = await startListening(t, { ECHO_TOKEN_DELAY_MS: '30' })
  const { id } = await createSession(app, { agents: ['assistant'] })
  const other = await createSession(app, { agents: ['assistant'] })
  const long = Array.from({ length: 40 }, (_, i) => `w${i}`).join(' ')

  const running = post(app, id, { content: long })
  t.ok(await eventually(async () => (await messages(app, id)).length === 1, 5000), 'the first reply is under way')

  const started = Date.now()
  const busy = await post(app, id, { content: 'me too' })
  const body = assertErrorBody(t, busy, 409, 'SESSION_BUSY')
  t.ok(Date.now() - started < 1000, 'refused at once, not queued')
  const retryAfter = Number(busy.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 5, `Retry-After: ${busy.headers['retry-after']}`)
  t.match(body.message, /reply/i)

  const busySse = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'me too, streaming' })
  t.equal(busySse.status, 409, 'over SSE too, as a plain HTTP error')
  t.ok(busySse.headers.get('retry-after'))
  t.match(JSON.parse(busySse.text), { code: 'SESSION_BUSY' })

  const keyed = await post(app, id, { content: 'keyed' }, { 'idempotency-key': 'busy-key' })
  assertErrorBody(t, keyed, 409, 'SESSION_BUSY')

  // Another session answers normally meanwhile.
  const otherStarted = Date.now()
  const free = await post(app, other.id, { content: 'hi' })
  t.equal(free.statusCode, 201, 'another session is not blocked')
  t.ok(Date.now() - otherStarted < 1000, `and not slowed down (${Date.now() - otherStarted} ms)`)

  t.same((await messages(app, id)).map((m) => m.content), [long], 'the refused messages were not stored')

  const first = await running
  t.equal(first.statusCode, 201)
  t.match(first.json(), { message: { seq: 1 }, reply: { seq: 2, content: echo('assistant', long) } })

  const after = await post(app, id, { content: 'now?' })
  t.equal(after.statusCode, 201, 'the session accepts a message once the reply is done')
  t.match(after.json(), { message: { seq: 3, content: 'now?' }, reply: { seq: 4 } })

  // The key refused as busy was released: it works now, as a first request (not a replay of the 409).
  const keyedAgain = await post(app, id, { content: 'keyed' }, { 'idempotency-key': 'busy-key' })
  t.equal(keyedAgain.statusCode, 201, keyedAgain.body)
  t.equal(keyedAgain.headers['idempotent-replayed'], undefined)
  t.same((await messages(app, id)).map((m) => m.seq), [1, 2, 3, 4, 5, 6])
  t.equal((await session(app, id)).messageCount, 6)
})

t.test('messages of an ended session are refused with 410', async (t) => {
  const app = await start(t)
  const { id } = await createSession(app)
  t.equal((await post(app, id, { content: 'hello' })).statusCode, 201)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })).statusCode, 204)
  assertErrorBody(t, await post(app, id, { content: 'anyone?' }), 410)
  assertErrorBody(t, await app.inject(`/v1/sessions/${id}/messages`), 410)
  const { rows } = await app.pg.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM chat_messages WHERE session_id = $1', [id])
  t.equal(rows[0]?.n, 2, 'nothing stored after the delete')
})

t.test('a reply that outlives LLM_TIMEOUT_MS: 504 (or an error event), the user message kept, the session free', async (t) => {
  const { app, base } = await startListening(t, { ECHO_TOKEN_DELAY_MS: '200', LLM_TIMEOUT_MS: '500' })
  const { id } = await createSession(app, { agents: ['assistant'] })
  const slow = 'one two three four five six seven eight nine ten'

  const started = Date.now()
  const res = await post(app, id, { content: slow }, { 'idempotency-key': 'timeout-1' })
  const body = assertErrorBody(t, res, 504, 'LLM_TIMEOUT')
  t.ok(Date.now() - started < 2000, `answered shortly after the deadline (${Date.now() - started} ms)`)
  t.match(body.message, /assistant/)
  const stored = await messages(app, id)
  t.same(stored.map((m) => [m.seq, m.role, m.content]), [[1, 'user', slow]], 'the user message stays, no reply stored')
  t.equal(body.details?.messageId, stored[0]?.id, 'the error says which message was stored')
  const failed = (await app.inject(`/v1/events?sessionId=${id}&type=agent.failed`)).json().events
  t.match(failed, [{ agentId: 'assistant', data: { code: 'LLM_TIMEOUT', messageId: stored[0]?.id } }], 'the failure is an event')

  // A retry with the same key replays the failure; it does not post the message again.
  const retry = await post(app, id, { content: slow }, { 'idempotency-key': 'timeout-1' })
  t.equal(retry.statusCode, 504)
  t.equal(retry.headers['idempotent-replayed'], 'true')
  t.same(retry.json(), res.json())
  t.equal((await messages(app, id)).length, 1)

  // Over SSE: deltas, then an error event, never a done.
  const streamed = await sse(`${base}/v1/sessions/${id}/messages`, { content: slow })
  t.equal(streamed.status, 200)
  const names = streamed.events.map((e) => e.event)
  t.same(names.slice(0, 2), ['message', 'agent'])
  t.equal(names.at(-1), 'error', 'the stream ends with an error event')
  t.notOk(names.includes('done'), 'no done for a reply that was not finished')
  t.match(data(streamed.events.at(-1)), { statusCode: 504, error: 'Gateway Timeout', code: 'LLM_TIMEOUT' })
  t.ok(names.filter((n) => n === 'delta').length < 12, 'cut before the end of the reply')

  // The lease was released at once: a short message gets its reply.
  const next = await post(app, id, { content: 'hi' })
  t.equal(next.statusCode, 201, next.body)
  t.match(next.json(), { message: { seq: 3 }, reply: { seq: 4, content: echo('assistant', 'hi') } })
  t.equal((await session(app, id)).messageCount, 4, 'two unanswered messages and one answered pair')
})

t.test('many replies in flight at once: no listener-leak warning in the logs', async (t) => {
  const app = await start(t, { ECHO_TOKEN_DELAY_MS: '20' })
  const warnings: Error[] = []
  const onWarning = (warning: Error) => warnings.push(warning)
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))
  const ids = await Promise.all(Array.from({ length: 15 }, () => createSession(app).then((s) => s.id)))
  const answers = await Promise.all(ids.map((id) => post(app, id, { content: 'all at once, please' })))
  t.same(answers.map((a) => a.statusCode), ids.map(() => 201))
  await new Promise((resolve) => setImmediate(resolve))
  t.same(warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message), [], 'each reply listens to the shutdown signal, by design')
})
