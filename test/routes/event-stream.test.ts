import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { buildTestApp, eventually, testEnv } from '../helper.js'
import { EVENTS_CHANNEL, recordEvents } from '../../src/events/event-log.js'
import { OPEN_TENANT } from '../../plugins/auth.js'
import { SSE_MAX_BUFFERED_BYTES } from '../../routes/sse.js'
import { dechunk, stalledClient, watchStreamedResponses } from '../support/stalled-client.js'

const json = { 'content-type': 'application/json' }

/** Follows /v1/events/stream as a browser's EventSource would, collecting parsed events. */
async function follow (t: Test, app: FastifyInstance, query = '', headers: Record<string, string> = {}) {
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : 0
  const controller = new AbortController()
  const response = await fetch(`http://127.0.0.1:${port}/v1/events/stream${query}`, { headers, signal: controller.signal })
  const events: EventSourceMessage[] = []
  const parser = createParser({ onEvent: (event) => events.push(event) })
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  const pump = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return
        parser.feed(decoder.decode(value, { stream: true }))
      }
    } catch {
      // aborted by the test
    }
  })()
  t.teardown(async () => {
    controller.abort()
    await pump
  })
  return { response, events, stop: () => controller.abort(), ended: pump }
}

async function listening (t: Test, env: Record<string, string | undefined>, prepare: (app: FastifyInstance) => void = () => undefined) {
  const app = await buildTestApp(t, env)
  prepare(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
}

const portOf = (app: FastifyInstance) => (app.server.address() as { port: number }).port

/** `count` events of the open tenant, about `padBytes` each, committed at once; their ids in order. */
async function logEvents (app: FastifyInstance, count: number, padBytes: number): Promise<string[]> {
  const { rows } = await app.pg.pool.query<{ id: string }>(
    `INSERT INTO event_logs (type, tenant, data)
     SELECT 'session.updated', $1, jsonb_build_object('n', g, 'pad', repeat('x', $3)) FROM generate_series(1, $2) g
     RETURNING id::text`,
    [OPEN_TENANT, count, padBytes]
  )
  return rows.map((row) => row.id).sort((a, b) => Number(a) - Number(b))
}

const resumeRequest = (lastEventId: string) => `GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: ${lastEventId}\r\n\r\n`

function parseEvents (text: string): EventSourceMessage[] {
  const events: EventSourceMessage[] = []
  createParser({ onEvent: (event) => events.push(event) }).feed(text)
  return events
}

t.test('live events, filtered by type, as SSE with the log ids', async (t) => {
  const app = await listening(t, await testEnv(t))
  const stream = await follow(t, app, '?type=session.*')
  t.equal(stream.response.status, 200)
  t.match(stream.response.headers.get('content-type'), /text\/event-stream/)

  const session = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, headers: json, payload: { content: 'hi' } })
  await app.inject({ method: 'DELETE', url: `/v1/sessions/${session.id}` })

  t.ok(await eventually(() => stream.events.length >= 2, 5000), 'events arrive live')
  t.same(stream.events.map((e) => e.event), ['session.created', 'session.invalidated'], 'only session.* events')
  const logged = (await app.inject({ url: '/v1/events', query: { type: 'session.*' } })).json().events
  t.same(stream.events.map((e) => e.id), logged.map((e: { id: string }) => e.id), 'ids are the event log ids')
  t.same(JSON.parse(stream.events[0]?.data ?? '{}'), logged[0])
})

t.test('resume with Last-Event-ID: what was missed, then live, nothing twice', async (t) => {
  const app = await listening(t, await testEnv(t))
  const ids: string[] = []
  for (let i = 0; i < 3; i++) await app.inject({ method: 'POST', url: '/v1/sessions' })
  for (const event of (await app.inject('/v1/events')).json().events) ids.push(event.id)
  t.equal(ids.length, 3)

  const stream = await follow(t, app, '', { 'last-event-id': ids[0] as string })
  await app.inject({ method: 'POST', url: '/v1/sessions' })
  t.ok(await eventually(() => stream.events.length >= 3, 5000))
  const received = stream.events.map((e) => e.id)
  t.same(received.slice(0, 2), ids.slice(1), 'the two missed events first')
  t.equal(new Set(received).size, received.length, 'no duplicates')
  t.equal(stream.events[2]?.event, 'session.created', 'then the live one')
})

t.test('an event both read by the resume and announced after it goes out once', async (t) => {
  const app = await listening(t, await testEnv(t))
  await app.inject({ method: 'POST', url: '/v1/sessions' })
  const [first] = (await app.inject('/v1/events')).json().events
  // Committed without an announcement yet: the resume reads it, and the announcement comes after,
  // as when a commit lands just before the resume's read and its NOTIFY just after.
  const { rows } = await app.pg.pool.query<{ id: string }>(
    "INSERT INTO event_logs (type, tenant, data) VALUES ('session.updated', $1, '{}') RETURNING id::text",
    [OPEN_TENANT]
  )
  const late = rows[0]?.id as string
  const stream = await follow(t, app, '', { 'last-event-id': first.id })
  t.ok(await eventually(() => stream.events.length >= 1, 5000), 'the resume sent the committed event')
  await app.pg.pool.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, `${late}:${late}:session.updated`])
  const live = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => stream.events.some((e) => JSON.parse(e.data).sessionId === live.id), 5000), 'the next live event arrives')
  t.same(stream.events.map((e) => e.id).filter((id) => id === late), [late], 'the resumed event went out once')
})

t.test('an event the client already had, announced to this replica only after the client reconnects, is not sent again', async (t) => {
  const app = await listening(t, await testEnv(t))
  // Streamed by another replica, whose client then reconnects here before this replica heard of it.
  const { rows } = await app.pg.pool.query<{ id: string }>(
    "INSERT INTO event_logs (type, tenant, data) VALUES ('session.updated', $1, '{}') RETURNING id::text",
    [OPEN_TENANT]
  )
  const had = rows[0]?.id as string
  const stream = await follow(t, app, '', { 'last-event-id': had })
  await app.pg.pool.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, `${had}:${had}:session.updated`])
  const live = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => stream.events.some((e) => JSON.parse(e.data).sessionId === live.id), 5000), 'the next live event arrives')
  t.same(stream.events.map((e) => JSON.parse(e.data).id), [stream.events.at(-1)?.id], 'only it: not the event the client had')
})

t.test('an event committed out of id order: the client that reconnects after it gets nothing twice', async (t) => {
  const app = await listening(t, await testEnv(t))
  const stream = await follow(t, app)
  const slow = await app.pg.pool.connect()
  t.teardown(() => slow.release())
  await slow.query('BEGIN')
  await recordEvents(slow, [{ type: 'session.created', tenant: OPEN_TENANT, sessionId: randomUUID() }])
  // A later transaction takes a larger id and commits first; the smaller id arrives after it.
  const larger = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => stream.events.length === 1, 5000), 'the larger id arrives')
  await slow.query('COMMIT')
  t.ok(await eventually(() => stream.events.length === 2, 5000), 'then the smaller one')
  const [second, first] = stream.events.map((event) => JSON.parse(event.data))
  t.equal(second.sessionId, larger.id)
  t.ok(BigInt(first.id) < BigInt(second.id), 'the late event has the smaller id')
  stream.stop()

  // The client reconnects with the id of the last event it received, as EventSource does.
  const again = await follow(t, app, '', { 'last-event-id': stream.events.at(-1)?.id as string })
  const next = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => again.events.some((event) => JSON.parse(event.data).sessionId === next.id), 5000), 'the next live event arrives')
  t.same(again.events.map((event) => JSON.parse(event.data).sessionId), [next.id], 'and nothing it already had')
})

t.test('a tenant follows only its own events', async (t) => {
  const app = await listening(t, await testEnv(t, { API_KEYS: 'ka:alpha,kb:beta' }))
  const unauthenticated = await fetch(`http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1/events/stream`)
  t.equal(unauthenticated.status, 401)
  const alpha = await follow(t, app, '', { authorization: 'Bearer ka' })
  await app.inject({ method: 'POST', url: '/v1/sessions', headers: { authorization: 'Bearer kb' } })
  const mine = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: { authorization: 'Bearer ka' } })).json()
  t.ok(await eventually(() => alpha.events.length >= 1, 5000))
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(alpha.events.map((e) => JSON.parse(e.data).sessionId), [mine.id], 'beta\'s event never reached alpha')
})

t.test('events committed on another replica reach this one (LISTEN/NOTIFY)', async (t) => {
  const env = await testEnv(t)
  const a = await listening(t, env)
  const b = await buildTestApp(t, env)
  const stream = await follow(t, a)
  const session = (await b.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => stream.events.some((e) => JSON.parse(e.data).sessionId === session.id), 5000))
})

t.test('closing the server ends open event streams', async (t) => {
  const app = await listening(t, await testEnv(t))
  const stream = await follow(t, app)
  const started = Date.now()
  await app.close()
  const ended = await Promise.race([stream.ended.then(() => true), new Promise((resolve) => setTimeout(() => resolve(false), 3000))])
  t.ok(Date.now() - started < 3000, `closed in ${Date.now() - started} ms`)
  t.equal(ended, true, 'the client saw its stream end')
})

t.test('a resume to a client that stops reading: at most the buffer bound held, disconnected after the drain timeout, resumable', async (t) => {
  let watched: ReturnType<typeof watchStreamedResponses> = []
  const app = await listening(t, await testEnv(t, { SSE_DRAIN_TIMEOUT_MS: '300' }), (app) => {
    watched = watchStreamedResponses(app)
  })
  // Far more than the kernel's socket buffers and the stream's bound together.
  const ids = await logEvents(app, 800, 10_000)
  const client = await stalledClient(portOf(app), resumeRequest('0'))
  t.teardown(() => client.socket.destroy())
  t.ok(await eventually(() => watched.length === 1, 5000), 'the stream is open')
  const response = watched[0]!
  let most = 0
  const sampler = setInterval(() => {
    most = Math.max(most, response.bufferedBytes())
  }, 10)
  t.teardown(() => clearInterval(sampler))
  const closed = await eventually(() => response.closed, 10_000, 20)
  t.ok(closed, 'the server closed the stream of the client that stopped reading')
  clearInterval(sampler)
  if (!closed) return
  t.ok(most > 0, `output was waiting for the client (${most} bytes at most)`)
  t.ok(most <= SSE_MAX_BUFFERED_BYTES + 131_072, `the server held at most the bound for it (${most} bytes, bound ${SSE_MAX_BUFFERED_BYTES})`)

  // What reached the client before the cut, then a resume from its last complete event.
  const received = parseEvents(dechunk(await client.readAll())).map((event) => event.id)
  t.ok(received.length > 0 && received.length < ids.length, `the client got part of the log (${received.length} of ${ids.length})`)
  t.same(received, ids.slice(0, received.length), 'in order, from the first')
  const rest = await follow(t, app, '', { 'last-event-id': received.at(-1) as string })
  t.ok(await eventually(() => rest.events.length >= ids.length - received.length, 10_000), 'the resume sends the rest')
  t.same([...received, ...rest.events.map((event) => event.id)], ids, 'everything, once, in order')
})

t.test('live events that a stalled resume cannot take: the client is disconnected, not buffered for', async (t) => {
  let watched: ReturnType<typeof watchStreamedResponses> = []
  const app = await listening(t, await testEnv(t, { SSE_DRAIN_TIMEOUT_MS: '600000' }), (app) => {
    watched = watchStreamedResponses(app)
  })
  await logEvents(app, 800, 10_000)
  const client = await stalledClient(portOf(app), resumeRequest('0'))
  t.teardown(() => client.socket.destroy())
  t.ok(await eventually(() => watched.length === 1, 5000), 'the stream is open')
  const response = watched[0]!
  t.ok(await eventually(() => response.raw.socket !== null && response.raw.socket.writableLength > 0, 10_000, 20), 'the resume waits for the client')

  // 2 MB of live events while the resume waits: more than the bound.
  for (let i = 0; i < 20; i++) {
    await recordEvents(app.pg.pool, Array.from({ length: 10 }, () => ({ type: 'session.updated' as const, tenant: OPEN_TENANT, data: { pad: 'y'.repeat(10_000) } })))
  }
  t.ok(await eventually(() => response.closed, 10_000, 20), 'the client was disconnected (the drain timeout is far off)')
})

t.test('a resume sends at most 10,000 events, then ends the stream; the reconnection goes on from there', async (t) => {
  const app = await listening(t, await testEnv(t))
  const ids = await logEvents(app, 10_050, 1)
  const first = await follow(t, app, '', { 'last-event-id': '0' })
  let ended = false
  void first.ended.then(() => {
    ended = true
  })
  t.ok(await eventually(() => ended, 20_000), 'the first connection ends')
  t.equal(first.events.length, 10_000, 'after 10,000 events')
  t.same(first.events.map((event) => event.id), ids.slice(0, 10_000))
  const second = await follow(t, app, '', { 'last-event-id': first.events.at(-1)?.id as string })
  t.ok(await eventually(() => second.events.length >= 50, 5000))
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
  t.ok(await eventually(() => second.events.some((event) => JSON.parse(event.data).sessionId === session.id), 5000), 'then the live events')
  t.same(second.events.slice(0, 50).map((event) => event.id), ids.slice(10_000), 'the remaining 50, then live')
})
