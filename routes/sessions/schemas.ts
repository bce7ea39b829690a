import { Type } from 'typebox'

// Shared by the sessions and messages routes: the shapes of DESIGN section 3.

export const ErrorBody = Type.Object(
  {
    statusCode: Type.Integer(),
    error: Type.String(),
    message: Type.String(),
    code: Type.Optional(Type.String()),
    details: Type.Optional(Type.Unknown())
  },
  { $id: 'ErrorBody', description: 'Every non-2xx answer' }
)

export const errorResponses = (...statuses: number[]) => Object.fromEntries(statuses.map((status) => [status, ErrorBody]))

export const Metadata = Type.Record(Type.String(), Type.Unknown(), { description: 'Free-form JSON object, stored as sent; at most METADATA_MAX_BYTES (default 16384) bytes as JSON' })

export const AgentIds = Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 32, uniqueItems: true })

export const TtlSeconds = Type.Integer({ minimum: 60, maximum: 31_536_000, description: 'Lifetime from now, in seconds (1 minute to 1 year)' })

export const Session = Type.Object({
  id: Type.String({ format: 'uuid' }),
  status: Type.Union([Type.Literal('active'), Type.Literal('invalidated'), Type.Literal('expired')]),
  agents: Type.Array(Type.String()),
  metadata: Metadata,
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
  expiresAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  version: Type.Integer(),
  messageCount: Type.Integer()
})

export const SessionParams = Type.Object({ id: Type.String({ format: 'uuid', description: 'Session id' }) })

export const CreateSessionBody = Type.Object(
  {
    agents: Type.Optional(AgentIds),
    metadata: Type.Optional(Metadata),
    ttlSeconds: Type.Optional(TtlSeconds)
  },
  { additionalProperties: false }
)

export const PatchSessionBody = Type.Object(
  {
    agents: Type.Optional(AgentIds),
    metadata: Type.Optional(Metadata),
    ttlSeconds: Type.Optional(TtlSeconds)
  },
  { additionalProperties: false, minProperties: 1 }
)

export const ListQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
  cursor: Type.Optional(Type.String({ maxLength: 200, description: 'nextCursor of the previous page' }))
})

export const SessionList = Type.Object({ sessions: Type.Array(Session), nextCursor: Type.Union([Type.String(), Type.Null()]) })

export const IfMatchHeaders = Type.Object({
  'if-match': Type.Optional(Type.String({ description: 'The version to update: "<version>" (the ETag) or the bare number' }))
})

export const Message = Type.Object({
  id: Type.String({ format: 'uuid' }),
  seq: Type.Integer(),
  role: Type.Union([Type.Literal('user'), Type.Literal('assistant'), Type.Literal('system')]),
  content: Type.String(),
  metadata: Metadata,
  createdAt: Type.String({ format: 'date-time' }),
  agent: Type.Optional(Type.String()),
  provider: Type.Optional(Type.String()),
  model: Type.Optional(Type.String()),
  usage: Type.Optional(Type.Object({ inputTokens: Type.Integer(), outputTokens: Type.Integer() })),
  latencyMs: Type.Optional(Type.Integer())
})

export const MessageList = Type.Object({ messages: Type.Array(Message), nextCursor: Type.Union([Type.Integer(), Type.Null()]) })

export const MessagesQuery = Type.Object({
  after: Type.Integer({ minimum: 0, default: 0, description: 'Only messages with a larger seq (the previous page\'s nextCursor)' }),
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 })
})

export const PostMessageHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7E]+$', description: 'Retry-safe key: a retry with the same key and body returns the first result' }))
})

export const PostReply = Type.Object({ message: Message, reply: Message })
