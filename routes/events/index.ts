import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { typeMatcher } from '../../src/events/event-feed.js'
import { listEvents, type StoredEvent } from '../../src/events/event-log.js'
import { errorResponses } from '../sessions/schemas.js'
import { SSE_MAX_BUFFERED_BYTES, SseStream } from '../sse.js'

const HEARTBEAT_MS = 15_000
// A resume sends at most this many events, in pages written as the client takes them, then ends the
// stream: the client's reconnection (with its new Last-Event-ID) goes on from there, so no connection
// holds a long resume and nothing is skipped.
const RESUME_LIMIT = 10_000
const RESUME_PAGE = 200
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
      preHandler: fastify.limits.streamGuard,
      schema: {
        summary: 'Follow the event log live (Server-Sent Events)',
        description:
          'Each event is sent as an SSE event named after its type, with the event as data; its SSE id is the largest event log id sent so far (the event\'s own id unless it was committed out of id order). Reconnect with `Last-Event-ID` to receive what was missed, then the live events; a resume sends at most 10,000 events and then ends the stream, so that the reconnection goes on from there. A client that falls more than 1 MiB behind, or takes nothing for `SSE_DRAIN_TIMEOUT_MS`, is disconnected and resumes the same way. A comment line every 15 s keeps proxies from closing an idle stream.',
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
      let lastSent = request.headers['last-event-id']
      // The SSE id of every event is the stream's position, the largest log id sent so far: the
      // event's own id, except for one committed late (out of id order), which carries its own id in
      // its data. A client reconnects with its position and is never sent again what it had.
      let position = BigInt(lastSent ?? 0)
      // A resumed client had everything up to its Last-Event-ID: an announcement of one of those that
      // reaches this replica only now (another replica streamed it first) is not sent again.
      const resumedFrom = position
      const frame = (event: StoredEvent, data: string) => {
        if (BigInt(event.id) > position) position = BigInt(event.id)
        return `id: ${position}\nevent: ${event.type}\ndata: ${data}\n\n`
      }
      // Live events that arrive during the resume wait here, within the same bound as the stream's
      // buffer: a client that cannot take them is dropped and resumes with Last-Event-ID.
      let queued: Array<{ event: StoredEvent; data: string }> | undefined = lastSent === undefined ? undefined : []
      let queuedBytes = 0
      const tooSlow = () => {
        request.log.warn('event stream client too slow: disconnected (it can resume with Last-Event-ID)')
        sse.abort()
      }

      // Ids the resume read sent: an event committed just before that read can also be announced to
      // the live feed after it, and must not go out twice. (Ids are not compared by order: a
      // transaction that took a smaller id may commit, and be announced, after a larger one.)
      const sentByResume = new Set<string>()
      const deliver = (event: StoredEvent) => {
        if (sse.isClosed || BigInt(event.id) <= resumedFrom) return
        const data = JSON.stringify(event)
        if (queued) {
          queued.push({ event, data })
          queuedBytes += data.length
          if (queuedBytes > SSE_MAX_BUFFERED_BYTES) tooSlow()
          return
        }
        if (sentByResume.delete(event.id)) return
        sse.write(frame(event, data))
        if (sse.backlogBytes > SSE_MAX_BUFFERED_BYTES) tooSlow()
      }
      const unsubscribe = fastify.eventFeed.subscribe({ tenant, matches, deliver })
      open.add(sse)
      const heartbeat = setInterval(() => sse.comment('keep-alive'), HEARTBEAT_MS)
      reply.raw.once('close', () => {
        unsubscribe()
        clearInterval(heartbeat)
        open.delete(sse)
        queued = undefined
      })

      sse.write('retry: 3000\n\n')
      // Resume: what was committed after the client's last event, then everything live.
      let sent = 0
      while (lastSent !== undefined && !sse.isClosed) {
        if (sent >= RESUME_LIMIT) {
          sse.end()
          return reply
        }
        const page = await fastify.eventFeed.backlog(tenant, lastSent, type, RESUME_PAGE)
        for (const event of page.events) {
          await sse.writeWhenDrained(frame(event, JSON.stringify(event)))
          sentByResume.add(event.id)
        }
        sent += page.events.length
        lastSent = page.nextCursor ?? undefined
      }
      for (const { event, data } of queued ?? []) if (!sentByResume.delete(event.id)) sse.write(frame(event, data))
      queued = undefined
      // Announcements of what the resume read arrive within moments; after that the ids are dead weight.
      if (sentByResume.size > 0) setTimeout(() => sentByResume.clear(), RESUME_DEDUP_MS).unref()
      return reply
    }
  )
}

export default events
