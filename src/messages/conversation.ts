import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { SeqListSnapshot } from '../cache/cache.js'
import type { AgentDefinition, AgentSelection } from '../agents/agent.js'
import type { LlmRouter } from '../agents/llm-router.js'
import type { ProviderGuard } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'
import { selectAgent } from '../agents/router.js'
import { DomainError, assertMetadataSize, assertStorable } from '../domain-errors.js'
import type { NewEvent } from '../events/event-log.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import { randomUUID } from 'node:crypto'
import { GroupRound, RoundFailed, type RoundResult, type RoundStore } from '../groups/group-round.js'
import { presetSettings, type GroupPreset } from '../groups/group-settings.js'
import { GroupManager } from '../groups/manager.js'
import type { GroupMetrics } from '../metrics/group-metrics.js'
import type { ChatTurn } from '../providers/provider.js'
import type { SessionRecord, SessionStore } from '../sessions/session-store.js'
import { requestHash, type IdempotencyKeys, type StoredOutcome } from './idempotency.js'
import type { Message, MessageHistory } from './message-store.js'
import { describeReplyFailure } from './reply-failure.js'
import { contextTurnOf, toolCallView, type ToolCallView } from '../tools/tool-steps.js'
import type { ToolCatalog } from '../tools/tools.js'
import { ReplyProducer, type Answer, type ProduceOptions, type ProducerOptions, type ReplySink } from './reply-producer.js'
import { leaseToolSteps, transientToolMessages } from './tool-step-store.js'
import { ReplyRepository, type Lease } from './reply-repository.js'

export type { ReplySink } from './reply-producer.js'

export interface PostMessageInput {
  content: string
  agent?: string
  metadata?: Record<string, unknown>
  /** How the agent is asked for this reply only (the OpenAI-compatible API); not part of the stored message. */
  overrides?: ProduceOptions
}

/** The result of a post in a single-mode session, as the JSON answer carries it and an idempotent retry replays it. */
export interface PostResult {
  message: Message
  reply: Message
  /** The reply's tool calls and results, in order (empty when no tool was called). */
  toolCalls: ToolCallView[]
}

export type { RoundResult } from '../groups/group-round.js'

export type PostOutcome = { replayed: false; result: PostResult | RoundResult } | { replayed: true; outcome: StoredOutcome }

export interface ConversationOptions {
  pool: pg.Pool
  sessions: SessionStore
  history: MessageHistory
  idempotency: IdempotencyKeys
  agents: AgentRegistry
  /** Retries and circuit breakers around every provider call. */
  guard: ProviderGuard
  /** ROUTER=llm: the router that picks an agent when the client names none. */
  router?: LlmRouter | undefined
  metrics: ConversationMetrics
  llmMetrics: LlmMetrics
  log: FastifyBaseLogger
  llmTimeoutMs: number
  contextMessages: number
  /** METADATA_MAX_BYTES: the largest metadata object a message may carry, as JSON. */
  metadataMaxBytes: number
  /** Aborted when the service shuts down past its drain deadline: running replies end with an error. */
  shutdownSignal: AbortSignal
  /** True once shutdown has begun: a group round starts no new turn. */
  shuttingDown: () => boolean
  groupMetrics: GroupMetrics
  /** GROUP_ROUND_TIMEOUT_MS and GROUP_MANAGER_TIMEOUT_MS. */
  groupRoundTimeoutMs: number
  groupManagerTimeoutMs: number
  /** The MCP servers' tools (absent: agents are offered none). */
  tools?: ToolCatalog | undefined
  toolMetrics?: ProducerOptions['toolMetrics']
}

/**
 * The conversation path: a user message in, a reply out, both committed in PostgreSQL before the
 * caller hears of them. In order, and nothing of a step before the previous one succeeded:
 *
 * 1. the session's reply lease is taken and the user message stored, in one statement (a request
 *    that is refused (busy, gone, not found) stores nothing and never reaches a provider);
 * 2. the agent is chosen (the LLM router is asked only now, under the lease);
 * 3. the model is asked, with retries and fallbacks (ReplyProducer);
 * 4. the reply is stored only under this request's lease in an active session (ReplyRepository),
 *    else nothing is stored and the failure is an event.
 */
export class ConversationService {
  private readonly replies: ReplyRepository
  private readonly producer: ReplyProducer
  private readonly rounds: GroupRound
  /** A group round's lease, renewed at every turn: the next turn's deadline, its manager call, a margin. */
  private readonly roundLeaseMs: number

  constructor (private readonly options: ConversationOptions) {
    this.replies = new ReplyRepository(options.pool, options.sessions.now)
    this.producer = new ReplyProducer(options)
    this.roundLeaseMs = options.llmTimeoutMs + options.groupManagerTimeoutMs + 5000
    this.rounds = new GroupRound({
      agents: options.agents,
      producer: this.producer,
      replies: this.replies,
      manager: new GroupManager({ agents: options.agents, guard: options.guard, log: options.log, timeoutMs: options.groupManagerTimeoutMs }),
      metrics: options.groupMetrics,
      log: options.log,
      llmTimeoutMs: options.llmTimeoutMs,
      roundTimeoutMs: options.groupRoundTimeoutMs,
      leaseMs: this.roundLeaseMs,
      shutdownSignal: options.shutdownSignal,
      shuttingDown: options.shuttingDown,
      cacheToolMessages: (sessionId, messages) => this.cacheToolMessages(sessionId, messages),
      cacheTurn: async (stored) => {
        this.options.metrics.messages.inc({ role: 'assistant' })
        await Promise.all([options.sessions.cacheRecord(stored.session), options.history.append(stored.session.id, stored.reply)])
      }
    })
  }

  /**
   * Posts a message and produces its reply. With an Idempotency-Key, a request seen before answers
   * its first outcome (`replayed`), whether that was a reply or a failure.
   */
  async post (tenant: string, sessionId: string, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<PostOutcome> {
    assertStorable('content', input.content)
    assertStorable('metadata', input.metadata)
    assertMetadataSize('metadata', input.metadata, this.options.metadataMaxBytes)
    // The record and the cached history (the model's context) in one round trip.
    const { session, list } = await this.options.history.activeSession(this.options.sessions, tenant, sessionId)
    if (input.agent !== undefined) this.assertAgentOf(session, input.agent)
    if (this.candidates(session).length === 0) {
      throw new DomainError('invalid', 'None of this session\'s agents exists any more: PATCH its agents', { code: 'NO_AGENTS' })
    }
    let claimed = false
    try {
      if (idempotencyKey !== undefined) {
        const hash = requestHash({ sessionId, content: input.content, agent: input.agent ?? null, metadata: input.metadata ?? null })
        const claim = await this.options.idempotency.claim(tenant, idempotencyKey, sessionId, hash)
        if (claim.kind === 'replay') {
          this.options.metrics.idempotentReplays.inc()
          return { replayed: true, outcome: claim.outcome }
        }
        claimed = true
      }
      const result = session.mode === 'group'
        ? await this.round(tenant, session, list, input, sink, idempotencyKey)
        : await this.reply(tenant, session, list, input, sink, idempotencyKey)
      return { replayed: false, result }
    } catch (err) {
      if (err instanceof ReplyFailed) throw err.cause
      // Nothing was stored under the key: release it so that a retry can try again. (Once the user
      // message is stored the key is never released: the claim is linked to the message.)
      if (claimed) await this.options.idempotency.release(tenant, idempotencyKey as string).catch(() => undefined)
      throw err
    }
  }

  private async reply (tenant: string, cached: SessionRecord, list: SeqListSnapshot | undefined, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<PostResult> {
    const started = performance.now()
    const { metrics, sessions, history } = this.options
    // The lease outlasts the reply's own deadline, so that a live reply never loses it.
    const leaseMs = this.options.llmTimeoutMs + 5000

    const { lease, cacheWrites } = await this.takeLease(tenant, cached, leaseMs, input, idempotencyKey)
    const { message } = lease
    const toolSteps = leaseToolSteps(this.replies, tenant, lease, async (messages) => {
      await cacheWrites
      await this.cacheToolMessages(cached.id, messages)
    })

    let selection: AgentSelection | undefined
    let answer: Answer
    try {
      await sink.message(message)
      selection = await this.select(lease.session, input)
      await sink.agent(this.producer.announce(selection.agent, selection.reason, selection.matched))
      const context = await this.context(lease, cached, list, cacheWrites)
      answer = await this.producer.produce(selection.agent, context.map(contextTurnOf), sink, { ...input.overrides, toolSteps })
    } catch (err) {
      await cacheWrites
      const agent = selection?.agent ?? this.candidates(lease.session)[0] as AgentDefinition
      const failure = describeReplyFailure(err, { agent, messageId: message.id, llmTimeoutMs: this.options.llmTimeoutMs, shuttingDown: this.options.shutdownSignal.aborted, log: this.options.log })
      const events: NewEvent[] = [{ type: 'agent.failed', tenant, sessionId: cached.id, agentId: agent.id, data: { code: failure.code, message: failure.message, ...(failure.details as object) } }]
      if (selection) events.unshift({ type: 'agent.selected', tenant, sessionId: cached.id, agentId: agent.id, data: selectionData(selection) })
      await this.endLease(tenant, lease, { ok: false, failure: failure.toFailure() }, events, idempotencyKey, leaseMs)
      metrics.replyLatency.observe({ agent: agent.id, outcome: 'error' }, (performance.now() - started) / 1000)
      throw new ReplyFailed(failure)
    }

    const latencyMs = Math.round(performance.now() - started)
    const reply = {
      content: answer.text,
      agent: answer.agent.id,
      provider: answer.providerName,
      model: answer.agent.model,
      usage: answer.usage,
      latencyMs,
      selection: { agent: selection.agent.id, data: selectionData(selection) },
      fallback: answer.fallbackFrom ? { reason: 'fallback', fallbackFrom: answer.fallbackFrom.id } : undefined
    }
    const toolCalls = answer.toolCalls.map((call) => toolCallView(call.exchange))
    const recordOutcome = idempotencyKey === undefined
      ? undefined
      : (db: pg.PoolClient, stored: { reply: Message }) => this.options.idempotency.complete(db, tenant, idempotencyKey, { ok: true, result: { message, reply: stored.reply, toolCalls } })
    const stored = await this.replies.storeReply(lease, reply, recordOutcome).catch((err) => {
      // The database went away after the model answered: free the session as soon as it is back,
      // rather than at the lease's expiry.
      this.replies.releaseEventually(lease, leaseMs)
      throw err
    })
    await cacheWrites
    if (!stored) {
      // The session was deleted or expired meanwhile, or the lease was lost: nothing is stored.
      const failure = DomainError.from(await this.replies.whyNotStored(lease))
      const events: NewEvent[] = [{ type: 'reply.discarded', tenant, sessionId: cached.id, agentId: answer.agent.id, data: { messageId: message.id, code: failure.code, message: failure.message } }]
      await this.endLease(tenant, lease, { ok: false, failure: failure.toFailure() }, events, idempotencyKey, leaseMs)
      metrics.replyLatency.observe({ agent: answer.agent.id, outcome: 'error' }, (performance.now() - started) / 1000)
      throw new ReplyFailed(failure)
    }
    metrics.messages.inc({ role: 'assistant' })
    metrics.replyLatency.observe({ agent: answer.agent.id, outcome: 'ok' }, latencyMs / 1000)
    await Promise.all([sessions.cacheRecord(stored.session), history.append(cached.id, stored.reply)])
    return { message, reply: stored.reply, toolCalls }
  }

  /**
   * A tool step's messages into the cached history, in seq order (after the user message's write).
   * The cached session record no longer knows the session's last seq: it is dropped (the reply's
   * own write puts it back; a reply that fails after a tool step must not leave it stale).
   */
  private async cacheToolMessages (sessionId: string, messages: Message[]): Promise<void> {
    this.options.metrics.messages.inc({ role: 'tool' }, messages.length)
    for (const message of messages) await this.options.history.append(sessionId, message)
    await this.options.sessions.forget(sessionId)
  }

  /**
   * A round of a group preset with no session (the OpenAI-compatible API's stateless group models):
   * `turns` (ending with the user message) are the context; nothing is stored, no lease is taken, no
   * event is written; the round's metrics count it.
   */
  async statelessRound (tenant: string, preset: GroupPreset, turns: ChatTurn[], sink: ReplySink): Promise<RoundResult> {
    const now = () => new Date(this.options.sessions.now()).toISOString()
    const messages: Message[] = turns.map((turn, i) => ({ id: randomUUID(), seq: i + 1, role: turn.role === 'assistant' ? 'assistant' : 'user', content: turn.content, metadata: {}, createdAt: now() }))
    const message = messages.at(-1) as Message
    const at = now()
    const session: SessionRecord = { id: randomUUID(), tenant, status: 'active', agents: preset.agents, mode: 'group', group: presetSettings(preset), metadata: {}, createdAt: at, updatedAt: at, expiresAt: null, version: 1, messageCount: messages.length, lastSeq: messages.length }
    const lease: Lease = { session, message, token: randomUUID() }
    let seq = messages.length
    const store: RoundStore = {
      record: async () => undefined,
      storeTurn: async (_lease, reply) => ({
        session,
        reply: { id: randomUUID(), seq: ++seq, role: 'assistant', content: reply.content, metadata: {}, createdAt: now(), agent: reply.agent, provider: reply.provider, model: reply.model, usage: reply.usage, latencyMs: reply.latencyMs }
      }),
      storeToolMessages: async (_lease, agentId, exchanges) => transientToolMessages(agentId, exchanges, () => ++seq, this.options.sessions.now),
      renewLease: async () => true,
      whyNotStored: async () => ({ kind: 'unavailable', message: 'A stateless round stores nothing' })
    }
    try {
      const result = await this.rounds.run({ tenant, lease, before: messages.slice(0, -1), contextMessages: this.options.contextMessages, sink, store })
      this.rounds.finishedEvents(tenant, lease, result.round)
      return result
    } catch (err) {
      if (!(err instanceof RoundFailed)) throw err
      this.rounds.finishedEvents(tenant, lease, err.result)
      throw err.failure
    }
  }

  /**
   * A group session's message: the lease for the whole round (renewed at every turn), the user
   * message stored, then the round (GroupRound); the lease is released with round.finished and the
   * outcome recorded for the Idempotency-Key.
   */
  private async round (tenant: string, cached: SessionRecord, list: SeqListSnapshot | undefined, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<RoundResult> {
    const leaseMs = this.roundLeaseMs
    const { lease, cacheWrites } = await this.takeLease(tenant, cached, leaseMs, input, idempotencyKey)
    let result: RoundResult
    try {
      await sink.message(lease.message)
      const before = (await this.context(lease, cached, list, cacheWrites)).slice(0, -1)
      await cacheWrites
      result = await this.rounds.run({ tenant, lease, before, contextMessages: this.options.contextMessages, sink, requested: input.agent })
    } catch (err) {
      await cacheWrites
      if (!(err instanceof RoundFailed)) {
        this.replies.releaseEventually(lease, leaseMs)
        throw err
      }
      const events = this.rounds.finishedEvents(tenant, lease, err.result)
      await this.endLease(tenant, lease, { ok: false, failure: err.failure.toFailure() }, events, idempotencyKey, leaseMs)
      throw new ReplyFailed(err.failure)
    }
    await this.endLease(tenant, lease, { ok: true, result }, this.rounds.finishedEvents(tenant, lease, result.round), idempotencyKey, leaseMs)
    return result
  }

  /**
   * Takes the session's lease with the user message (a request that is refused stores nothing);
   * the cache writes of both start at once and are awaited before the reply's own.
   */
  private async takeLease (tenant: string, cached: SessionRecord, leaseMs: number, input: PostMessageInput, idempotencyKey?: string): Promise<{ lease: Lease; cacheWrites: Promise<unknown> }> {
    const { metrics, sessions, history } = this.options
    const lease = await this.replies.takeLease(tenant, cached.id, leaseMs, input.content, input.metadata ?? {}, idempotencyKey).catch(async (err) => {
      if (err instanceof DomainError && err.kind === 'busy') metrics.lockConflicts.inc({ kind: 'busy' })
      // The cached record said active; the row says otherwise: drop the stale record.
      if (err instanceof DomainError && (err.kind === 'gone' || err.kind === 'not_found')) await sessions.forget(cached.id)
      throw err
    })
    metrics.messages.inc({ role: 'user' })
    const cacheWrites = Promise.all([sessions.cacheRecord(lease.session), history.append(cached.id, lease.message)]).catch(() => undefined)
    return { lease, cacheWrites }
  }

  /**
   * The model's context: the newest CONTEXT_MESSAGES messages, ending with this request's. When the
   * cached record was current (no message stored since), the list read with it holds the messages
   * before this one; otherwise they are read again once this request's cache writes are done.
   */
  private async context (lease: Lease, cached: SessionRecord, list: SeqListSnapshot | undefined, cacheWrites: Promise<unknown>): Promise<Message[]> {
    const { pool, history, contextMessages } = this.options
    if (contextMessages <= 1) return [lease.message]
    if (lease.session.lastSeq === cached.lastSeq + 1) {
      const before = await history.recent(pool, cached.id, cached.lastSeq, contextMessages - 1, { list })
      return [...before, lease.message]
    }
    await cacheWrites
    return history.recent(pool, cached.id, lease.session.lastSeq, contextMessages)
  }

  /** A reply that is not stored, or a round: lease released, events recorded, the outcome kept for the key. */
  private async endLease (tenant: string, lease: Lease, outcome: StoredOutcome, events: NewEvent[], idempotencyKey: string | undefined, leaseMs: number): Promise<void> {
    const recordOutcome = idempotencyKey === undefined
      ? undefined
      : (db: pg.PoolClient) => this.options.idempotency.complete(db, tenant, idempotencyKey, outcome)
    await this.replies.endLease(lease, events, recordOutcome).catch((err) => {
      this.options.log.error({ err: { message: (err as Error).message }, sessionId: lease.session.id }, 'could not record a reply that was not stored')
      this.replies.releaseEventually(lease, leaseMs)
    })
  }

  private candidates (session: SessionRecord): AgentDefinition[] {
    const { agents } = this.options
    return session.agents.filter((id) => agents.has(id)).map((id) => agents.get(id) as AgentDefinition)
  }

  /** The agent that answers: the client's, else the LLM router's pick (ROUTER=llm), else expertise scoring. */
  private async select (session: SessionRecord, input: PostMessageInput): Promise<AgentSelection> {
    const { agents, router } = this.options
    const candidates = this.candidates(session)
    if (input.agent === undefined && router) {
      const routed = await router.pick(input.content, candidates.filter((agent) => !agents.isDown(agent.id)))
      if (routed && !agents.isDown(routed.id) && candidates.some((agent) => agent.id === routed.id)) {
        return { agent: routed, reason: 'router', matched: [], score: 0 }
      }
    }
    return selectAgent({ content: input.content, candidates, requested: input.agent, isDown: (id) => agents.isDown(id), resolve: (id) => agents.get(id) })
  }

  private assertAgentOf (session: SessionRecord, agentId: string): void {
    if (!this.options.agents.has(agentId)) {
      throw new DomainError('invalid', `Unknown agent: ${agentId}`, { code: 'UNKNOWN_AGENT', details: { unknown: [agentId] } })
    }
    if (!session.agents.includes(agentId)) {
      throw new DomainError('invalid', `Agent ${agentId} is not one of this session's agents (${session.agents.join(', ')})`, { code: 'AGENT_NOT_IN_SESSION' })
    }
  }
}

const selectionData = (selection: AgentSelection): Record<string, unknown> => ({ reason: selection.reason, matched: selection.matched, score: selection.score })

/** A failure after the user message was stored: its outcome is already recorded under the key. */
class ReplyFailed extends Error {
  constructor (override readonly cause: DomainError) {
    super(cause.message)
  }
}
