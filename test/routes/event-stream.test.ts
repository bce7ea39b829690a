import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { buildTestApp, eventually, testEnv } from '../helper.js'
import { EVENTS_CHANNEL } from '../../src/events/event-log.js'
import { OPEN_TENANT } from '../../plugins/auth.js'

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

async function listening (t: Test, env: Record<string, string | undefined>) {
  const app = await buildTestApp(t, env)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
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
