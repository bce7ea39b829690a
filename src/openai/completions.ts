import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition } from '../agents/agent.js'
import type { AgentRegistry } from '../agents/registry.js'
import { DomainError, assertMetadataSize, assertStorable } from '../domain-errors.js'
import type { ConversationService, PostResult, RoundResult } from '../messages/conversation.js'
import type { StoredOutcome } from '../messages/idempotency.js'
import { describeReplyFailure } from '../messages/reply-failure.js'
import { EPHEMERAL_TOOL_STEPS } from '../messages/tool-step-store.js'
import type { ProduceOptions, ReplyProducer, ReplySink } from '../messages/reply-producer.js'
import type { ChatTurn } from '../providers/provider.js'
import type { SessionStore } from '../sessions/session-store.js'
import type { OpenAiMetrics } from './metrics.js'
import { GROUP_MODEL_PREFIX, type ModelResolver } from './models.js'
import type { GroupPreset } from '../groups/group-settings.js'

/** A content part of an OpenAI message: only `text` parts are understood. */
export interface ContentPart {
  type: string
  text?: unknown
}

export interface ChatMessage {
  role: 'system' | 'developer' | 'user' | 'assistant'
  content: string | ContentPart[]
}

/** The fields of an OpenAI chat-completions request that change the answer; the others are ignored. */
export interface CompletionRequest {
  model: string
  messages: ChatMessage[]
  temperature?: number | null | undefined
  max_tokens?: number | null | undefined
  max_completion_tokens?: number | null | undefined
  user?: string | null | undefined
  metadata?: Record<string, unknown> | null | undefined
  store?: boolean | null | undefined
  /** Refused: the agents' tools are the manifest's, run by the service (DESIGN section 14). */
  tools?: unknown
  functions?: unknown
}

export type CompletionMode = 'stateless' | 'store' | 'continue'

export interface CompletionCall {
  tenant: string
  request: CompletionRequest
  /** An active session of the tenant to continue (x-smalltalk-session-id). */
  sessionId?: string | undefined
  idempotencyKey?: string | undefined
  /** Whether deltas reach the client as they come (a stream); else the provider is asked for the whole answer. */
  stream: boolean
  /**
   * Aborted when the client goes away: a stateless reply is then given up (nothing would receive
   * it), while a stored one is finished and stored, as on the native path.
   */
  clientGone?: AbortSignal | undefined
  /** `store: true`: the session created for the exchange, before any delta. */
  onSession: (sessionId: string) => void
  delta: (text: string) => Promise<void> | void
}

export interface CompletionResult {
  text: string
  usage: { inputTokens: number; outputTokens: number }
  /** The agent that answered (a fallback's id when the model's own agent failed first). */
  agent: string
  /** The first outcome of an earlier request with the same Idempotency-Key: no delta was delivered. */
  replayed: boolean
}

export interface CompletionOptions {
  agents: AgentRegistry
  models: ModelResolver
  /** Asks the agents (retries, breakers, fallbacks, the LLM_TIMEOUT_MS deadline) for stateless replies. */
  producer: ReplyProducer
  /** The native reply path, for stored exchanges: the lease, idempotency, events and metrics of section 3. */
  conversations: ConversationService
  sessions: SessionStore
  metrics: OpenAiMetrics
  log: FastifyBaseLogger
  llmTimeoutMs: number
  /** MAX_MESSAGE_CHARS: the longest user message a stored exchange keeps. */
  maxMessageChars: number
  /** METADATA_MAX_BYTES: the largest `metadata` a stored exchange keeps, as JSON. */
  metadataMaxBytes: number
  shutdownSignal: AbortSignal
}

/**
 * The OpenAI-compatible chat completion (DESIGN section 10). Stateless by default: the caller's
 * messages are the whole context, nothing is stored, and the agent answers through the same producer
 * as the native path. The agent's own system prompt comes first; the caller's system (and developer)
 * messages follow it, in order, as one system text. With `store: true` a session of the caller's
 * tenant is created for the model's agent and the newest user message and the reply are stored in
 * it (the caller's earlier messages are context for that reply only); with a session id, the session
 * is continued through the native path, which takes only the newest user message (a group-mode
 * session runs a round, answered as one message labelling each speaker).
 */
export class OpenAiCompletions {
  constructor (private readonly options: CompletionOptions) {}

  async complete (call: CompletionCall): Promise<CompletionResult> {
    const mode: CompletionMode = call.sessionId !== undefined ? 'continue' : call.request.store === true ? 'store' : 'stateless'
    let outcome = 'error'
    try {
      const result = await this.run(mode, call)
      outcome = 'ok'
      return result
    } finally {
      this.options.metrics.completions.inc({ mode, stream: String(call.stream), outcome })
    }
  }

  private async run (mode: CompletionMode, call: CompletionCall): Promise<CompletionResult> {
    const { request } = call
    for (const field of ['tools', 'functions'] as const) {
      if (request[field] !== undefined && request[field] !== null) {
        throw invalid(`\`${field}\` is not accepted: an agent's tools are its manifest's MCP tools, run by this server, and the answer is the final text (GET /v1/tools lists them)`, `/${field}`)
      }
    }
    const target = this.options.models.resolve(request.model)
    const { systemText, turns } = readMessages(request.messages)
    const overrides: ProduceOptions = {
      systemText,
      temperature: request.temperature ?? undefined,
      maxTokens: request.max_completion_tokens ?? request.max_tokens ?? undefined
    }
    if (mode === 'stateless' && target.kind === 'group') return this.statelessRound(call, target.preset, turns)
    if (mode === 'stateless' && target.kind === 'agent') {
      const { shutdownSignal } = this.options
      return this.stateless(target.agent, turns, { ...overrides, signal: call.clientGone ? AbortSignal.any([shutdownSignal, call.clientGone]) : shutdownSignal }, call)
    }

    const newest = turns.at(-1) as ChatTurn
    const index = request.messages.length - 1
    if (request.messages[index]?.role !== 'user') {
      throw invalid('A stored exchange answers a user message: the last of `messages` must have the role user', `/messages/${index}/role`)
    }
    if (newest.content.length === 0 || newest.content.length > this.options.maxMessageChars) {
      throw invalid(`The user message of a stored exchange must have 1 to ${this.options.maxMessageChars} characters (MAX_MESSAGE_CHARS)`, `/messages/${index}/content`)
    }
    const metadata = { ...request.metadata, ...(request.user ? { user: request.user } : {}) }
    // Checked here, before a session is created, so that a refused request leaves nothing behind.
    assertStorable(`messages/${index}/content`, newest.content)
    assertStorable('metadata', metadata)
    assertMetadataSize('metadata', metadata, this.options.metadataMaxBytes)
    let sessionId = call.sessionId
    if (mode === 'store') {
      if (call.idempotencyKey !== undefined) {
        throw invalid('Idempotency-Key applies to requests that continue a session (x-smalltalk-session-id); a request that creates one cannot be replayed', '/idempotency-key')
      }
      const session = await this.options.sessions.create(call.tenant, target.kind === 'group' ? { preset: target.preset.id, metadata: request.metadata ?? {} } : { agents: [target.agent.id], metadata: request.metadata ?? {} })
      sessionId = session.id
      call.onSession(session.id)
      overrides.priorTurns = turns.slice(0, -1)
    }
    return this.stored(call, sessionId as string, target.kind === 'agent' ? target.agent : undefined, { content: newest.content, metadata, overrides })
  }

  /** A group model with nothing stored: the caller's messages are the context of one round. */
  private async statelessRound (call: CompletionCall, preset: GroupPreset, turns: ChatTurn[]): Promise<CompletionResult> {
    if (turns.at(-1)?.role !== 'user') throw invalid('A group model answers a user message: the last of `messages` must have the role user', `/messages/${call.request.messages.length - 1}/role`)
    const result = await this.options.conversations.statelessRound(call.tenant, preset, turns, sinkOf(call))
    return { ...this.roundResult(result), agent: GROUP_MODEL_PREFIX + preset.id, replayed: false }
  }

  /** A round's replies as one message, each labelled with its speaker, usage summed. */
  private roundResult (result: RoundResult): { text: string; usage: { inputTokens: number; outputTokens: number } } {
    const { agents } = this.options
    return {
      text: result.replies.map((reply, i) => speakerLabel(agents.get(reply.agent ?? '')?.name ?? reply.agent ?? '', i === 0) + reply.content).join(''),
      usage: result.replies.reduce((sum, reply) => ({ inputTokens: sum.inputTokens + (reply.usage?.inputTokens ?? 0), outputTokens: sum.outputTokens + (reply.usage?.outputTokens ?? 0) }), { inputTokens: 0, outputTokens: 0 })
    }
  }

  private async stateless (agent: AgentDefinition, turns: ChatTurn[], overrides: ProduceOptions, call: CompletionCall): Promise<CompletionResult> {
    const { producer, llmTimeoutMs, shutdownSignal, log } = this.options
    try {
      // The agent's tools run here too; their calls are kept nowhere, like the rest of the exchange.
      const answer = await producer.produce(agent, turns, sinkOf(call), { ...overrides, toolSteps: EPHEMERAL_TOOL_STEPS })
      return { text: answer.text, usage: answer.usage, agent: answer.agent.id, replayed: false }
    } catch (err) {
      throw describeReplyFailure(err, { agent, llmTimeoutMs, shuttingDown: shutdownSignal.aborted, log })
    }
  }

  /** Through the native path. `agent` (the model's agent) answers a single-mode session; a group model's session runs a round. */
  private async stored (call: CompletionCall, sessionId: string, agent: AgentDefinition | undefined, input: { content: string; metadata: Record<string, unknown>; overrides: ProduceOptions }): Promise<CompletionResult> {
    const outcome = await this.options.conversations
      .post(call.tenant, sessionId, { ...input, ...(agent ? { agent: agent.id } : {}) }, sinkOf(call), call.idempotencyKey)
      .catch((err: unknown) => {
        if (agent && err instanceof DomainError && err.code === 'AGENT_NOT_IN_SESSION') {
          throw new DomainError('invalid', `The model \`${agent.id}\` is not one of this session's agents`, { code: err.code, details: [{ field: '/model' }] })
        }
        throw err
      })
    const result = outcome.replayed ? replayedResult(outcome.outcome) : outcome.result
    // A group session: the round's replies as one message, each labelled with its speaker.
    if ('replies' in result) return { ...this.roundResult(result), agent: agent?.id ?? call.request.model, replayed: outcome.replayed }
    const { reply } = result
    return { text: reply.content, usage: reply.usage ?? { inputTokens: 0, outputTokens: 0 }, agent: reply.agent ?? agent?.id ?? call.request.model, replayed: outcome.replayed }
  }
}

/** The first outcome of a request with the same Idempotency-Key: its result, or its failure again. */
function replayedResult (outcome: StoredOutcome): PostResult | RoundResult {
  if (!outcome.ok) throw DomainError.from(outcome.failure)
  return outcome.result as PostResult | RoundResult
}

/** Where a group round's speaker starts in the one assistant message: `**Name:** `, after a blank line from the second on. */
const speakerLabel = (name: string, first: boolean): string => `${first ? '' : '\n\n'}**${name}:** `

const noop = () => undefined

/** Deltas to the caller; in a group round, each turn's speaker label first, so the streamed text is the JSON one. */
const sinkOf = (call: CompletionCall): ReplySink => ({
  live: call.stream,
  message: noop,
  agent: (announcement) => announcement.turn === undefined ? undefined : call.delta(speakerLabel(announcement.name, announcement.turn === 1)),
  delta: (text) => call.delta(text)
})

const invalid = (message: string, field: string): DomainError => new DomainError('invalid', message, { code: 'INVALID_REQUEST', details: [{ field, message }] })

/**
 * The caller's messages as the agent is asked: system and developer messages joined as one system
 * text (after the agent's own prompt), the user and assistant turns in order. Content is a string or
 * an array of text parts (joined with newlines); any other part (an image, audio, a file) is a 400
 * naming it.
 */
export function readMessages (messages: ChatMessage[]): { systemText: string | undefined; turns: ChatTurn[] } {
  const system: string[] = []
  const turns: ChatTurn[] = []
  for (const [index, message] of messages.entries()) {
    const content = textOf(message.content, index)
    if (message.role === 'system' || message.role === 'developer') system.push(content)
    else turns.push({ role: message.role, content })
  }
  if (turns.length === 0) throw invalid('`messages` must hold at least one user or assistant message', '/messages')
  return { systemText: system.length > 0 ? system.join('\n\n') : undefined, turns }
}

function textOf (content: string | ContentPart[], index: number): string {
  if (typeof content === 'string') return content
  return content
    .map((part, j) => {
      if (part.type !== 'text') throw invalid(`Only text content parts are supported, not \`${part.type}\``, `/messages/${index}/content/${j}/type`)
      if (typeof part.text !== 'string') throw invalid('A text content part needs `text`, a string', `/messages/${index}/content/${j}/text`)
      return part.text
    })
    .join('\n')
}
