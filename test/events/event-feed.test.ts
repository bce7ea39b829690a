import { randomUUID } from 'node:crypto'
import t from 'tap'
import type { StoredEvent } from '../../src/events/event-log.js'
import { recordEvents } from '../../src/events/event-log.js'
import { buildTestApp, eventually, testEnv } from '../helper.js'

// The live event feed on the real PostgreSQL: NOTIFY announces each committed transaction's id range
// and types, and the feed reads exactly those rows, so events committed out of id order all arrive.

t.test('events committed out of id order all reach a subscriber', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const got: StoredEvent[] = []
  app.eventFeed.subscribe({ tenant: 'acme', matches: () => true, deliver: (event) => got.push(event) })

  const [first, second] = [randomUUID(), randomUUID()]
  const slow = await app.pg.pool.connect()
  t.teardown(() => slow.release())
  await slow.query('BEGIN')
  await recordEvents(slow, [{ type: 'session.created', tenant: 'acme', sessionId: first }])
  // A later transaction takes a larger id and commits first.
  await recordEvents(app.pg.pool, [{ type: 'session.created', tenant: 'acme', sessionId: second }])
  t.ok(await eventually(() => got.length === 1, 5_000), 'the committed event arrives')
  t.equal(got[0]?.sessionId, second)
  await slow.query('COMMIT')
  t.ok(await eventually(() => got.length === 2, 5_000), 'the event with the smaller id arrives when it commits')
  t.equal(got[1]?.sessionId, first)
  t.ok(BigInt(got[1]!.id) < BigInt(got[0]!.id), 'its id is smaller: a reader of "ids after the last one" would have lost it')
})

t.test('a subscriber gets only its types and tenant; a rolled-back event never arrives', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const health: StoredEvent[] = []
  const acme: StoredEvent[] = []
  app.eventFeed.subscribe({ tenant: 'ops', matches: (type) => type === 'agent.status_changed', deliver: (event) => health.push(event) })
  app.eventFeed.subscribe({ tenant: 'acme', matches: (type) => type.startsWith('session.'), deliver: (event) => acme.push(event) })

  await recordEvents(app.pg.pool, [
    { type: 'session.created', tenant: 'acme', sessionId: randomUUID() },
    { type: 'session.created', tenant: 'other', sessionId: randomUUID() }
  ])
  const aborted = await app.pg.pool.connect()
  await aborted.query('BEGIN')
  await recordEvents(aborted, [{ type: 'session.expired', tenant: 'acme', sessionId: randomUUID() }])
  await aborted.query('ROLLBACK')
  aborted.release()
  await recordEvents(app.pg.pool, [{ type: 'agent.status_changed', tenant: null, agentId: 'coder', data: { from: 'healthy', to: 'down' } }])

  t.ok(await eventually(() => health.length === 1 && acme.length === 1, 5_000))
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(
    acme.map((event) => event.type),
    ['session.created'],
    "acme sees its own session event only: not the other tenant's, not the rolled-back one"
  )
  t.match(health, [{ type: 'agent.status_changed', agentId: 'coder', data: { to: 'down' } }], 'tenant-less events reach every tenant that asks for them')
})

t.test('announcements within a few milliseconds travel in one NOTIFY and all arrive', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const got: StoredEvent[] = []
  app.eventFeed.subscribe({ tenant: 'acme', matches: () => true, deliver: (event) => got.push(event) })
  const payloads: string[] = []
  const listener = await app.pg.pool.connect()
  t.teardown(() => listener.release())
  listener.on('notification', (message) => payloads.push(message.payload ?? ''))
  await listener.query('LISTEN smalltalk_events')

  const ids = Array.from({ length: 20 }, () => randomUUID())
  await Promise.all(ids.map((sessionId) => recordEvents(app.pg.pool, [{ type: 'session.created', tenant: 'acme', sessionId }])))
  t.ok(await eventually(() => got.length === 20, 5_000), `all 20 events arrive (${got.length})`)
  t.same(new Set(got.map((event) => event.sessionId)), new Set(ids))
  const entries = payloads.flatMap((payload) => payload.split(';'))
  t.equal(entries.length, 20, 'one entry per committed statement')
  t.ok(payloads.length < 20, `batched into ${payloads.length} notifications`)
  await listener.query('UNLISTEN *')
})

t.test('events committed just before the app closes are still announced', async (t) => {
  const env = await testEnv(t)
  const app = await buildTestApp(t, env)
  await app.ready()
  const pg = (await import('pg')).default
  const listener = new pg.Client({ connectionString: env.DATABASE_URL })
  await listener.connect()
  t.teardown(() => listener.end())
  const payloads: string[] = []
  listener.on('notification', (message) => payloads.push(message.payload ?? ''))
  await listener.query('LISTEN smalltalk_events')

  const session = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  await app.close()
  t.ok(await eventually(() => payloads.length > 0, 3_000), 'announced before the pool ended')
  const { rows } = await listener.query<{ id: string }>('SELECT id::text FROM event_logs WHERE session_id = $1', [session.id])
  t.match(payloads.join(';'), new RegExp(`(^|;)${rows[0]?.id}:${rows[0]?.id}:session.created`), 'the session.created event of the last request')
})
