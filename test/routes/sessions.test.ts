import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildTestApp, testEnv } from '../helper.js'

const json = { 'content-type': 'application/json' }

async function createSession (app: FastifyInstance, body: Record<string, unknown> = {}) {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: body })
  if (res.statusCode !== 201) throw new Error(`create failed: ${res.statusCode} ${res.body}`)
  return res.json()
}

t.test('create: 201 with the documented shape, ETag and Location', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const before = Date.now()
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: { metadata: { user: 'ana', nested: { a: [1, 2] } }, ttlSeconds: 3600 } })
  t.equal(res.statusCode, 201)
  const session = res.json()
  t.same(Object.keys(session).sort(), ['agents', 'createdAt', 'expiresAt', 'group', 'id', 'messageCount', 'metadata', 'mode', 'status', 'updatedAt', 'version'])
  t.equal(session.mode, 'single', 'single mode by default')
  t.equal(session.group, null)
  t.match(session.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a random (v4) UUID')
  t.equal(session.status, 'active')
  t.same(session.agents, ['assistant', 'coder', 'writer'], 'default: every agent of the manifest')
  t.same(session.metadata, { user: 'ana', nested: { a: [1, 2] } })
  t.equal(session.version, 1)
  t.equal(session.messageCount, 0)
  const ttl = Date.parse(session.expiresAt) - before
  t.ok(ttl > 3590_000 && ttl < 3700_000, 'expiresAt from ttlSeconds')
  t.equal(res.headers.etag, '"1"')
  t.equal(res.headers.location, `/v1/sessions/${session.id}`)
})

t.test('create: SESSION_TTL is the default lifetime; an empty body is fine', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { SESSION_TTL: '120' }))
  const res = await app.inject({ method: 'POST', url: '/v1/sessions' })
  t.equal(res.statusCode, 201)
  const ttl = Date.parse(res.json().expiresAt) - Date.parse(res.json().createdAt)
  t.ok(Math.abs(ttl - 120_000) < 2000, `about 120 s (${ttl} ms)`)
})

t.test('create: bad input is refused with a message that says what is wrong', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const unknown = await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: { agents: ['assistant', 'wizard'] } })
  t.equal(unknown.statusCode, 400)
  t.match(unknown.json(), { code: 'UNKNOWN_AGENT', message: 'Unknown agent: wizard', details: { unknown: ['wizard'] } })

  const cases: [unknown, RegExp][] = [
    [{ agents: [] }, /agents/],
    [{ agents: ['assistant', 'assistant'] }, /agents/],
    [{ ttlSeconds: 5 }, /ttlSeconds/],
    [{ ttlSeconds: 'soon' }, /ttlSeconds/],
    [{ metadata: 'text' }, /metadata/],
    [{ colour: 'blue' }, /colour|additional/]
  ]
  for (const [payload, field] of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: payload as object })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.match(JSON.stringify(res.json()), field)
  }
  const nul = await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: { metadata: { note: 'a\u0000b' } } })
  t.equal(nul.statusCode, 400)
  t.equal(nul.json().code, 'NUL_CHARACTER')
})

t.test('get: 200 with ETag, 404 unknown, 400 malformed id', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const session = await createSession(app, { agents: ['coder'] })
  const res = await app.inject(`/v1/sessions/${session.id}`)
  t.equal(res.statusCode, 200)
  t.same(res.json(), session)
  t.equal(res.headers.etag, '"1"')
  const missing = await app.inject('/v1/sessions/00000000-0000-4000-8000-000000000000')
  t.equal(missing.statusCode, 404)
  t.match(missing.json(), { statusCode: 404, error: 'Not Found', message: 'Session not found' })
  const malformed = await app.inject('/v1/sessions/not-a-uuid')
  t.equal(malformed.statusCode, 400)
  t.match(malformed.json().message, /id/)
})

t.test('list: newest first, cursor pagination without gaps or repeats', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const created: string[] = []
  for (let i = 0; i < 7; i++) created.push((await createSession(app, { metadata: { i } })).id)
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const res = await app.inject({ url: '/v1/sessions', query: cursor ? { limit: '3', cursor } : { limit: '3' } })
    t.equal(res.statusCode, 200)
    const body = res.json() as { sessions: { id: string }[]; nextCursor: string | null }
    t.ok(body.sessions.length <= 3)
    seen.push(...body.sessions.map((s) => s.id))
    cursor = body.nextCursor
    pages += 1
  } while (cursor && pages < 10)
  t.equal(pages, 3)
  t.same(seen, [...created].reverse(), 'every session once, newest first')

  t.equal((await app.inject({ url: '/v1/sessions', query: { cursor: 'bogus' } })).statusCode, 400)
  t.equal((await app.inject({ url: '/v1/sessions', query: { limit: '500' } })).statusCode, 400)
  t.equal((await app.inject({ url: '/v1/sessions', query: { limit: '0' } })).statusCode, 400)
  t.equal((await app.inject('/v1/sessions')).json().sessions.length, 7, 'limit defaults to 50')
})

t.test('patch: If-Match optimistic locking', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const session = await createSession(app)
  const url = `/v1/sessions/${session.id}`

  const missing = await app.inject({ method: 'PATCH', url, headers: json, payload: { metadata: { a: 1 } } })
  t.equal(missing.statusCode, 428)
  t.match(missing.json().message, /If-Match/)

  const ok = await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '"1"' }, payload: { metadata: { a: 1 }, agents: ['writer'] } })
  t.equal(ok.statusCode, 200)
  t.match(ok.json(), { version: 2, metadata: { a: 1 }, agents: ['writer'] })
  t.equal(ok.headers.etag, '"2"')

  const stale = await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '"1"' }, payload: { metadata: { a: 2 } } })
  t.equal(stale.statusCode, 412)
  t.match(stale.json(), { code: 'VERSION_MISMATCH', details: { currentVersion: 2 } })

  const bare = await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '2' }, payload: { ttlSeconds: 600 } })
  t.equal(bare.statusCode, 200, 'the bare number is accepted too')
  t.equal(bare.json().version, 3)
  t.ok(Math.abs(Date.parse(bare.json().expiresAt) - Date.now() - 600_000) < 5000)

  const fresh = await app.inject(url)
  t.same(fresh.json(), bare.json(), 'reads see the update (the cached record was replaced)')

  t.equal((await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': 'abc' }, payload: { metadata: {} } })).statusCode, 400)
  t.equal((await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '"3"' }, payload: {} })).statusCode, 400, 'an empty patch says nothing')
  t.equal((await app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '"3"' }, payload: { agents: ['ghost'] } })).statusCode, 400)
})

t.test('concurrent PATCHes with the same version: exactly one wins', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const session = await createSession(app)
  const answers = await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      app.inject({ method: 'PATCH', url: `/v1/sessions/${session.id}`, headers: { ...json, 'if-match': '"1"' }, payload: { metadata: { writer: i } } })
    )
  )
  const codes = answers.map((res) => res.statusCode).sort()
  t.same(codes, [200, 412, 412, 412, 412, 412, 412, 412, 412, 412])
  const winner = answers.find((res) => res.statusCode === 200)?.json()
  const stored = (await app.inject(`/v1/sessions/${session.id}`)).json()
  t.same(stored.metadata, winner.metadata, 'the stored metadata is the winner\'s')
  t.equal(stored.version, 2)
})

t.test('delete: 204, then 410 "Session invalidated" on every call', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const session = await createSession(app)
  const url = `/v1/sessions/${session.id}`
  const del = await app.inject({ method: 'DELETE', url })
  t.equal(del.statusCode, 204)
  t.equal(del.body, '')
  const calls = [
    app.inject(url),
    app.inject({ method: 'PATCH', url, headers: { ...json, 'if-match': '"1"' }, payload: { metadata: {} } }),
    app.inject({ method: 'DELETE', url }),
    app.inject({ method: 'POST', url: `${url}/messages`, headers: json, payload: { content: 'hello?' } }),
    app.inject(`${url}/messages`)
  ]
  for (const res of await Promise.all(calls)) {
    t.equal(res.statusCode, 410)
    t.match(res.json(), { statusCode: 410, error: 'Gone', message: 'Session invalidated', code: 'SESSION_INVALIDATED' })
  }
  const listed = (await app.inject('/v1/sessions')).json().sessions
  t.match(listed, [{ id: session.id, status: 'invalidated' }], 'listed with its status')
})

t.test('expiry: 410 once expired; the cleanup job marks, records and later purges', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { SESSION_PURGE_AFTER: '60' }))
  const session = await createSession(app)
  const keep = await createSession(app)
  await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, headers: json, payload: { content: 'remember me' } })
  t.equal((await app.inject(`/v1/sessions/${session.id}`)).statusCode, 200)

  // Time passes: the session's lifetime ends.
  await app.pg.query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = $1", [session.id])
  await app.sessions.forget(session.id)
  const gone = await app.inject(`/v1/sessions/${session.id}`)
  t.equal(gone.statusCode, 410)
  t.match(gone.json(), { message: 'Session expired', code: 'SESSION_EXPIRED' })

  const first = await app.cleanup.runOnce()
  t.match(first, { ran: true, expired: 1, purged: 0 })
  const { rows: [row] } = await app.pg.query('SELECT status FROM sessions WHERE id = $1', [session.id])
  t.equal(row.status, 'expired')
  const events = (await app.inject({ url: '/v1/events', query: { type: 'session.expired' } })).json().events
  t.match(events, [{ type: 'session.expired', sessionId: session.id }])

  // The grace period ends: the session and its messages are deleted; the other session stays.
  await app.pg.query("UPDATE sessions SET expires_at = now() - interval '2 minutes' WHERE id = $1", [session.id])
  const second = await app.cleanup.runOnce()
  t.match(second, { ran: true, purged: 1 })
  const { rows: left } = await app.pg.query('SELECT count(*)::int AS n FROM chat_messages WHERE session_id = $1', [session.id])
  t.equal(left[0].n, 0)
  t.equal((await app.inject(`/v1/sessions/${session.id}`)).statusCode, 404)
  t.equal((await app.inject(`/v1/sessions/${keep.id}`)).statusCode, 200)
})

t.test('the cleanup runs on one replica at a time', async (t) => {
  const env = await testEnv(t)
  const a = await buildTestApp(t, env)
  const b = await buildTestApp(t, env)
  await a.ready()
  await b.ready()
  const [ra, rb] = await Promise.all([a.cleanup.runOnce(), b.cleanup.runOnce()])
  t.ok(ra.ran || rb.ran, 'one ran')
  // Runs are short; when they did overlap, the second skipped. Hold the lock to make it certain:
  const client = await a.pg.pool.connect()
  t.teardown(() => client.release())
  await client.query('SELECT pg_advisory_lock(7365120002)')
  t.same(await b.cleanup.runOnce(), { ran: false, expired: 0, purged: 0, events: 0, idempotencyKeys: 0 })
  await client.query('SELECT pg_advisory_unlock(7365120002)')
  t.equal((await b.cleanup.runOnce()).ran, true)
})
