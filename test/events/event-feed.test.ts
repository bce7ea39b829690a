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

t.test('an event inside another statement\'s id range, or announced again, reaches a subscriber once', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  await app.ready()
  const got: StoredEvent[] = []
  app.eventFeed.subscribe({ tenant: 'acme', matches: () => true, deliver: (event) => got.push(event) })
  const times = (sessionId: string) => got.filter((event) => event.sessionId === sessionId).length

  // A statement that inserts two events takes its ids one row at a time, so another transaction's id
  // can fall between them. Here its first row waits, after taking its id, on a lock the test holds.
  await app.pg.pool.query(`CREATE FUNCTION hold_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.data ? 'hold' THEN PERFORM pg_advisory_xact_lock(4242); END IF; RETURN NEW; END $$`)
  await app.pg.pool.query('CREATE TRIGGER hold_event BEFORE INSERT ON event_logs FOR EACH ROW EXECUTE FUNCTION hold_event()')
  const gate = await app.pg.pool.connect()
  t.teardown(() => gate.release())
  await gate.query('SELECT pg_advisory_lock(4242)')
  const [first, inside, last] = [randomUUID(), randomUUID(), randomUUID()]
  const wide = recordEvents(app.pg.pool, [
    { type: 'session.created', tenant: 'acme', sessionId: first, data: { hold: true } },
    { type: 'session.created', tenant: 'acme', sessionId: last }
  ])
  const waiting = async () => (await app.pg.pool.query("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).rowCount === 1
  t.ok(await eventually(waiting, 5_000), 'the two-event statement holds its first id')
  await recordEvents(app.pg.pool, [{ type: 'session.created', tenant: 'acme', sessionId: inside }])
  t.ok(await eventually(() => times(inside) === 1, 5_000), 'the event in between arrives')
  await gate.query('SELECT pg_advisory_unlock(4242)')
  await wide
  t.ok(await eventually(() => times(first) === 1 && times(last) === 1, 5_000), 'the wide statement\'s events arrive')
  const { rows } = await app.pg.pool.query<{ id: string, session_id: string }>('SELECT id::text, session_id FROM event_logs ORDER BY id')
  t.same(rows.map((row) => row.session_id), [first, inside, last], 'the other transaction\'s id is inside the wide statement\'s range')
  t.equal(times(inside), 1, 'and it was not delivered again with that range')

  // The same ids announced again, twice in one notification: nothing goes out twice.
  const [lo, mid, hi] = rows.map((row) => row.id)
  await app.pg.pool.query('SELECT pg_notify($1, $2)', ['smalltalk_events', `${lo}:${hi}:session.created;${mid}:${mid}:session.created`])
  const after = randomUUID()
  await recordEvents(app.pg.pool, [{ type: 'session.created', tenant: 'acme', sessionId: after }])
  t.ok(await eventually(() => times(after) === 1, 5_000), 'a later event arrives')
  t.same([first, inside, last].map(times), [1, 1, 1], 'each earlier event was delivered once')
})
