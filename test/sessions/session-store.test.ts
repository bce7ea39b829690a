import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Registry } from 'prom-client'
import { MemoryCache } from '../../src/cache/memory-cache.js'
import { ConversationMetrics } from '../../src/metrics/conversation-metrics.js'
import { SessionStore } from '../../src/sessions/session-store.js'
import { REDIS_URL, buildTestApp, eventually, redisUnavailable, testEnv } from '../helper.js'
import { freezableProxy } from '../support/freezable-proxy.js'

// The session store on the real PostgreSQL and Redis: what every replica reads after a change whose
// cache write did not get through.

t.test('Redis hangs while a DELETE commits: no replica is served the old record then or afterwards', { skip: redisUnavailable() }, async (t) => {
  // Two replicas whose connections to Redis hang together (a stalled Redis), still open.
  const proxy = await freezableProxy(t, REDIS_URL as string)
  const env = await testEnv(t, { REDIS_URL: proxy.url, REDIS_COMMAND_TIMEOUT_MS: '200' })
  const [writer, reader] = [await buildTestApp(t, env), await buildTestApp(t, env)]
  await Promise.all([writer.ready(), reader.ready()])
  t.ok(await eventually(() => writer.cache.state() === 'ok' && reader.cache.state() === 'ok', 5000))
  const session = (await writer.inject({ method: 'POST', url: '/v1/sessions' })).json()
  const url = `/v1/sessions/${session.id}`
  t.equal((await reader.inject(url)).statusCode, 200, 'the active record, cached')

  // A read times out (the writer then bypasses the cache for a while), and the DELETE commits in
  // PostgreSQL and answers.
  proxy.freeze()
  t.equal((await writer.inject(url)).statusCode, 200, 'read from PostgreSQL after the cache timed out')
  t.equal((await writer.inject({ method: 'DELETE', url })).statusCode, 204)
  t.equal((await reader.inject(url)).statusCode, 410, 'while Redis hangs, the other replica reads PostgreSQL')
  proxy.thaw()

  // Both bypass the cache until their next successful probe; then they read it again.
  await Promise.all([writer.cache.ping(1000), reader.cache.ping(1000)])
  t.ok(writer.cache.state() === 'ok' && reader.cache.state() === 'ok', 'both use the cache again')
  const afterDelete = await reader.inject(url)
  t.equal(afterDelete.statusCode, 410, 'the other replica reads the session as invalidated')
  t.match(afterDelete.json(), { code: 'SESSION_INVALIDATED' })
  t.equal((await writer.inject(url)).statusCode, 410, 'and so does the writer')
})

/** A store on the app's database whose clock is `skewMs` away from the database's, and moves only when told. */
async function skewedStore (t: Test, skewMs: number): Promise<{ app: FastifyInstance; store: SessionStore; advance(ms: number): void }> {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const { rows } = await app.pg.pool.query<{ now: Date }>('SELECT now()')
  let now = (rows[0] as { now: Date }).now.getTime() + skewMs
  const store = new SessionStore({
    pool: app.pg.pool,
    cache: new MemoryCache(100, () => now),
    metrics: new ConversationMetrics(new Registry(), async () => 0, 1000),
    defaultTtlSeconds: 3600,
    unknownAgents: () => [],
    defaultAgents: () => ['assistant'],
    now: () => now
  })
  return { app, store, advance: (ms) => { now += ms } }
}

for (const [name, skewMs] of [['an hour ahead of', 3_600_000], ['an hour behind', -3_600_000]] as const) {
  t.test(`a clock ${name} the database's: sessions live exactly their TTL by that clock`, async (t) => {
    const { store, advance } = await skewedStore(t, skewMs)
    const session = await store.create('acme', { ttlSeconds: 1800 })
    const deleted = await store.create('acme', { ttlSeconds: 1800 })
    t.equal((await store.getActive('acme', session.id)).status, 'active', 'active when created')
    t.equal(Date.parse(session.expiresAt as string) - store.now(), 1_800_000, 'expires 30 minutes after now, by the same clock')
    advance(1_799_000)
    t.equal((await store.getActive('acme', session.id)).status, 'active', 'active a second before its expiry')
    t.equal(await store.countActive(), 2)
    const updated = await store.update('acme', session.id, 1, { metadata: { touched: true } })
    t.equal(updated.version, 2, 'and it can be changed')
    await store.invalidate('acme', deleted.id)

    advance(2000)
    await t.rejects(store.getActive('acme', session.id), { kind: 'gone', message: 'Session expired' }, 'expired a second after')
    await t.rejects(store.update('acme', session.id, 2, { metadata: {} }), { kind: 'gone', message: 'Session expired' }, 'a change is refused as expired, not as a stale version')
    await t.rejects(store.invalidate('acme', session.id), { kind: 'gone', message: 'Session expired' }, 'a DELETE is refused as expired')
    await t.rejects(store.invalidate('acme', deleted.id), { kind: 'gone', message: 'Session invalidated' })
    t.equal(await store.countActive(), 0, 'counted as ended')
    t.same((await store.list('acme', 10)).sessions.map((s) => s.status).sort(), ['expired', 'invalidated'])
  })
}
