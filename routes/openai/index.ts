import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DomainError } from '../../src/domain-errors.js'
import { streamErrorBody, type ErrorBody } from '../../src/errors.js'
import { ChunkFrames, completionBody, errorFrame, newCompletionMeta, openAiError, usageOf } from '../../src/openai/wire.js'
import { SseStream } from '../sse.js'
import { ChatCompletion, ChatCompletionBody, ChatCompletionHeaders, Model, ModelList, ModelParams, openAiErrorResponses } from './schemas.js'

const security = [{ bearerAuth: [] }]
const tags = ['openai']

const isErrorBody = (payload: unknown): payload is ErrorBody =>
  typeof payload === 'object' && payload !== null && typeof (payload as ErrorBody).statusCode === 'number' && typeof (payload as ErrorBody).message === 'string'

/**
 * The OpenAI-compatible API (DESIGN section 10), registered under /v1: `GET /models`,
 * `GET /models/:model` and `POST /chat/completions`. Every error these routes answer, whoever raised it (the API key check,
 * validation, the body limit, a domain failure, an overload), leaves the service's error handler in
 * its usual shape and is rewritten here into OpenAI's, so that the SDKs' error classes apply.
 */
const openai: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.addHook('preSerialization', async (_request, reply, payload) =>
    reply.statusCode >= 400 && isErrorBody(payload) ? openAiError(payload) : payload
  )

  fastify.get(
    '/models',
    {
      schema: {
        summary: 'List the models of the OpenAI-compatible API: one per agent, one per group preset (group:<preset id>)',
        tags,
        security,
        response: { 200: ModelList, ...openAiErrorResponses(401, 503) }
      }
    },
    async () => ({ object: 'list' as const, data: fastify.openai.models.list() })
  )

  fastify.get(
    '/models/:model',
    {
      schema: {
        summary: 'One model of the OpenAI-compatible API',
        tags,
        security,
        params: ModelParams,
        response: { 200: Model, ...openAiErrorResponses(401, 404, 503) }
      }
    },
    async (request) => fastify.openai.models.describe(request.params.model)
  )

  fastify.post(
    '/chat/completions',
    {
      schema: {
        summary: 'Ask an agent, in OpenAI\'s chat-completions format (JSON, or a stream of chunks)',
        description:
          'Stateless by default: the `messages` are the whole context and nothing is stored. With `store: true` the newest user message and the reply are kept in a new session of the caller\'s tenant (its id in the `x-smalltalk-session-id` response header); a request with `x-smalltalk-session-id` continues that session through the native reply path (its lease: 409 while a reply runs, its `Idempotency-Key`, its events). With `stream: true` the answer is `text/event-stream`: `data: {chat.completion.chunk}` lines, then `data: [DONE]`; a failure after the stream opened is a `data: {"error": ...}` line and no `[DONE]`. Errors have OpenAI\'s shape `{ error: { message, type, param, code } }`.',
        tags,
        security,
        headers: ChatCompletionHeaders,
        body: ChatCompletionBody,
        response: {
          200: {
            description: 'A chat.completion (JSON), or with `stream: true` a text/event-stream of chat.completion.chunk events',
            content: {
              'application/json': { schema: ChatCompletion },
              'text/event-stream': { schema: { type: 'string' } }
            }
          },
          ...openAiErrorResponses(400, 401, 404, 409, 410, 413, 415, 429, 502, 503, 504)
        }
      },
      // The caller's tenant's limits (message rate, token budget, a stream slot for `stream: true`),
      // before any provider is asked.
      preHandler: fastify.limits.messageGuard
    },
    async (request, reply) => {
      const body = request.body
      const sessionId = request.headers['x-smalltalk-session-id']
      if (sessionId !== undefined) reply.header('x-smalltalk-session-id', sessionId)
      const meta = newCompletionMeta(body.model, fastify.sessions.now())
      const clientGone = new AbortController()
      reply.raw.once('close', () => {
        if (!reply.raw.writableFinished) clientGone.abort(new DomainError('unavailable', 'The client closed the connection before the reply was finished', { code: 'CLIENT_GONE' }))
      })
      const call = {
        clientGone: clientGone.signal,
        tenant: request.tenant,
        request: body,
        sessionId,
        idempotencyKey: request.headers['idempotency-key'],
        onSession: (id: string) => { reply.header('x-smalltalk-session-id', id) }
      }

      if (body.stream !== true) {
        const result = await fastify.openai.completions.complete({ ...call, stream: false, delta: () => undefined })
        if (result.replayed) reply.header('idempotent-replayed', 'true')
        return reply.code(200).send(completionBody(meta, result.text, usageOf(result.usage)))
      }

      // The stream opens with the first delta, so that a failure before it is an ordinary HTTP error.
      const frames = new ChunkFrames(meta, body.stream_options?.include_usage === true)
      const sse = new SseStream(reply)
      const delta = (text: string) => {
        if (!sse.isOpen) sse.write(frames.opening())
        return sse.writeWhenDrained(frames.delta(text))
      }
      try {
        const result = await fastify.openai.completions.complete({ ...call, stream: true, delta })
        if (result.replayed) {
          reply.header('idempotent-replayed', 'true')
          await delta(result.text)
        }
        if (!sse.isOpen) sse.write(frames.opening())
        await sse.writeWhenDrained(frames.closing(usageOf(result.usage)))
      } catch (err) {
        if (!sse.isOpen) throw err
        if (!(err instanceof DomainError)) request.log.error({ err }, 'completion failed mid-stream')
        await sse.writeWhenDrained(errorFrame(streamErrorBody(err)))
      }
      sse.end()
      return reply
    }
  )
}

export default openai
