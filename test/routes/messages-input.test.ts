import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { REDIS_URL, buildTestApp, testEnv } from '../helper.js'
import { canonicalJson, requestHash } from '../../src/messages/idempotency.js'

// Bounds on what a client may store (issue 10): metadata has a documented size limit, refused with a
// 400 naming the field before anything is stored; an idempotent retry is recognised whatever the
// order of its metadata's keys.

async function start (t: Parameters<typeof buildTestApp>[0], env: Record<string, string> = {}): Promise<FastifyInstance> {
  return buildTestApp(t, await testEnv(t, { REDIS_URL, ...env }))
}

async function createSession (app: FastifyInstance): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: {} })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

const sized = (bytes: number) => ({ note: 'x'.repeat(bytes - '{"note":""}'.length) })

t.test('metadata over METADATA_MAX_BYTES is a 400 naming the field; at the limit it is stored', async (t) => {
  const app = await start(t, { METADATA_MAX_BYTES: '1024' })
  t.equal(Buffer.byteLength(JSON.stringify(sized(1024))), 1024)

  const tooBig = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { metadata: sized(1025) } })
  t.equal(tooBig.statusCode, 400)
  t.match(tooBig.json(), { code: 'METADATA_TOO_LARGE', message: /metadata is 1025 bytes.*at most 1024/, details: [{ field: '/metadata' }] })
  const { rows: sessions } = await app.pg.pool.query('SELECT count(*)::int AS n FROM sessions')
  t.equal(sessions[0].n, 0, 'no session stored')

  const id = await createSession(app)
  const patched = await app.inject({ method: 'PATCH', url: `/v1/sessions/${id}`, headers: { 'if-match': '"1"' }, payload: { metadata: sized(2000) } })
  t.equal(patched.statusCode, 400)
  t.match(patched.json(), { code: 'METADATA_TOO_LARGE', details: [{ field: '/metadata' }] })
  t.equal((await app.inject(`/v1/sessions/${id}`)).json().version, 1, 'the session is unchanged')

  const message = await app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: { content: 'hi', metadata: sized(1025) } })
  t.equal(message.statusCode, 400)
  t.match(message.json(), { code: 'METADATA_TOO_LARGE', details: [{ field: '/metadata' }] })
  const { rows: messages } = await app.pg.pool.query('SELECT count(*)::int AS n FROM chat_messages WHERE session_id = $1', [id])
  t.equal(messages[0].n, 0, 'no message stored')

  const atLimit = await app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: { content: 'hi', metadata: sized(1024) } })
  t.equal(atLimit.statusCode, 201)
  t.same(atLimit.json().message.metadata, sized(1024), 'stored as sent')
})

t.test('the default limit is 16 KiB', async (t) => {
  const app = await start(t)
  t.equal((await app.inject({ method: 'POST', url: '/v1/sessions', payload: { metadata: sized(16_384) } })).statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url: '/v1/sessions', payload: { metadata: sized(16_385) } })).statusCode, 400)
})

t.test('an idempotent retry is recognised whatever the order of its metadata keys', async (t) => {
  const app = await start(t)
  const id = await createSession(app)
  const url = `/v1/sessions/${id}/messages`
  const headers = { 'idempotency-key': 'key-order' }
  const first = await app.inject({ method: 'POST', url, headers, payload: { content: 'hello', metadata: { a: 1, b: { c: 2, d: [1, { e: 3, f: 4 }] } } } })
  t.equal(first.statusCode, 201)
  const retry = await app.inject({ method: 'POST', url, headers, payload: { metadata: { b: { d: [1, { f: 4, e: 3 }], c: 2 }, a: 1 }, content: 'hello' } })
  t.equal(retry.statusCode, 201, retry.body)
  t.equal(retry.headers['idempotent-replayed'], 'true')
  t.same(retry.json(), first.json(), 'the first outcome, replayed')
  const other = await app.inject({ method: 'POST', url, headers, payload: { content: 'hello', metadata: { a: 2, b: { c: 2, d: [1, { e: 3, f: 4 }] } } } })
  t.equal(other.statusCode, 409, 'another value is another request')
  t.equal(other.json().code, 'IDEMPOTENCY_KEY_REUSED')
})

t.test('canonicalJson: sorted keys at every depth, arrays in order', async (t) => {
  t.equal(canonicalJson({ b: 1, a: [{ d: 1, c: 2 }, 'x'], u: undefined }), '{"a":[{"c":2,"d":1},"x"],"b":1}')
  t.equal(canonicalJson(['b', 'a']), '["b","a"]')
  t.not(requestHash({ a: [1, 2] }), requestHash({ a: [2, 1] }), 'array order matters')
  t.equal(requestHash({ a: 1, b: 2 }), requestHash({ b: 2, a: 1 }))
})
