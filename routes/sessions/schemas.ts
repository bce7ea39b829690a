import { Type } from 'typebox'
import { STRATEGIES } from '../../src/groups/group-settings.js'
import { STOP_REASONS } from '../../src/metrics/group-metrics.js'

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

export const Mode = Type.Enum(['single', 'group'], { description: 'single (default): one reply per message; group: each message starts a round of turns among the agents' })

const groupFields = {
  strategy: Type.Enum(STRATEGIES, { description: 'How each turn\'s speaker is chosen: round-robin (in order, after the last speaker), expertise (best keyword match with the newest message, never the agent that just spoke unless allowRepeat), manager (the manager agent\'s model picks, or says FINISH; round-robin when it fails). Mentioned agents (@coder) speak first whatever the strategy.' }),
  maxTurns: Type.Integer({ minimum: 1, description: 'Turns per round, 1 to GROUP_MAX_TURNS (default 10); default: the number of agents' }),
  manager: Type.String({ minLength: 1, maxLength: 64, description: 'strategy manager: the agent whose model picks the speakers (one of the agents, or another agent of the manifest)' }),
  terminationKeyword: Type.String({ minLength: 1, maxLength: 100, description: 'A reply containing it (any case) ends the round' }),
  allowRepeat: Type.Boolean({ description: 'May an agent speak twice in a row (default false)' })
}

export const GroupSettings = Type.Object(
  {
    strategy: groupFields.strategy,
    maxTurns: groupFields.maxTurns,
    manager: Type.Optional(groupFields.manager),
    terminationKeyword: Type.Optional(groupFields.terminationKeyword),
    allowRepeat: groupFields.allowRepeat,
    preset: Type.Optional(Type.String({ description: 'The preset the session was created from' }))
  },
  { description: 'A group session\'s settings (DESIGN section 9)' }
)

export const GroupInput = Type.Object(
  {
    strategy: Type.Optional(groupFields.strategy),
    maxTurns: Type.Optional(groupFields.maxTurns),
    manager: Type.Optional(groupFields.manager),
    terminationKeyword: Type.Optional(groupFields.terminationKeyword),
    allowRepeat: Type.Optional(groupFields.allowRepeat)
  },
  { additionalProperties: false, description: 'Group settings; what is left out comes from the preset, else the defaults (round-robin, maxTurns = number of agents)' }
)

const PresetId = Type.String({ minLength: 1, maxLength: 64, description: 'A group preset of the agents manifest (GET /v1/groups): its agents and settings fill in what the body leaves out; implies mode group' })

export const Session = Type.Object({
  id: Type.String({ format: 'uuid' }),
  status: Type.Union([Type.Literal('active'), Type.Literal('invalidated'), Type.Literal('expired')]),
  agents: Type.Array(Type.String()),
  mode: Mode,
  group: Type.Union([GroupSettings, Type.Null()]),
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
    mode: Type.Optional(Mode),
    group: Type.Optional(GroupInput),
    preset: Type.Optional(PresetId),
    metadata: Type.Optional(Metadata),
    ttlSeconds: Type.Optional(TtlSeconds)
  },
  { additionalProperties: false }
)

export const PatchSessionBody = Type.Object(
  {
    agents: Type.Optional(AgentIds),
    mode: Type.Optional(Mode),
    group: Type.Optional(GroupInput),
    preset: Type.Optional(PresetId),
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
  role: Type.Union([Type.Literal('user'), Type.Literal('assistant'), Type.Literal('system'), Type.Literal('tool')], {
    description: '`tool`: a tool call of a reply and its result (content the result text; metadata `{ callId, tool, server, arguments, isError, latencyMs, outcome, step }`), stored between the user message and the reply'
  }),
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

export const RoundSummary = Type.Object(
  {
    turns: Type.Integer({ description: 'Turns taken, failed ones included' }),
    stop: Type.Enum(STOP_REASONS, { description: 'Why the round stopped: max_turns, keyword (the terminationKeyword was said), manager (it said FINISH), timeout (GROUP_ROUND_TIMEOUT_MS), shutdown, error (nobody left who could speak)' })
  },
  { description: 'How a group round went' }
)

export const ToolCall = Type.Object(
  {
    callId: Type.String({ description: 'The model\'s id of the call' }),
    tool: Type.String({ description: 'The tool\'s own name on its server' }),
    server: Type.String({ description: 'The MCP server (manifest id); empty when the agent does not have the tool the model asked for' }),
    arguments: Type.Record(Type.String(), Type.Unknown(), { description: 'The arguments the model gave' }),
    isError: Type.Boolean({ description: 'The result is an error (the tool failed, timed out, was refused or got invalid arguments): the model was told so' }),
    content: Type.String({ description: 'The result text the model got (untrusted: shown as text, never as HTML), cut at TOOL_RESULT_MAX_CHARS' }),
    agent: Type.Optional(Type.String({ description: 'In a group round: the agent whose turn called it' }))
  },
  { description: 'A tool call of the reply and its result, as stored (role `tool` messages)' }
)

export const PostReply = Type.Object(
  {
    message: Message,
    reply: Type.Optional(Message),
    toolCalls: Type.Optional(Type.Array(ToolCall, { description: 'The tool calls the agents made for this reply (or round), in order; empty when none' })),
    replies: Type.Optional(Type.Array(Message, { description: 'Group mode: each turn\'s stored assistant message, in seq order' })),
    round: Type.Optional(RoundSummary)
  },
  {
    description: 'Single mode: `{ message, reply, toolCalls }`. Group mode: `{ message, replies, round, toolCalls }`.',
    examples: [
      { message: { id: '5b0c7a55-4a0e-4c5e-9d0e-0a6f1c2b3d4e', seq: 1, role: 'user', content: 'Review this plan', metadata: {}, createdAt: '2026-12-02T08:00:00.000Z' }, replies: [], round: { turns: 3, stop: 'max_turns' } }
    ]
  }
)
