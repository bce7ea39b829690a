import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildTestApp, redisUnavailable, tempDir, testEnv } from '../helper.js'
import { LlmStub, type StubRequest } from '../support/llm-stub.js'
import { data, sse } from '../support/sse.js'

// The reply lease, seen from a provider that counts what it is asked (issue 10): a request that may
// be refused never reaches a provider, and a reply is stored only under its own lease, in an active
// session. Two replicas share one PostgreSQL and one Redis, as in production.

const TEAM = `
agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: gpt-test
    systemPrompt: You are Assistant.
    expertise: [question]
  - id: writer
    name: Writer
    description: Writes prose.
    provider: openai
    model: gpt-test
    systemPrompt: You are Writer.
    expertise: [essay]
  - id: router
    name: Router
    description: Routes messages.
    provider: openai
    model: router-test
    systemPrompt: You route.
`

const chat = (request: StubRequest) => request.kind === 'chat'
const replyCalls = (stub: LlmStub) => stub.chatRequests().filter((r) => r.model === 'gpt-test').length
const routerCalls = (stub: LlmStub) => stub.chatRequests().filter((r) => r.model === 'router-test').length

interface Replicas {
  stub: LlmStub
  a: FastifyInstance
  b: FastifyInstance
  base: { a: string; b: string }
}

async function twoReplicas (t: Test, env: Environment = {}, shareCache = true): Promise<Replicas> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const shared = await testEnv(t, { REDIS_URL, AGENTS_FILE: file, OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: stub.openaiBaseUrl, LLM_RETRY_BASE_MS: '10', ...env })
  const a = await buildTestApp(t, shared)
  const b = await buildTestApp(t, shareCache ? shared : { ...shared, REDIS_KEY_PREFIX: `${shared.REDIS_KEY_PREFIX}b:` })
  for (const app of [a, b]) {
    app.addHook('preClose', (done) => {
      app.server.closeAllConnections()
      done()
    })
  }
  const base = { a: await a.listen({ port: 0, host: '127.0.0.1' }), b: await b.listen({ port: 0, host: '127.0.0.1' }) }
  return { stub, a, b, base }
}

async function createSession (app: FastifyInstance, agents = ['assistant']): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

function post (app: FastifyInstance, id: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, headers, payload: body })
}

async function stored (app: FastifyInstance, id: string): Promise<Array<{ role: string; content: string }>> {
  const { rows } = await app.pg.pool.query('SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY seq', [id])
  return rows
}

async function eventTypes (app: FastifyInstance, id: string): Promise<Array<{ type: string; data: Record<string, unknown> }>> {
  const { rows } = await app.pg.pool.query('SELECT type, data FROM event_logs WHERE session_id = $1 ORDER BY id', [id])
  return rows
}

t.test('concurrent posts on one replica and on two: exactly one provider call per stored reply', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b } = await twoReplicas(t)
  const id = await createSession(a)
  stub.setDefault({ text: 'one answer', delayMs: 300 })
  const results = await Promise.all([a, a, a, a, b, b, b, b].map((app, i) => post(app, id, { content: `post ${i}` })))
  const answered = results.filter((res) => res.statusCode === 201)
  const refused = results.filter((res) => res.statusCode === 409)
  t.equal(answered.length + refused.length, 8, 'every post is answered or refused')
  t.ok(answered.length >= 1, 'one reply at least')
  t.ok(refused.every((res) => res.json().code === 'SESSION_BUSY' && Number(res.headers['retry-after']) >= 1), 'a refusal is SESSION_BUSY with Retry-After')
  await stub.idle(2000)
  t.equal(replyCalls(stub), answered.length, 'the model was asked once per stored reply, never for a refused post')
  const rows = await stored(a, id)
  t.equal(rows.filter((row) => row.role === 'assistant').length, answered.length)
  t.equal(rows.filter((row) => row.role === 'user').length, answered.length, 'a refused post stored nothing')
})

t.test('a client retrying a busy session in a loop costs no provider call', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b } = await twoReplicas(t)
  const id = await createSession(a)
  stub.enqueue({ text: 'the slow reply', delayMs: 800 }, { when: chat })
  const first = post(a, id, { content: 'first' })
  await stub.waitForRequests(1, 5000)
  for (let i = 0; i < 4; i++) {
    const res = await post(b, id, { content: `retry ${i}` })
    t.equal(res.statusCode, 409, `retry ${i} on the other replica is refused`)
  }
  t.equal((await first).statusCode, 201)
  await stub.idle(1000)
  t.equal(replyCalls(stub), 1, 'four refused posts made no provider call')
  t.same((await stored(a, id)).map((row) => row.content), ['first', 'the slow reply'])
})

t.test('ROUTER=llm: the router is asked only under the lease, never for a refused post', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b } = await twoReplicas(t, { ROUTER: 'llm', ROUTER_AGENT: 'router' })
  const id = await createSession(a, ['assistant', 'writer'])
  stub.setDefault((request) => request.model === 'router-test' ? { text: 'assistant' } : { text: 'routed reply', delayMs: 600 })
  const first = post(a, id, { content: 'a question' })
  const started = Date.now()
  while (replyCalls(stub) < 1 && Date.now() - started < 5000) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(routerCalls(stub), 1, 'the router picked the agent of the first post')
  const refused = await Promise.all([post(a, id, { content: 'too early' }), post(b, id, { content: 'too early' })])
  t.same(refused.map((res) => res.statusCode), [409, 409])
  t.equal((await first).statusCode, 201)
  t.equal(routerCalls(stub), 1, 'no router call for the refused posts')
  t.equal(replyCalls(stub), 1)
})

t.test('DELETE on another replica while a reply runs: nothing stored, 410, and the failure is an event', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b } = await twoReplicas(t)
  const id = await createSession(a)
  stub.enqueue({ text: 'too late', delayMs: 500 }, { when: chat })
  const pending = post(a, id, { content: 'hello' }, { 'idempotency-key': 'deleted-mid-reply' })
  await stub.waitForRequests(1, 5000)
  t.equal((await b.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })).statusCode, 204)
  const res = await pending
  t.equal(res.statusCode, 410, res.body)
  t.match(res.json(), { code: 'SESSION_INVALIDATED', message: /reply was not stored/ })
  t.same((await stored(a, id)).map((row) => row.role), ['user'], 'the reply was not stored')
  const events = await eventTypes(a, id)
  const invalidatedAt = events.findIndex((e) => e.type === 'session.invalidated')
  t.ok(invalidatedAt >= 0)
  t.notOk(events.slice(invalidatedAt).some((e) => e.type === 'message.created'), 'no message.created after session.invalidated')
  t.match(events.slice(invalidatedAt), [{ type: 'session.invalidated' }, { type: 'reply.discarded', data: { code: 'SESSION_INVALIDATED' } }])
  const { rows } = await a.pg.pool.query('SELECT status, response FROM idempotency_keys WHERE key = $1', ['deleted-mid-reply'])
  t.match(rows, [{ status: 'completed', response: { ok: false, failure: { kind: 'gone', code: 'SESSION_INVALIDATED' } } }], 'the outcome is kept for the key')
  const retry = await post(a, id, { content: 'hello' }, { 'idempotency-key': 'deleted-mid-reply' })
  t.equal(retry.statusCode, 410, 'a retry is refused: the session is gone')
  t.same((await stored(a, id)).map((row) => row.role), ['user'], 'and stores nothing')
})

t.test('SSE: a session deleted mid-reply ends the stream with an error event, no done', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b, base } = await twoReplicas(t)
  const id = await createSession(a)
  stub.enqueue({ text: ['partial', ' answer'], deltaDelayMs: 300 }, { when: chat })
  const streaming = sse(`${base.a}/v1/sessions/${id}/messages`, { content: 'stream it' })
  await stub.waitForRequests(1, 5000)
  t.equal((await b.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })).statusCode, 204)
  const res = await streaming
  const kinds = res.events.map((e) => e.event)
  t.notOk(kinds.includes('done'), `no done event: ${kinds.join(',')}`)
  t.equal(kinds.at(-1), 'error')
  t.match(data(res.events.at(-1)!), { statusCode: 410, code: 'SESSION_INVALIDATED' })
  t.same((await stored(a, id)).map((row) => row.role), ['user'])
})

t.test('a reply that outlived its lease stores nothing and leaves the next reply\'s lease alone', { skip: redisUnavailable() }, async (t) => {
  const { stub, a, b } = await twoReplicas(t)
  const id = await createSession(a)
  stub.enqueue({ text: 'the late reply', delayMs: 600 }, { when: chat })
  stub.enqueue({ text: 'the next reply', delayMs: 1200 }, { when: chat })
  const late = post(a, id, { content: 'first' })
  await stub.waitForRequests(1, 5000)
  // The first lease runs out (as after a long stall): the next post may take the session.
  await a.pg.pool.query('UPDATE sessions SET reply_lease_until = now() - interval \'1 second\' WHERE id = $1', [id])
  const next = post(b, id, { content: 'second' })
  await stub.waitForRequests(2, 5000)
  const lateRes = await late
  t.equal(lateRes.statusCode, 409, lateRes.body)
  t.match(lateRes.json(), { code: 'REPLY_LEASE_LOST' })
  const third = await post(a, id, { content: 'third, while the second runs' })
  t.equal(third.statusCode, 409, 'the second reply still holds its lease: one reply at a time')
  t.equal(third.json().code, 'SESSION_BUSY')
  t.equal((await next).statusCode, 201)
  t.same((await stored(a, id)).map((row) => row.content), ['first', 'second', 'the next reply'], 'the late reply was not stored')
  t.match((await eventTypes(a, id)).filter((e) => e.type === 'reply.discarded'), [{ data: { code: 'REPLY_LEASE_LOST' } }])
})

t.test('a replica whose cached record is behind asks the model once, with the stored context', async (t) => {
  // Separate caches: replica a's cached record does not see replica b's post.
  const { stub, a, b } = await twoReplicas(t, {}, false)
  stub.setDefault((request) => ({ text: `reply to ${request.messages.at(-1)?.content}` }))
  const id = await createSession(a)
  t.equal((await post(a, id, { content: 'one' })).statusCode, 201)
  t.equal((await post(b, id, { content: 'two' })).statusCode, 201)
  const before = stub.chatRequests().length
  const res = await post(a, id, { content: 'three' })
  t.equal(res.statusCode, 201)
  const asked = stub.chatRequests().slice(before)
  t.equal(asked.length, 1, 'asked once')
  t.same(asked[0]!.messages.map((m) => m.content), ['one', 'reply to one', 'two', 'reply to two', 'three'], 'with the stored history')
  t.same((await stored(a, id)).map((row) => row.content), ['one', 'reply to one', 'two', 'reply to two', 'three', 'reply to three'])
})
