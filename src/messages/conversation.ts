import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import type { SeqListSnapshot } from '../cache/cache.js'
import type { AgentDefinition, AgentSelection } from '../agents/agent.js'
import type { LlmRouter } from '../agents/llm-router.js'
import { CircuitOpenError, deadline, type Deadline, type ProviderGuard } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'
import { selectAgent } from '../agents/router.js'
import { afterCommit, withTransaction, type Queryable } from '../db/transaction.js'
import { DomainError, assertStorable } from '../domain-errors.js'
import { reasonPhrase } from '../errors.js'
import { NOTIFY_PAYLOAD, announce, recordEvents } from '../events/event-log.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import { ProviderError, type ChatTurn } from '../providers/provider.js'
import { SESSION_COLUMNS, assertActive, notFound, toRecord, type SessionRecord, type SessionRow, type SessionStore } from '../sessions/session-store.js'
import { requestHash, type IdempotencyKeys, type StoredOutcome } from './idempotency.js'
import { MESSAGE_COLUMNS, toMessage, type Message, type MessageHistory, type MessageRow } from './message-store.js'

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
  /**
   * Whether deltas reach a client as they come (SSE). When not (a JSON reply), the provider is asked
   * for the whole answer in one response.
   */
  readonly live: boolean
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
  /** Retries and circuit breakers around every provider call. */
  guard: ProviderGuard
  /** ROUTER=llm: the router that picks an agent when the client names none. */
  router?: LlmRouter | undefined
  metrics: ConversationMetrics
  llmMetrics: LlmMetrics
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
  /** Sessions this replica is producing a reply in (their lease is held here). */
  private readonly replying = new Set<string>()

  constructor (private readonly options: ConversationOptions) {}

  /**
   * Posts a message and produces its reply. With an Idempotency-Key, a request seen before answers
   * its first outcome (`replayed`), whether that was a reply or a failure.
   */
  async post (tenant: string, sessionId: string, input: PostMessageInput, sink: ReplySink, idempotencyKey?: string): Promise<PostOutcome> {
    assertStorable('content', input.content)
    assertStorable('metadata', input.metadata)
    // The record and the cached history (the model's context) in one round trip.
    const { session, list } = await this.options.history.activeSession(this.options.sessions, tenant, sessionId)
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
      return { replayed: false, result: await this.reply(tenant, session, list, input, sink, idempotencyKey) }
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
    const { pool, agents, metrics } = this.options
    const leaseMs = this.options.llmTimeoutMs + 5000
    // ROUTER=llm asks its model before any transaction: no row is locked while a model thinks.
    const routed = input.agent === undefined && this.options.router ? await this.options.router.pick(input.content, this.candidates(cached).filter((agent) => !agents.isDown(agent.id))) : undefined
    // The agent is chosen from the cached record's agents (write-through, dropped on PATCH).
    const selection = this.select(cached, input, routed)
    const chosen = selection.agent
    // The context before this message (checked against the stored row below).
    const contextBefore = this.options.contextMessages > 1
      ? this.options.history.recent(pool, cached.id, cached.lastSeq, this.options.contextMessages - 1, { list }).catch(() => undefined)
      : Promise.resolve([] as Message[])

    // 1. Take the session's reply lease and store the user message, with its events, at once: one
    //    statement (one round trip, atomic by itself), so the pool connection is held for one commit.
    //    Named: each pooled connection parses and plans the statement once, then only binds values.
    const storing = pool.query<SessionRow & PrefixedMessageRow & { lease_token: string; notify_payload: string }>({
      name: 'smalltalk-take-lease',
      text: TAKE_LEASE_AND_STORE_MESSAGE,
      values: [
        cached.id,
        tenant,
        leaseMs,
        input.content,
        input.metadata ?? {},
        idempotencyKey ?? null,
        chosen.id,
        JSON.stringify({ reason: selection.reason, matched: selection.matched, score: selection.score })
      ]
    })
    storing.catch(() => undefined) // awaited below; this only keeps a failure from counting as unhandled meanwhile

    // 2. The model is asked while that statement commits: it is sent only roles and texts, all known
    //    already. What it produces waits behind a gate until the message is stored and announced;
    //    if the statement refuses (a reply running, the session ended) or fails, the call is dropped.
    //    Not when this replica is itself producing a reply in the session: the lease will refuse.
    const gate = new SinkGate(sink)
    const before = await contextBefore
    let producing: Producing | undefined
    if (before && !this.replying.has(cached.id)) producing = this.startProducing(chosen, [...turnsOf(before), { role: 'user', content: input.content }], gate)

    let rows: Array<SessionRow & PrefixedMessageRow & { lease_token: string; notify_payload: string }>
    try {
      rows = (await storing).rows
      if (!rows[0]) {
        await this.refuse(tenant, cached.id).catch(async (err) => {
          // The cached record said active; the row says otherwise: drop the stale record.
          if (err instanceof DomainError && (err.kind === 'gone' || err.kind === 'not_found')) await this.options.sessions.forget(cached.id)
          throw err
        })
      }
    } catch (err) {
      await producing?.abandon()
      throw err
    }
    const session = toRecord(rows[0] as SessionRow)
    // Identifies this request's lease (the exact timestamp), so only this request can release it.
    const leaseToken = (rows[0] as { lease_token: string }).lease_token
    const message = toMessage(unprefixMessage(rows[0] as PrefixedMessageRow))
    announce(pool, (rows[0] as { notify_payload: string }).notify_payload)
    metrics.messages.inc({ role: 'user' })
    this.replying.add(session.id)
    try {
      // Both cache writes at once, while the model is asked; awaited before the reply's own cache
      // writes (so the history list grows in order) and before anything is answered.
      const cacheWrites = Promise.all([this.options.sessions.cacheRecord(session), this.options.history.append(session.id, message)]).catch(() => undefined)
      // The context read was of the cached record's history: if the row shows another message
      // stored since, the model was asked with a context that misses it. Ask again.
      const contextCurrent = before !== undefined && session.lastSeq === cached.lastSeq + 1
      if (producing && !contextCurrent) {
        await producing.abandon()
        producing = undefined
      }
      await sink.message(message)
      await sink.agent({
        agent: chosen.id,
        name: chosen.name,
        reason: selection.reason,
        matched: selection.matched,
        provider: agents.providerFor(chosen).name,
        model: chosen.model
      })

      let answer: Answer
      try {
        if (!producing) {
          let context: Message[]
          if (contextCurrent) {
            context = [...before, message]
          } else {
            // The cached record was behind the row: read the context again, after the writes.
            await cacheWrites
            context = await this.options.history.recent(pool, session.id, session.lastSeq, this.options.contextMessages)
          }
          producing = this.startProducing(chosen, turnsOf(context), gate)
        }
        await gate.open()
        answer = await producing.answer
      } catch (err) {
        await cacheWrites
        const failure = this.describeFailure(err, chosen, message.id)
        await this.fail(tenant, session, chosen, failure, idempotencyKey, leaseToken, leaseMs)
        metrics.replyLatency.observe({ agent: chosen.id, outcome: 'error' }, (performance.now() - started) / 1000)
        throw new ReplyFailed(failure)
      }

      // 3. Store the reply, release the lease, record the outcome for the idempotency key: one commit.
      const latencyMs = Math.round(performance.now() - started)
      const result = await this.storeReply(tenant, session, answer, latencyMs, message, idempotencyKey).catch((err) => {
        // The database went away after the model answered: free the session as soon as it is back,
        // rather than at the lease's expiry.
        this.releaseLeaseEventually(session.id, leaseToken, leaseMs)
        throw err
      })
      metrics.messages.inc({ role: 'assistant' })
      metrics.replyLatency.observe({ agent: answer.agent.id, outcome: 'ok' }, latencyMs / 1000)
      await cacheWrites
      await Promise.all([this.options.sessions.cacheRecord(result.updated), this.options.history.append(session.id, result.result.reply)])
      return result.result
    } finally {
      this.replying.delete(session.id)
    }
  }

  /**
   * Starts `produce` under its own reply deadline (LLM_TIMEOUT_MS) and returns at once: `answer`
   * settles with the reply, `abandon()` stops a call whose message was not stored (or was asked with
   * a stale context) and waits until it has let go.
   */
  private startProducing (first: AgentDefinition, messages: ChatTurn[], sink: ReplySink): Producing {
    const replyDeadline = deadline(this.options.llmTimeoutMs, this.options.shutdownSignal)
    const answer = this.produceWithin(first, messages, sink, replyDeadline).finally(() => replyDeadline.dispose())
    answer.catch(() => undefined) // awaited by the caller, or dropped by abandon()
    return {
      answer,
      abandon: async () => {
        replyDeadline.abort(new DOMException('the message was not stored: the reply is dropped', 'AbortError'))
        await answer.catch(() => undefined)
      }
    }
  }

  /**
   * Runs the chosen agent's reply through the provider guard (retries, breaker). When it fails before
   * any delta reached the client, the next agent up along its `fallback` chain answers, within the
   * same LLM_TIMEOUT_MS deadline. A failure after a delta was sent ends the reply (never restarted,
   * so the client never sees two different beginnings).
   */
  private async produceWithin (first: AgentDefinition, messages: ChatTurn[], sink: ReplySink, replyDeadline: Deadline): Promise<Answer> {
    const { signal } = replyDeadline
    const { agents, guard, llmMetrics, log } = this.options
    const tried = new Set<string>()
    const failures: unknown[] = []
    let agent = first
    let sent = false
    for (;;) {
      tried.add(agent.id)
      const provider = agents.providerFor(agent)
      try {
        const { text, usage } = await guard.run({
          agent,
          provider,
          request: { model: agent.model, systemPrompt: agent.systemPrompt, messages, temperature: agent.temperature, maxTokens: agent.maxTokens, stream: sink.live },
          signal,
          deadlineAt: replyDeadline.at,
          onDelta: (text) => {
            sent = true
            return sink.delta(text)
          }
        })
        return { agent, providerName: provider.name, text, usage, fallbackFrom: agent === first ? undefined : first }
      } catch (err) {
        failures.push(err)
        const next = sent || signal.aborted ? undefined : this.nextFallback(agent, tried)
        if (!next) throw new ProduceFailed(failures, sent)
        llmMetrics.fallbacks.inc({ agent: agent.id, fallback: next.id })
        log.warn({ agent: agent.id, fallback: next.id, err: { name: (err as Error).name, message: (err as Error).message } }, 'agent failed before its first token; its fallback answers')
        await sink.agent({ agent: next.id, name: next.name, reason: 'fallback', matched: [], provider: agents.providerFor(next).name, model: next.model })
        agent = next
      }
    }
  }

  /** The first agent along `agent`'s fallback chain that is not down and was not tried yet. */
  private nextFallback (agent: AgentDefinition, tried: Set<string>): AgentDefinition | undefined {
    const { agents } = this.options
    const seen = new Set<string>([agent.id])
    let next = agent.fallback === undefined ? undefined : agents.get(agent.fallback)
    while (next && !seen.has(next.id)) {
      if (!tried.has(next.id) && !agents.isDown(next.id)) return next
      seen.add(next.id)
      next = next.fallback === undefined ? undefined : agents.get(next.fallback)
    }
    return undefined
  }

  /**
   * Stores the reply, releases the lease, counts the agent's usage and records the events: one
   * statement. With an Idempotency-Key, the outcome is recorded under it in the same transaction.
   */
  private async storeReply (
    tenant: string,
    session: SessionRecord,
    answer: Answer,
    latencyMs: number,
    message: Message,
    idempotencyKey: string | undefined
  ): Promise<{ result: PostResult; updated: SessionRecord }> {
    const { agent, providerName, text, usage } = answer
    const params = [
      session.id,
      tenant,
      text,
      agent.id,
      providerName,
      agent.model,
      usage.inputTokens,
      usage.outputTokens,
      latencyMs,
      answer.fallbackFrom ? JSON.stringify({ reason: 'fallback', fallbackFrom: answer.fallbackFrom.id }) : null
    ]
    const store = async (db: Queryable) => {
      // Named: each pooled connection parses and plans the statement once, then only binds values.
      const { rows } = await db.query<SessionRow & PrefixedMessageRow & { notify_payload: string }>({ name: 'smalltalk-store-reply', text: STORE_REPLY, values: params })
      const row = rows[0] as SessionRow & PrefixedMessageRow & { notify_payload: string }
      if (!afterCommit(db, (pool) => announce(pool, row.notify_payload))) announce(this.options.pool, row.notify_payload)
      return { result: { message, reply: toMessage(unprefixMessage(row)) }, updated: toRecord(row) }
    }
    if (!idempotencyKey) return store(this.options.pool)
    return withTransaction(this.options.pool, async (client) => {
      const stored = await store(client)
      await this.options.idempotency.complete(client, tenant, idempotencyKey, { statusCode: 201, body: stored.result })
      return stored
    })
  }

  /** Why the lease could not be taken: unknown, ended, or a reply already running. */
  private async refuse (tenant: string, id: string): Promise<never> {
    const { rows } = await this.options.pool.query<SessionRow & { lease_ms: number | null }>(
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

  private candidates (session: SessionRecord): AgentDefinition[] {
    const { agents } = this.options
    return session.agents.filter((id) => agents.has(id)).map((id) => agents.get(id) as AgentDefinition)
  }

  /** The agent that answers: the client's, else the LLM router's pick (`routed`) if still valid, else scoring. */
  private select (session: SessionRecord, input: PostMessageInput, routed?: AgentDefinition): AgentSelection {
    const { agents } = this.options
    const candidates = this.candidates(session)
    if (candidates.length === 0) throw new DomainError('invalid', 'None of this session\'s agents exists any more: PATCH its agents', { code: 'NO_AGENTS' })
    if (routed && !agents.isDown(routed.id) && candidates.some((agent) => agent.id === routed.id)) {
      return { agent: routed, reason: 'router', matched: [], score: 0 }
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

  /**
   * The client-facing failure; `details.messageId` tells the caller its message was stored. A
   * provider's auth or request error is a 502 naming the agent, the deadline a 504, exhausted
   * retries a 502, every breaker open a 503 with Retry-After, a stream broken after its first delta
   * a 502 that says the partial text was not kept.
   */
  private describeFailure (err: unknown, agent: AgentDefinition, messageId: string): DomainError {
    const details: Record<string, unknown> = { messageId }
    const failures = err instanceof ProduceFailed ? err.failures : [err]
    const streamed = err instanceof ProduceFailed && err.afterFirstDelta
    const last = failures[failures.length - 1]
    if (last instanceof DomainError) return new DomainError(last.kind, last.message, { ...last.extra, details })
    if (this.options.shutdownSignal.aborted) {
      return new DomainError('unavailable', 'The server is shutting down; the reply was not finished. Retry the message.', { code: 'SHUTTING_DOWN', retryAfterSeconds: 1, details })
    }
    const name = (last as Error | undefined)?.name
    if (name === 'TimeoutError' || name === 'AbortError') {
      return new DomainError('timeout', `Agent "${agent.id}" did not finish its reply within ${this.options.llmTimeoutMs} ms`, { code: 'LLM_TIMEOUT', details })
    }
    const tried = failures.length > 1 ? ` (its fallback${failures.length > 2 ? 's' : ''} failed too)` : ''
    if (streamed) {
      this.options.log.warn({ err: describeError(last), agent: agent.id }, 'agent reply broke off mid-stream')
      return new DomainError('bad_gateway', `Agent "${agent.id}"'s reply broke off before it was finished (${describeError(last).message}); the partial reply was not stored. Retry the message.`, { code: 'LLM_STREAM_INTERRUPTED', details })
    }
    if (failures.every((failure) => failure instanceof CircuitOpenError)) {
      const waitMs = Math.min(...failures.map((failure) => (failure as CircuitOpenError).retryAfterMs))
      return new DomainError('unavailable', `Agent "${agent.id}" is unavailable: its provider failed repeatedly and is paused${tried}. Retry later.`, {
        code: 'LLM_UNAVAILABLE',
        retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)),
        details
      })
    }
    // The first real provider error says most about the agent the client got.
    const cause = failures.find((failure) => !(failure instanceof CircuitOpenError)) ?? last
    this.options.log.warn({ err: describeError(cause), agent: agent.id, attempts: failures.length }, 'agent reply failed')
    if (cause instanceof ProviderError) {
      details.provider = cause.provider
      if (cause.status !== undefined) details.providerStatus = cause.status
      if (cause.kind === 'auth') {
        return new DomainError('bad_gateway', `Agent "${agent.id}": ${cause.provider} refused the credentials${cause.status ? ` (${cause.status})` : ''}; check the provider's API key${tried}`, { code: 'LLM_AUTH_ERROR', details })
      }
      if (cause.kind === 'bad_request') {
        return new DomainError('bad_gateway', `Agent "${agent.id}": ${cause.provider} rejected the request: ${cause.message}${tried}`, { code: 'LLM_REQUEST_REJECTED', details })
      }
      return new DomainError('bad_gateway', `Agent "${agent.id}" failed to reply after retries: ${cause.message}${tried}`, { code: 'LLM_ERROR', details })
    }
    return new DomainError('bad_gateway', `Agent "${agent.id}" failed to reply: ${describeError(cause).message}${tried}`, { code: 'LLM_ERROR', details })
  }

  /** A failed reply: the user message stays, the lease is released, the failure is an event. */
  private async fail (tenant: string, session: SessionRecord, agent: AgentDefinition, failure: DomainError, idempotencyKey: string | undefined, leaseToken: string, leaseMs: number): Promise<void> {
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
  private releaseLeaseEventually (sessionId: string, leaseToken: string, leaseMs: number): void {
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

// The message columns of a statement that also returns the session's: prefixed with m_.
const PREFIXED_MESSAGE_COLUMNS = MESSAGE_COLUMNS.split(', ')
  .map((column) => `m.${column} AS m_${column}`)
  .join(', ')

type PrefixedMessageRow = { [K in keyof MessageRow as `m_${K & string}`]: MessageRow[K] }

function unprefixMessage (row: PrefixedMessageRow): MessageRow {
  const message: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(row)) if (key.startsWith('m_')) message[key.slice(2)] = value
  return message as unknown as MessageRow
}

/**
 * Step 1 of a reply, one statement: take the lease (only if none is running and the session is
 * active), store the user message at the next seq, link it to the Idempotency-Key ($6, may be null),
 * record message.created and agent.selected. No row back: no lease. The caller announces the events
 * after the statement (`announce`: never inside the writing transaction).
 */
export const TAKE_LEASE_AND_STORE_MESSAGE = `
WITH s AS (
  UPDATE sessions
     SET last_seq = last_seq + 1, message_count = message_count + 1,
         reply_lease_until = now() + make_interval(secs => $3 / 1000.0)
   WHERE id = $1 AND tenant = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > now())
     AND (reply_lease_until IS NULL OR reply_lease_until < now())
  RETURNING ${SESSION_COLUMNS}, reply_lease_until::text AS lease_token
), m AS (
  INSERT INTO chat_messages (session_id, seq, role, content, metadata)
  SELECT id, last_seq, 'user', $4, $5 FROM s
  RETURNING ${MESSAGE_COLUMNS}, session_id
), k AS (
  UPDATE idempotency_keys SET message_id = m.id FROM m
   WHERE $6::text IS NOT NULL AND idempotency_keys.tenant = $2 AND idempotency_keys.key = $6
), e AS (
  INSERT INTO event_logs (type, tenant, session_id, agent_id, data)
  SELECT v.type, $2, m.session_id, v.agent_id, v.data
    FROM m, LATERAL (VALUES
      ('message.created', NULL::text, jsonb_build_object('messageId', m.id, 'seq', m.seq, 'role', 'user')),
      ('agent.selected', $7::text, $8::jsonb)
    ) AS v(type, agent_id, data)
  RETURNING id, type
)
SELECT s.*, ${PREFIXED_MESSAGE_COLUMNS}, (SELECT ${NOTIFY_PAYLOAD} FROM e) AS notify_payload
  FROM s, m`

/**
 * Step 3 of a reply, one statement: store the reply at the next seq, release the lease, count the
 * agent's usage in agent_states, record message.created (after agent.selected when a fallback
 * answered, $10). The caller announces the events after the commit.
 */
export const STORE_REPLY = `
WITH s AS (
  UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = NULL
   WHERE id = $1
  RETURNING ${SESSION_COLUMNS}
), m AS (
  INSERT INTO chat_messages (session_id, seq, role, content, agent, provider, model, input_tokens, output_tokens, latency_ms)
  SELECT id, last_seq, 'assistant', $3, $4, $5, $6, $7, $8, $9 FROM s
  RETURNING ${MESSAGE_COLUMNS}, session_id
), a AS (
  INSERT INTO agent_states (session_id, agent_id, reply_count, input_tokens, output_tokens, last_used_at)
  VALUES ($1, $4, 1, $7, $8, now())
  ON CONFLICT (session_id, agent_id) DO UPDATE
    SET reply_count = agent_states.reply_count + 1,
        input_tokens = agent_states.input_tokens + EXCLUDED.input_tokens,
        output_tokens = agent_states.output_tokens + EXCLUDED.output_tokens,
        last_used_at = now()
), e AS (
  INSERT INTO event_logs (type, tenant, session_id, agent_id, data)
  SELECT v.type, $2, m.session_id, $4, v.data
    FROM m, LATERAL (VALUES
      (1, 'agent.selected', $10::jsonb),
      (2, 'message.created', jsonb_build_object('messageId', m.id, 'seq', m.seq, 'role', 'assistant'))
    ) AS v(n, type, data)
   WHERE v.data IS NOT NULL
   ORDER BY v.n
  RETURNING id, type
)
SELECT s.*, ${PREFIXED_MESSAGE_COLUMNS}, (SELECT ${NOTIFY_PAYLOAD} FROM e) AS notify_payload
  FROM s, m`

/** What the model answered, and which agent it was (a fallback when the chosen one failed). */
/** A reply being produced (ConversationService.startProducing). */
interface Producing {
  answer: Promise<Answer>
  abandon(): Promise<void>
}

const turnsOf = (messages: Message[]): ChatTurn[] => messages.map((m) => ({ role: m.role, content: m.content }))

/**
 * Holds what a reply produces (deltas, a fallback's agent event) until `open()`, then replays it in
 * order and passes everything straight on: a model asked before its message was stored speaks to
 * the client only after the message event.
 */
class SinkGate implements ReplySink {
  private held: Array<() => Promise<void> | void> | undefined = []

  constructor (private readonly sink: ReplySink) {}

  get live (): boolean {
    return this.sink.live
  }

  message (message: Message): Promise<void> | void {
    return this.pass(() => this.sink.message(message))
  }

  agent (selection: Parameters<ReplySink['agent']>[0]): Promise<void> | void {
    return this.pass(() => this.sink.agent(selection))
  }

  delta (text: string): Promise<void> | void {
    return this.pass(() => this.sink.delta(text))
  }

  async open (): Promise<void> {
    // Calls made while replaying (a producer that resumed) queue behind the held ones.
    while (this.held && this.held.length > 0) {
      const next = this.held.shift() as () => Promise<void> | void
      await next()
    }
    this.held = undefined
  }

  private pass (call: () => Promise<void> | void): Promise<void> | void {
    if (!this.held) return call()
    this.held.push(call)
  }
}

interface Answer {
  agent: AgentDefinition
  providerName: string
  text: string
  usage: { inputTokens: number; outputTokens: number }
  /** The agent that was selected and failed before its first delta, when a fallback answered. */
  fallbackFrom: AgentDefinition | undefined
}

/** Every agent tried failed: the failures in order, and whether text had reached the client. */
class ProduceFailed extends Error {
  constructor (
    readonly failures: unknown[],
    readonly afterFirstDelta: boolean
  ) {
    super('the reply could not be produced')
  }
}

function describeError (err: unknown): { name: string; message: string } {
  return err instanceof Error ? { name: err.name, message: err.message } : { name: 'Error', message: String(err) }
}

/** A failure after the user message was stored: its outcome is already recorded under the key. */
class ReplyFailed extends Error {
  constructor (override readonly cause: DomainError) {
    super(cause.message)
  }
}
