import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { listEvents } from '../../src/events/event-log.js'
import { errorResponses } from '../sessions/schemas.js'

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
}

export default events
