import t from 'tap'
import { Registry } from 'prom-client'
import { IdempotencyKeys } from '../../src/messages/idempotency.js'
import { ConversationMetrics } from '../../src/metrics/conversation-metrics.js'
import { runCleanup, type CleanupOptions } from '../../src/sessions/cleanup.js'
import { REDIS_URL, buildTestApp, redisUnavailable, testEnv } from '../helper.js'

// The cleanup job on the real PostgreSQL and Redis, with small batches so that a few hundred
// sessions take several of them.

t.test('ended sessions are purged in bounded batches, and none of their cache entries remain', { skip: redisUnavailable() }, async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL }))
  await app.ready()
  const options: CleanupOptions = {
    pool: app.pg.pool,
    sessions: app.sessions,
    history: app.history,
    idempotency: new IdempotencyKeys(app.pg.pool, 1000),
    metrics: new ConversationMetrics(new Registry(), async () => 0, 1000),
    log: app.log,
    purgeAfterSeconds: 60,
    eventRetentionDays: 30,
    batchSize: 50,
    maxBatches: 2
  }
  const kept = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  const ids: string[] = []
  for (let i = 0; i < 130; i++) ids.push((await app.inject({ method: 'POST', url: '/v1/sessions' })).json().id)
  // Some with a history in the cache too.
  for (const id of ids.slice(0, 10)) await app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: { content: 'hello' } })
  for (const id of ids) await app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })
  const cached = async (id: string) => (await app.cache.getRanked(`session:${id}`)) !== undefined || (await app.cache.readSeqList(`history:${id}`, 2, 0, 10)) !== undefined
  t.ok((await Promise.all(ids.map(cached))).every(Boolean), 'every ended session is in the cache')

  // Their grace period is over.
  await app.pg.pool.query("UPDATE sessions SET invalidated_at = now() - interval '2 minutes' WHERE id = ANY($1)", [ids])
  t.match(await runCleanup(options), { ran: true, purged: 100 }, 'a run purges at most maxBatches batches')
  t.match(await runCleanup(options), { ran: true, purged: 30 }, 'the next run the rest')
  t.match(await runCleanup(options), { ran: true, purged: 0 })

  const { rows } = await app.pg.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM sessions WHERE id = ANY($1)', [ids])
  t.equal(rows[0]?.n, 0, 'the rows are gone')
  t.same((await Promise.all(ids.map(cached))).filter(Boolean), [], 'and so are their cache entries')
  for (const id of ids.slice(0, 3)) t.equal((await app.inject(`/v1/sessions/${id}`)).statusCode, 404)
  t.equal((await app.inject(`/v1/sessions/${kept.id}`)).statusCode, 200, 'the active session stays')
})

t.test('sessions past their expiry are marked expired in bounded batches, with their events', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const options: CleanupOptions = {
    pool: app.pg.pool,
    sessions: app.sessions,
    history: app.history,
    idempotency: new IdempotencyKeys(app.pg.pool, 1000),
    metrics: new ConversationMetrics(new Registry(), async () => 0, 1000),
    log: app.log,
    purgeAfterSeconds: 3600,
    eventRetentionDays: 30,
    batchSize: 20,
    maxBatches: 2
  }
  const ids: string[] = []
  for (let i = 0; i < 50; i++) ids.push((await app.inject({ method: 'POST', url: '/v1/sessions' })).json().id)
  await app.pg.pool.query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE id = ANY($1)", [ids])
  t.match(await runCleanup(options), { ran: true, expired: 40 })
  t.match(await runCleanup(options), { ran: true, expired: 10 })
  const { rows } = await app.pg.pool.query<{ n: number }>("SELECT count(*)::int AS n FROM event_logs WHERE type = 'session.expired' AND session_id = ANY($1)", [ids])
  t.equal(rows[0]?.n, 50, 'one session.expired event each')
  for (const id of ids.slice(0, 3)) t.match((await app.inject(`/v1/sessions/${id}`)).json(), { code: 'SESSION_EXPIRED' })
})
