import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { typeMatcher } from '../../src/events/event-feed.js'
import { listEvents, type StoredEvent } from '../../src/events/event-log.js'
import { errorResponses } from '../sessions/schemas.js'
import { SseStream } from '../sse.js'

// A subscriber this far behind (bytes the socket has not taken) is dropped: it resumes with Last-Event-ID.
const MAX_BACKLOG_BYTES = 1_048_576
const HEARTBEAT_MS = 15_000
const RESUME_LIMIT = 10_000
const RESUME_DEDUP_MS = 30_000

const Event = Type.Object({
  id: Type.String({ description: 'Increasing; pass as `after` (or Last-Event-ID) to read on from it' }),
  type: Type.String(),
  sessionId: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  agentId: Type.Union([Type.String(), Type.Null()]),
  data: Type.Record(Type.String(), Type.Unknown()),
  createdAt: Type.String({ format: 'date-time' })
})

const EventsQuery = Type.Object({
  type: Type.Optional(Type.String({ pattern: '^(\\*|[a-z_]+(\\.([a-z_]+|\\*))?)$', description: 'An event type, or a wildcard such as `session.*`' })),
  sessionId: Type.Optional(Type.String({ format: 'uuid' })),
  after: Type.Optional(Type.String({ pattern: '^\\d{1,19}$', description: 'Only events with a larger id (the previous page\'s nextCursor)' })),
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 })
})

/** The persisted event log of the caller's tenant (plus agent events, which belong to no tenant). */
const events: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/',
    {
      schema: {
        summary: 'Read the event log, oldest first',
        tags: ['events'],
        security: [{ bearerAuth: [] }],
        querystring: EventsQuery,
        response: { 200: Type.Object({ events: Type.Array(Event), nextCursor: Type.Union([Type.String(), Type.Null()]) }), ...errorResponses(400, 401, 503) }
      }
    },
    async (request) => listEvents(fastify.pg.pool, { tenant: request.tenant, ...request.query })
  )

  const open = new Set<SseStream>()
  // Event streams never end by themselves: close them when the server closes, so the drain can end.
  fastify.addHook('preClose', async () => {
    for (const stream of open) stream.end()
  })

  fastify.get(
    '/stream',
    {
      schema: {
        summary: 'Follow the event log live (Server-Sent Events)',
        description:
          'Each event is sent as an SSE event named after its type, with the event log id as its id and the event as data. Reconnect with `Last-Event-ID` to receive what was missed (up to 10,000 events). A comment line every 15 s keeps proxies from closing an idle stream.',
        tags: ['events'],
        security: [{ bearerAuth: [] }],
        querystring: Type.Object({ type: EventsQuery.properties.type }),
        headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ pattern: '^\\d{1,19}$' })) }),
        response: { 200: { description: 'text/event-stream', type: 'string' }, ...errorResponses(400, 401, 503) }
      }
    },
    async (request, reply) => {
      const { tenant } = request
      const type = request.query.type
      const matches = typeMatcher(type)
      const sse = new SseStream(reply)
      const frame = (event: StoredEvent) => `id: ${event.id}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`
      let lastSent = request.headers['last-event-id'] ?? null
      const queued: StoredEvent[] = []
      let live = false

      // Ids the resume read sent: an event committed just before that read can also be announced to
      // the live feed after it, and must not go out twice. (Ids are not compared by order: a
      // transaction that took a smaller id may commit, and be announced, after a larger one.)
      const sentByResume = new Set<string>()
      const deliver = (event: StoredEvent) => {
        if (!live) {
          queued.push(event)
          return
        }
        if (sentByResume.delete(event.id)) return
        sse.write(frame(event))
        if (sse.backlogBytes > MAX_BACKLOG_BYTES) {
          request.log.warn('event stream client too slow: closing it (it can resume with Last-Event-ID)')
          sse.end()
        }
      }
      const unsubscribe = fastify.eventFeed.subscribe({ tenant, matches, deliver })
      open.add(sse)
      const heartbeat = setInterval(() => sse.comment('keep-alive'), HEARTBEAT_MS)
      reply.raw.once('close', () => {
        unsubscribe()
        clearInterval(heartbeat)
        open.delete(sse)
      })

      sse.write('retry: 3000\n\n')
      // Resume: what was committed after the client's last event, then everything live.
      let sent = 0
      while (lastSent !== null && sent < RESUME_LIMIT && !sse.isClosed) {
        const page = await fastify.eventFeed.backlog(tenant, lastSent, type, 200)
        for (const event of page.events) {
          await sse.send(event.type, event.id, event)
          sentByResume.add(event.id)
        }
        if (page.events.length > 0) lastSent = page.events[page.events.length - 1]?.id ?? lastSent
        sent += page.events.length
        if (!page.nextCursor) break
      }
      for (const event of queued) if (!sentByResume.delete(event.id)) sse.write(frame(event))
      queued.length = 0
      live = true
      // Announcements of what the resume read arrive within moments; after that the ids are dead weight.
      if (sentByResume.size > 0) setTimeout(() => sentByResume.clear(), RESUME_DEDUP_MS).unref()
      return reply
    }
  )
}

export default events
