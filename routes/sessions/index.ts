import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DomainError, assertMetadataSize } from '../../src/domain-errors.js'
import {
  CreateSessionBody,
  IfMatchHeaders,
  ListQuery,
  PatchSessionBody,
  Session,
  SessionList,
  SessionParams,
  errorResponses
} from './schemas.js'

const security = [{ bearerAuth: [] }]
const tags = ['sessions']

/** If-Match: `"3"` (the ETag as sent) or `3`; weak validators are not meaningful here. */
function parseIfMatch (value: string | undefined): number {
  if (value === undefined) {
    throw new DomainError('precondition_required', 'PATCH needs If-Match: <version> (the ETag of the session)', { code: 'IF_MATCH_REQUIRED' })
  }
  const match = /^\s*(?:W\/)?"?(\d{1,9})"?\s*$/.exec(value)
  if (!match) throw new DomainError('invalid', 'If-Match must be the session version, e.g. "3"', { code: 'INVALID_IF_MATCH' })
  return Number(match[1])
}

const sessions: FastifyPluginAsyncTypebox = async (fastify) => {
  const store = fastify.sessions
  const metadataMaxBytes = fastify.config.METADATA_MAX_BYTES

  fastify.post(
    '/',
    {
      // Every field is optional, so no body at all means "all defaults".
      preValidation: async (request) => {
        request.body ??= {}
      },
      schema: {
        summary: 'Create a session',
        description:
          'Single mode by default. A group session: `{ "agents": ["coder", "writer"], "mode": "group", "group": { "strategy": "round-robin", "maxTurns": 2 } }`, ' +
          '`{ "agents": ["assistant", "coder", "writer"], "group": { "strategy": "expertise", "maxTurns": 4, "terminationKeyword": "DONE" } }`, ' +
          '`{ "agents": ["coder", "writer"], "group": { "strategy": "manager", "manager": "assistant", "maxTurns": 5 } }`, or a preset: `{ "preset": "review-panel" }`. ' +
          'A group has 2 to 10 distinct agents; each message posted to it starts a round (see POST /v1/sessions/{id}/messages).',
        tags,
        security,
        body: CreateSessionBody,
        response: { 201: Session, ...errorResponses(400, 401, 413, 415, 503) }
      }
    },
    async (request, reply) => {
      assertMetadataSize('metadata', request.body.metadata, metadataMaxBytes)
      const session = await store.create(request.tenant, request.body)
      return reply.code(201).header('etag', `"${session.version}"`).header('location', `/v1/sessions/${session.id}`).send(session)
    }
  )

  fastify.get(
    '/',
    {
      schema: {
        summary: 'List your sessions, newest first',
        tags,
        security,
        querystring: ListQuery,
        response: { 200: SessionList, ...errorResponses(400, 401, 503) }
      }
    },
    async (request) => store.list(request.tenant, request.query.limit, request.query.cursor)
  )

  fastify.get(
    '/:id',
    {
      schema: {
        summary: 'Get a session',
        tags,
        security,
        params: SessionParams,
        response: { 200: Session, ...errorResponses(400, 401, 404, 410, 503) }
      }
    },
    async (request, reply) => {
      const { tenant: _tenant, lastSeq: _lastSeq, ...session } = await store.getActive(request.tenant, request.params.id)
      return reply.header('etag', `"${session.version}"`).send(session)
    }
  )

  fastify.patch(
    '/:id',
    {
      schema: {
        summary: 'Update a session (optimistic locking with If-Match)',
        tags,
        security,
        params: SessionParams,
        headers: IfMatchHeaders,
        body: PatchSessionBody,
        response: { 200: Session, ...errorResponses(400, 401, 404, 410, 412, 428, 503) }
      }
    },
    async (request, reply) => {
      const version = parseIfMatch(request.headers['if-match'])
      assertMetadataSize('metadata', request.body.metadata, metadataMaxBytes)
      const session = await store.update(request.tenant, request.params.id, version, request.body)
      return reply.header('etag', `"${session.version}"`).send(session)
    }
  )

  fastify.delete(
    '/:id',
    {
      schema: {
        summary: 'Delete (invalidate) a session: every later call on it answers 410',
        tags,
        security,
        params: SessionParams,
        response: { 204: { type: 'null', description: 'Deleted' }, ...errorResponses(400, 401, 404, 410, 503) }
      }
    },
    async (request, reply) => {
      await store.invalidate(request.tenant, request.params.id)
      return reply.code(204).send(null)
    }
  )
}

export default sessions
