import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition, AgentSelection } from '../agents/agent.js'
import type { AgentRegistry } from '../agents/registry.js'
import { selectAgent } from '../agents/router.js'
import { withTransaction } from '../db/transaction.js'
import { DomainError, assertStorable } from '../domain-errors.js'
import { reasonPhrase } from '../errors.js'
import { recordEvents } from '../events/event-log.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'
import type { ChatTurn } from '../providers/provider.js'
import { SESSION_COLUMNS, assertActive, notFound, toRecord, type SessionRecord, type SessionRow, type SessionStore } from '../sessions/session-store.js'
import { requestHash, type IdempotencyKeys, type StoredOutcome } from './idempotency.js'
import { insertMessage, type Message, type MessageHistory } from './message-store.js'

export interface PostMessageInput {
  content: string
  agent?: string
  metadata?: Record<string, unknown>
}

/** The result of a post, as the JSON answer carries it and an idempotent retry replays it. */
export interface PostResult {
  message: Message
  reply: Message
}

export type PostOutcome = { replayed: false; result: PostResult } | { replayed: true; outcome: StoredOutcome }

/**
 * Where a reply goes as it is produced: the JSON route collects it, the SSE route streams it.
 * A sink whose client went away keeps accepting calls (and drops them): the reply is finished
 * and stored regardless.
 */
export interface ReplySink {
  message(message: Message): Promise<void> | void
  agent(selection: { agent: string; name: string; reason: AgentSelection['reason']; matched: string[]; provider: string; model: string }): Promise<void> | void
  delta(text: string): Promise<void> | void
}

export interface ConversationOptions {
  pool: pg.Pool
  sessions: SessionStore
  history: MessageHistory
  idempotency: IdempotencyKeys
  agents: AgentRegistry
  metrics: ConversationMetrics
  log: FastifyBaseLogger
  llmTimeoutMs: number
  contextMessages: number
  /** Aborted when the service shuts down past its drain deadline: running replies end with an error. */
  shutdownSignal: AbortSignal
}

/**
 * The conversation path: a user message in, a reply out, both committed in PostgreSQL before the
 * caller hears of them. One reply at a time per session, across replicas, by a lease on the session
 * row (no connection held while the model talks).
 */
export class ConversationService {
  constructor(private readonly options: ConversationOptions) {}

  /**
   * Posts a message and produces its reply. With an Idempotency-Key, a request seen before answers
   * its first outcome (`replayed`), whether that was a reply or a failure.
   */
  async post(tenant: string, sessionId: string, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<PostOutcome> {
    assertStorable('content', input.content)
    assertStorable('metadata', input.metadata)
    const session = await this.options.sessions.getActive(tenant, sessionId)
    if (input.agent !== undefined) this.assertAgentOf(session, input.agent)
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
      return { replayed: false, result: await this.reply(tenant, session, input, sink, idempotencyKey) }
    } catch (err) {
      if (err instanceof ReplyFailed) throw err.cause
      // Nothing was stored under the key: release it so that a retry can try again. (Once the user
      // message is stored the key is never released: the claim is linked to the message.)
      if (claimed) await this.options.idempotency.release(tenant, idempotencyKey as string).catch(() => undefined)
      throw err
    }
  }

  private async reply(tenant: string, cached: SessionRecord, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<PostResult> {
    const started = performance.now()
    const { pool, agents, metrics } = this.options
    let selection: AgentSelection | undefined
    const leaseMs = this.options.llmTimeoutMs + 5000
    // Identifies this request's lease (the exact timestamp), so only this request can release it.
    let leaseToken = ''

    // 1. Take the session's reply lease and store the user message, with its events, at once.
    const { session, message } = await withTransaction(pool, async (client) => {
      const { rows } = await client.query<SessionRow>(
        `UPDATE sessions
            SET last_seq = last_seq + 1, message_count = message_count + 1,
                reply_lease_until = now() + make_interval(secs => $3 / 1000.0)
          WHERE id = $1 AND tenant = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > now())
            AND (reply_lease_until IS NULL OR reply_lease_until < now())
          RETURNING ${SESSION_COLUMNS}, reply_lease_until::text AS lease_token`,
        [cached.id, tenant, leaseMs]
      )
      if (!rows[0]) await this.refuse(client, tenant, cached.id)
      const session = toRecord(rows[0] as SessionRow)
      leaseToken = (rows[0] as SessionRow & { lease_token: string }).lease_token
      selection = this.select(session, input)
      const message = await insertMessage(client, { sessionId: session.id, seq: session.lastSeq, role: 'user', content: input.content, metadata: input.metadata })
      if (idempotencyKey) await this.options.idempotency.attachMessage(client, tenant, idempotencyKey, message.id)
      await recordEvents(client, [
        { type: 'message.created', tenant, sessionId: session.id, data: { messageId: message.id, seq: message.seq, role: 'user' } },
        { type: 'agent.selected', tenant, sessionId: session.id, agentId: selection.agent.id, data: { reason: selection.reason, matched: selection.matched, score: selection.score } }
      ])
      return { session, message }
    }).catch(async (err) => {
      // The cached record said active; the row says otherwise: drop the stale record.
      if (err instanceof DomainError && (err.kind === 'gone' || err.kind === 'not_found')) await this.options.sessions.forget(cached.id)
      throw err
    })
    metrics.messages.inc({ role: 'user' })
    await this.options.sessions.cacheRecord(session)
    await this.options.history.append(session.id, message)
    const chosen = (selection as AgentSelection).agent
    const provider = agents.providerFor(chosen)
    await sink.message(message)
    await sink.agent({
      agent: chosen.id,
      name: chosen.name,
      reason: (selection as AgentSelection).reason,
      matched: (selection as AgentSelection).matched,
      provider: provider.name,
      model: chosen.model
    })

    // 2. Let the model answer, streaming its deltas to the sink.
    let text = ''
    let usage = { inputTokens: 0, outputTokens: 0 }
    try {
      const context = await this.options.history.recent(pool, session.id, session.lastSeq, this.options.contextMessages)
      const signal = AbortSignal.any([AbortSignal.timeout(this.options.llmTimeoutMs), this.options.shutdownSignal])
      for await (const chunk of provider.stream({
        model: chosen.model,
        systemPrompt: chosen.systemPrompt,
        messages: context.map((m): ChatTurn => ({ role: m.role, content: m.content })),
        temperature: chosen.temperature,
        maxTokens: chosen.maxTokens,
        signal
      })) {
        if (chunk.type === 'delta') {
          text += chunk.text
          await sink.delta(chunk.text)
        } else {
          usage = { inputTokens: chunk.inputTokens, outputTokens: chunk.outputTokens }
        }
        if (signal.aborted) throw signal.reason
      }
    } catch (err) {
      const failure = this.describeFailure(err, chosen, message.id)
      await this.fail(tenant, session, chosen, failure, idempotencyKey, leaseToken, leaseMs)
      metrics.replyLatency.observe({ agent: chosen.id, outcome: 'error' }, (performance.now() - started) / 1000)
      throw new ReplyFailed(failure)
    }

    // 3. Store the reply, release the lease, record the outcome for the idempotency key: one commit.
    const latencyMs = Math.round(performance.now() - started)
    const result = await this.storeReply(tenant, session, chosen, provider.name, text, usage, latencyMs, message, idempotencyKey).catch((err) => {
      // The database went away after the model answered: free the session as soon as it is back,
      // rather than at the lease's expiry.
      this.releaseLeaseEventually(session.id, leaseToken, leaseMs)
      throw err
    })
    metrics.messages.inc({ role: 'assistant' })
    metrics.replyLatency.observe({ agent: chosen.id, outcome: 'ok' }, latencyMs / 1000)
    await this.options.sessions.cacheRecord(result.updated)
    await this.options.history.append(session.id, result.result.reply)
    return result.result
  }

  private storeReply(
    tenant: string,
    session: SessionRecord,
    chosen: AgentDefinition,
    providerName: string,
    text: string,
    usage: { inputTokens: number; outputTokens: number },
    latencyMs: number,
    message: Message,
    idempotencyKey: string | undefined
  ): Promise<{ result: PostResult; updated: SessionRecord }> {
    return withTransaction(this.options.pool, async (client) => {
      const { rows } = await client.query<SessionRow>(
        `UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = NULL
          WHERE id = $1 RETURNING ${SESSION_COLUMNS}`,
        [session.id]
      )
      const updated = toRecord(rows[0] as SessionRow)
      const reply = await insertMessage(client, {
        sessionId: session.id,
        seq: updated.lastSeq,
        role: 'assistant',
        content: text,
        agent: chosen.id,
        provider: providerName,
        model: chosen.model,
        inputTokens: usage.inputTokens,
        outputTokens: usage.outputTokens,
        latencyMs
      })
      await client.query(
        `INSERT INTO agent_states (session_id, agent_id, reply_count, input_tokens, output_tokens, last_used_at)
         VALUES ($1, $2, 1, $3, $4, now())
         ON CONFLICT (session_id, agent_id) DO UPDATE
           SET reply_count = agent_states.reply_count + 1,
               input_tokens = agent_states.input_tokens + EXCLUDED.input_tokens,
               output_tokens = agent_states.output_tokens + EXCLUDED.output_tokens,
               last_used_at = now()`,
        [session.id, chosen.id, usage.inputTokens, usage.outputTokens]
      )
      await recordEvents(client, [
        { type: 'message.created', tenant, sessionId: session.id, agentId: chosen.id, data: { messageId: reply.id, seq: reply.seq, role: 'assistant' } }
      ])
      const result: PostResult = { message, reply }
      if (idempotencyKey) await this.options.idempotency.complete(client, tenant, idempotencyKey, { statusCode: 201, body: result })
      return { result, updated }
    })
  }

  /** Why the lease could not be taken: unknown, ended, or a reply already running. */
  private async refuse(client: pg.PoolClient, tenant: string, id: string): Promise<never> {
    const { rows } = await client.query<SessionRow & { lease_ms: number | null }>(
      `SELECT ${SESSION_COLUMNS}, (extract(epoch FROM reply_lease_until - now()) * 1000)::int AS lease_ms FROM sessions WHERE id = $1`,
      [id]
    )
    const row = rows[0]
    if (!row || row.tenant !== tenant) throw notFound()
    assertActive(toRecord(row), Date.now())
    this.options.metrics.lockConflicts.inc({ kind: 'busy' })
    throw new DomainError('busy', 'A reply in this session is still being produced; retry when it is done', {
      code: 'SESSION_BUSY',
      retryAfterSeconds: Math.max(1, Math.min(5, Math.ceil((row.lease_ms ?? 1000) / 1000)))
    })
  }

  private select(session: SessionRecord, input: PostMessageInput): AgentSelection {
    const { agents } = this.options
    const candidates = session.agents.filter((id) => agents.has(id)).map((id) => agents.get(id) as AgentDefinition)
    if (candidates.length === 0) throw new DomainError('invalid', 'None of this session\'s agents exists any more: PATCH its agents', { code: 'NO_AGENTS' })
    return selectAgent({ content: input.content, candidates, requested: input.agent, isDown: (id) => agents.isDown(id), resolve: (id) => agents.get(id) })
  }

  private assertAgentOf(session: SessionRecord, agentId: string): void {
    if (!this.options.agents.has(agentId)) {
      throw new DomainError('invalid', `Unknown agent: ${agentId}`, { code: 'UNKNOWN_AGENT', details: { unknown: [agentId] } })
    }
    if (!session.agents.includes(agentId)) {
      throw new DomainError('invalid', `Agent ${agentId} is not one of this session's agents (${session.agents.join(', ')})`, { code: 'AGENT_NOT_IN_SESSION' })
    }
  }

  /** The client-facing failure; `details.messageId` tells the caller its message was stored. */
  private describeFailure(err: unknown, agent: AgentDefinition, messageId: string): DomainError {
    const details = { messageId }
    if (err instanceof DomainError) return new DomainError(err.kind, err.message, { ...err.extra, details })
    if (this.options.shutdownSignal.aborted) {
      return new DomainError('unavailable', 'The server is shutting down; the reply was not finished. Retry the message.', { code: 'SHUTTING_DOWN', retryAfterSeconds: 1, details })
    }
    const name = (err as Error | undefined)?.name
    if (name === 'TimeoutError' || name === 'AbortError') {
      return new DomainError('timeout', `Agent "${agent.id}" did not finish its reply within ${this.options.llmTimeoutMs} ms`, { code: 'LLM_TIMEOUT', details })
    }
    this.options.log.warn({ err, agent: agent.id }, 'agent reply failed')
    return new DomainError('bad_gateway', `Agent "${agent.id}" failed to reply: ${(err as Error | undefined)?.message ?? 'unknown error'}`, { code: 'LLM_ERROR', details })
  }

  /** A failed reply: the user message stays, the lease is released, the failure is an event. */
  private async fail(tenant: string, session: SessionRecord, agent: AgentDefinition, failure: DomainError, idempotencyKey: string | undefined, leaseToken: string, leaseMs: number): Promise<void> {
    await withTransaction(this.options.pool, async (client) => {
      await client.query('UPDATE sessions SET reply_lease_until = NULL WHERE id = $1 AND reply_lease_until = $2::timestamptz', [session.id, leaseToken])
      await recordEvents(client, [
        { type: 'agent.failed', tenant, sessionId: session.id, agentId: agent.id, data: { code: failure.code, message: failure.message, ...(failure.details as object) } }
      ])
      if (idempotencyKey) {
        const body = { statusCode: failure.statusCode, error: reasonPhrase(failure.statusCode), message: failure.message, code: failure.code, details: failure.details }
        await this.options.idempotency.complete(client, tenant, idempotencyKey, { statusCode: failure.statusCode, body })
      }
    }).catch((err) => {
      this.options.log.error({ err: { message: (err as Error).message }, sessionId: session.id }, 'could not record a failed reply')
      this.releaseLeaseEventually(session.id, leaseToken, leaseMs)
    })
  }

  /**
   * Releases this request's reply lease in the background, retrying while the database is away,
   * until the lease would have expired anyway. A newer lease (another request's) is never touched.
   */
  private releaseLeaseEventually(sessionId: string, leaseToken: string, leaseMs: number): void {
    const giveUpAt = Date.now() + leaseMs
    const attempt = () => {
      this.options.pool
        .query('UPDATE sessions SET reply_lease_until = NULL WHERE id = $1 AND reply_lease_until = $2::timestamptz', [sessionId, leaseToken])
        .catch(() => {
          if (Date.now() < giveUpAt) setTimeout(attempt, 500).unref()
        })
    }
    attempt()
  }
}

/** A failure after the user message was stored: its outcome is already recorded under the key. */
class ReplyFailed extends Error {
  constructor(override readonly cause: DomainError) {
    super(cause.message)
  }
}
