import { Type, type TSchema } from 'typebox'
import { Metadata, PostMessageHeaders } from '../sessions/schemas.js'

// The OpenAI chat-completions shapes (DESIGN section 10). Requests keep OpenAI's other fields
// (response_format, seed...): they are ignored, as OpenAI ignores what a model does not use, except
// `tools` and `functions`: a 400, since the agents' tools are the manifest's and run server-side.

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])

const ContentPart = Type.Object(
  { type: Type.String({ description: 'Only `text` is supported; any other part type is a 400 naming it' }), text: Type.Optional(Type.String()) },
  { description: 'A content part' }
)

const ChatMessage = Type.Object({
  role: Type.Union([Type.Literal('system'), Type.Literal('developer'), Type.Literal('user'), Type.Literal('assistant')]),
  content: Type.Union([Type.String(), Type.Array(ContentPart, { minItems: 1 })], { description: 'A string, or an array of text parts (joined with newlines)' }),
  name: Type.Optional(Type.String())
})

export const ChatCompletionBody = Type.Object({
  model: Type.String({ minLength: 1, maxLength: 200, description: 'An agent id (GET /v1/models)' }),
  messages: Type.Array(ChatMessage, {
    minItems: 1,
    description: 'The conversation: system and developer messages are added after the agent\'s own system prompt; user and assistant messages are the context, in order'
  }),
  stream: Type.Optional(Nullable(Type.Boolean({ description: 'true: the answer is a stream of `chat.completion.chunk` events ending with `data: [DONE]`' }))),
  stream_options: Type.Optional(Nullable(Type.Object({ include_usage: Type.Optional(Type.Boolean({ description: 'A last chunk with no choices and the usage' })) }))),
  temperature: Type.Optional(Nullable(Type.Number({ minimum: 0, maximum: 2, description: 'Default: the agent\'s' }))),
  max_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, description: 'Default: the agent\'s maxTokens' }))),
  max_completion_tokens: Type.Optional(Nullable(Type.Integer({ minimum: 1, description: 'Takes precedence over max_tokens' }))),
  n: Type.Optional(Nullable(Type.Integer({ minimum: 1, maximum: 1, description: 'Only 1' }))),
  user: Type.Optional(Nullable(Type.String({ maxLength: 256, description: 'Stored as `metadata.user` on the messages of a stored exchange' }))),
  metadata: Type.Optional(Nullable(Metadata)),
  store: Type.Optional(Nullable(Type.Boolean({ description: 'true: the exchange is kept in a new session of the caller\'s tenant, its id in the x-smalltalk-session-id response header' }))),
  tools: Type.Optional(Type.Unknown({ description: 'Not accepted (400): the agent\'s own tools (its manifest\'s MCP tools, GET /v1/tools) run on this server, and the answer is the final text' }))
})

export const ChatCompletionHeaders = Type.Object({
  'x-smalltalk-session-id': Type.Optional(Type.String({ format: 'uuid', description: 'Continue this active session: only the newest user message of `messages` is taken, the context is the stored history' })),
  'idempotency-key': PostMessageHeaders.properties['idempotency-key']
})

const Usage = Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer(), total_tokens: Type.Integer() })

export const ChatCompletion = Type.Object({
  id: Type.String(),
  object: Type.Literal('chat.completion'),
  created: Type.Integer({ description: 'Unix seconds' }),
  model: Type.String(),
  choices: Type.Array(Type.Object({
    index: Type.Integer(),
    message: Type.Object({ role: Type.Literal('assistant'), content: Type.String(), refusal: Type.Null() }),
    logprobs: Type.Null(),
    finish_reason: Type.String()
  })),
  usage: Usage
})

export const Model = Type.Object({ id: Type.String(), object: Type.Literal('model'), created: Type.Integer({ description: 'Unix seconds' }), owned_by: Type.String() })

export const ModelList = Type.Object({ object: Type.Literal('list'), data: Type.Array(Model) })

export const ModelParams = Type.Object({ model: Type.String({ minLength: 1, maxLength: 200, description: 'A model id: an agent id' }) })

export const OpenAiErrorBody = Type.Object(
  {
    error: Type.Object({
      message: Type.String(),
      type: Type.String({ description: 'invalid_request_error, rate_limit_error or server_error' }),
      param: Nullable(Type.String({ description: 'The request field at fault, e.g. messages[0].content' })),
      code: Nullable(Type.String({ description: 'invalid_api_key, model_not_found, session_busy, llm_timeout...' }))
    })
  },
  { description: 'OpenAI\'s error shape, on these routes only' }
)

export const openAiErrorResponses = (...statuses: number[]) => Object.fromEntries(statuses.map((status) => [status, OpenAiErrorBody]))
