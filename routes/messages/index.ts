import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import { DomainError } from '../../src/domain-errors.js'
import { failureBody, streamErrorBody } from '../../src/errors.js'
import type { PostResult, ReplySink, RoundResult } from '../../src/messages/conversation.js'
import type { StoredOutcome } from '../../src/messages/idempotency.js'
import type { Message } from '../../src/messages/message-store.js'
import { SseStream } from '../sse.js'
import { Metadata, MessageList, MessagesQuery, PostMessageHeaders, PostReply, SessionParams, errorResponses } from '../sessions/schemas.js'

const security = [{ bearerAuth: [] }]
const tags = ['messages']

type Negotiated = 'json' | 'sse'

/** `Accept: text/event-stream` streams the reply; JSON otherwise (and for a missing or wildcard Accept). */
function negotiate (accept: string | undefined): Negotiated {
  if (!accept) return 'json'
  const types = accept.split(',').map((part) => part.split(';')[0]?.trim().toLowerCase())
  if (types.includes('text/event-stream')) return 'sse'
  if (types.some((type) => type === 'application/json' || type === '*/*' || type === 'application/*')) return 'json'
  throw new DomainError('not_acceptable', 'Accept must be application/json or text/event-stream', { code: 'NOT_ACCEPTABLE' })
}

const messages: FastifyPluginAsyncTypebox = async (fastify) => {
  const maxChars = fastify.config.MAX_MESSAGE_CHARS
  const PostMessageBody = Type.Object(
    {
      content: Type.String({ minLength: 1, maxLength: maxChars, description: `The user message, 1 to ${maxChars} characters, stored exactly as sent` }),
      agent: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'The agent to answer; default: chosen by expertise among the session\'s agents' })),
      metadata: Type.Optional(Metadata)
    },
    { additionalProperties: false }
  )

  fastify.post(
    '/:id/messages',
    {
      preHandler: fastify.limits.messageGuard,
      schema: {
        summary: 'Post a message and get the reply, as JSON or streamed as Server-Sent Events',
        description:
          'With `Accept: text/event-stream` the answer is an SSE stream of events `message` (the stored user message), `agent` (who answers and why), `delta` (`{ text }`, many), then `done` (the stored reply) or `error` (an error body). Every event has an id.\n\nWhen the agent has tools (DESIGN section 14) and its model calls them, each call is an SSE `tool_call` (`{ callId, tool, server, arguments }`) and, once its result is stored as a `role: "tool"` message, a `tool_result` (`{ callId, isError, content }`), before the deltas of the model step that follows; the JSON answer lists them in `toolCalls`.\n\nOne reply at a time per session: a post while a reply runs is a 409 `SESSION_BUSY` with `Retry-After`, stores nothing and calls no provider. The reply is stored only while the session is active and this request still holds its lease: a session deleted or expired meanwhile gives 410 (SSE: an `error` event, no `done`), a lost lease 409 `REPLY_LEASE_LOST`; the user message stays stored.\n\nIn a group session (mode `group`) the message starts a round: JSON `{ message, replies, round: { turns, stop } }`; SSE `message`, then per turn `agent` (with `turn`), `delta`..., `turn` (the stored reply of that turn), and `done` with `{ replies, round }`. A failed turn is an `error` event with its `turn`, and the round goes on.',
        tags,
        security,
        params: SessionParams,
        headers: PostMessageHeaders,
        body: PostMessageBody,
        response: {
          201: PostReply,
          200: { description: 'text/event-stream (SSE), when asked for with Accept', type: 'string' },
          ...errorResponses(400, 401, 404, 406, 409, 410, 413, 415, 502, 503, 504)
        }
      }
    },
    async (request, reply) => {
      const mode = negotiate(request.headers.accept)
      const key = request.headers['idempotency-key']
      if (mode === 'json') {
        const outcome = await fastify.conversations.post(request.tenant, request.params.id, request.body, NO_SINK, key)
        if (!outcome.replayed) return reply.code(201).send(outcome.result)
        reply.header('idempotent-replayed', 'true')
        if (!outcome.outcome.ok) throw DomainError.from(outcome.outcome.failure)
        return reply.code(201).send(outcome.outcome.result as PostResult)
      }

      // Event ids: "<seq of the user message>-<n>", unique within the session.
      let seq = 0
      let counter = 0
      const sse = new SseStream(reply)
      const send = (event: string, data: unknown) => sse.send(event, `${seq}-${++counter}`, data)
      const sink: ReplySink = {
        live: true,
        message: (message: Message) => {
          seq = message.seq
          return send('message', message)
        },
        agent: (selection) => send('agent', selection),
        delta: (text) => send('delta', { text }),
        turn: (message) => send('turn', message),
        toolCall: (call) => send('tool_call', call),
        toolResult: (result) => send('tool_result', result),
        turnFailed: (turn, failure) => send('error', { ...streamErrorBody(failure), turn })
      }
      try {
        const outcome = await fastify.conversations.post(request.tenant, request.params.id, request.body, sink, key)
        if (outcome.replayed) {
          reply.header('idempotent-replayed', 'true')
          await replay(send, outcome.outcome, (s) => (seq = s))
        } else if ('replies' in outcome.result) {
          await send('done', { replies: outcome.result.replies, round: outcome.result.round })
        } else {
          await send('done', outcome.result.reply)
        }
      } catch (err) {
        if (!sse.isOpen) throw err
        if (!(err instanceof DomainError)) request.log.error({ err }, 'reply failed mid-stream')
        await send('error', streamErrorBody(err))
      }
      sse.end()
      return reply
    }
  )

  fastify.get(
    '/:id/messages',
    {
      schema: {
        summary: 'Read a session\'s messages in seq order',
        tags,
        security,
        params: SessionParams,
        querystring: MessagesQuery,
        response: { 200: MessageList, ...errorResponses(400, 401, 404, 410, 503) }
      }
    },
    async (request, reply) => {
      const { after, limit } = request.query
      // The body comes whole from the history (JSON kept as cached, or serialised once from the
      // rows), not through the response serialiser, which would parse and re-serialise every
      // message. MessageList above still documents the shape.
      const body = await fastify.history.page(fastify.sessions, fastify.pg.pool, request.tenant, request.params.id, after, limit)
      return (reply as FastifyReply).header('content-type', 'application/json; charset=utf-8').send(body)
    }
  )
}

/** The JSON route needs no streaming: the result comes back whole. */
const NO_SINK: ReplySink = { live: false, message: () => undefined, agent: () => undefined, delta: () => undefined }

/** An idempotent retry over SSE: the first outcome, replayed as the same sequence of events. */
async function replay (send: (event: string, data: unknown) => Promise<void>, outcome: StoredOutcome, setSeq: (seq: number) => void): Promise<void> {
  if (!outcome.ok) {
    await send('error', failureBody(outcome.failure))
    return
  }
  const result = outcome.result as PostResult | RoundResult
  setSeq(result.message.seq)
  await send('message', result.message)
  // Outcomes stored before tools existed have no toolCalls.
  const toolCalls = result.toolCalls ?? []
  const sendTools = async (agent?: string) => {
    for (const call of toolCalls.filter((c) => agent === undefined || c.agent === agent)) {
      await send('tool_call', { callId: call.callId, tool: call.tool, server: call.server, arguments: call.arguments })
      await send('tool_result', { callId: call.callId, isError: call.isError, content: call.content })
    }
  }
  if ('replies' in result) {
    for (const [index, reply] of result.replies.entries()) {
      await send('agent', { agent: reply.agent, reason: 'replayed', provider: reply.provider, model: reply.model, turn: index + 1 })
      // A group's calls are replayed before the first turn of the agent that made them.
      if (result.replies.findIndex((r) => r.agent === reply.agent) === index) await sendTools(reply.agent)
      await send('delta', { text: reply.content })
      await send('turn', reply)
    }
    await send('done', { replies: result.replies, round: result.round })
    return
  }
  const { reply } = result
  await send('agent', { agent: reply.agent, reason: 'replayed', provider: reply.provider, model: reply.model })
  await sendTools()
  await send('delta', { text: reply.content })
  await send('done', reply)
}

export default messages
