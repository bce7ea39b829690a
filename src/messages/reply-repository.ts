import type pg from 'pg'
import { afterCommit, withTransaction, type Queryable } from '../db/transaction.js'
import { DomainError, type Failure } from '../domain-errors.js'
import { NOTIFY_PAYLOAD, announce, recordEvents, type NewEvent } from '../events/event-log.js'
import { SESSION_COLUMNS, assertActive, notFound, toRecord, withLiveStatus, type SessionRecord, type SessionRow } from '../sessions/session-store.js'
import { exchangeMetadata, type ToolExchange } from '../tools/tool-steps.js'
import { MESSAGE_COLUMNS, toMessage, type Message, type MessageRow } from './message-store.js'

/**
 * The one owner of a session row's message counters (`last_seq`, `message_count`) and of its reply
 * lease (`reply_lease_until`, `reply_lease_token`): every statement that changes them is here.
 *
 * A reply runs under a lease on the session row, taken in the statement that stores the user
 * message; no connection is held while the model talks. The lease has a token: only the request
 * that took it can store its reply or release it, and only while the session is active, so a reply
 * that outlived its lease, or whose session was deleted meanwhile, stores nothing.
 */
export class ReplyRepository {
  constructor (
    private readonly pool: pg.Pool,
    /**
     * The clock of a session's lifetime (SessionStore.now): expiry is judged by it, in SQL too. The
     * lease's own times are the database's, all of them, so they never mix with it.
     */
    private readonly now: () => number
  ) {}

  /**
   * Takes the session's reply lease for `leaseMs` and stores the user message at the next seq, with
   * its message.created event, linked to the Idempotency-Key when there is one: one statement. Throws
   * not_found, gone, or busy (a reply is running) when the lease cannot be taken; nothing is stored then.
   */
  async takeLease (tenant: string, sessionId: string, leaseMs: number, content: string, metadata: Record<string, unknown>, idempotencyKey: string | undefined): Promise<Lease> {
    const { rows } = await this.pool.query<SessionRow & PrefixedMessageRow & { lease_token: string; notify_payload: string }>({
      // Named: each pooled connection parses and plans the statement once, then only binds values.
      name: 'smalltalk-take-lease',
      text: TAKE_LEASE_AND_STORE_MESSAGE,
      values: [sessionId, tenant, leaseMs, content, metadata, idempotencyKey ?? null, new Date(this.now())]
    })
    const row = rows[0]
    if (!row) return this.refuse(tenant, sessionId)
    announce(this.pool, row.notify_payload)
    return { session: toRecord(row), message: toMessage(unprefixMessage(row)), token: row.lease_token }
  }

  /**
   * Stores the reply at the next seq and releases the lease, counts the agent's usage, records
   * agent.selected and message.created: one statement, and only under this lease in an active
   * session. With an Idempotency-Key, `onStored` records the outcome in the same transaction.
   * Undefined when nothing was stored (the lease is lost or the session ended): see `whyNotStored`.
   */
  async storeReply (lease: Lease, reply: NewReply, onStored?: (db: pg.PoolClient, stored: StoredReply) => Promise<void>, renewMs?: number): Promise<StoredReply | undefined> {
    const values = [
      lease.session.id,
      lease.session.tenant,
      reply.content,
      reply.agent,
      reply.provider,
      reply.model,
      reply.usage.inputTokens,
      reply.usage.outputTokens,
      reply.latencyMs,
      JSON.stringify(reply.selection.data),
      lease.token,
      reply.selection.agent,
      reply.fallback ? JSON.stringify(reply.fallback) : null,
      new Date(this.now()),
      renewMs ?? null
    ]
    const store = async (db: Queryable): Promise<StoredReply | undefined> => {
      const { rows } = await db.query<SessionRow & PrefixedMessageRow & { notify_payload: string }>({ name: 'smalltalk-store-reply', text: STORE_REPLY, values })
      const row = rows[0]
      if (!row) return undefined
      if (!afterCommit(db, (pool) => announce(pool, row.notify_payload))) announce(this.pool, row.notify_payload)
      return { session: toRecord(row), reply: toMessage(unprefixMessage(row)) }
    }
    if (!onStored) return store(this.pool)
    return withTransaction(this.pool, async (client) => {
      const stored = await store(client)
      if (stored) await onStored(client, stored)
      return stored
    })
  }

  /**
   * Stores a tool step's exchanges as `role: "tool"` messages at the next seqs, in order, with a
   * tool.finished event each: one statement, only under this lease in an active session (the lease
   * itself is kept for the reply). Undefined when nothing was stored (see `whyNotStored`).
   */
  async storeToolMessages (lease: Lease, agentId: string, exchanges: ToolExchange[]): Promise<Message[] | undefined> {
    const { rows } = await this.pool.query<MessageRow & { notify_payload: string }>({
      name: 'smalltalk-store-tool-messages',
      text: STORE_TOOL_MESSAGES,
      values: [
        lease.session.id,
        lease.session.tenant,
        lease.token,
        new Date(this.now()),
        agentId,
        exchanges.map((exchange) => exchange.content),
        exchanges.map((exchange) => JSON.stringify(exchangeMetadata(exchange))),
        exchanges.map((exchange) => exchange.latencyMs)
      ]
    })
    if (rows.length === 0) return undefined
    announce(this.pool, (rows[0] as { notify_payload: string }).notify_payload)
    return rows.map(toMessage)
  }

  /**
   * A group round's turn: stores the reply like storeReply but keeps the lease, renewed for
   * `renewMs` from now, for the next turn. Undefined when nothing was stored.
   */
  async storeTurn (lease: Lease, reply: NewReply, renewMs: number): Promise<StoredReply | undefined> {
    return this.storeReply(lease, reply, undefined, renewMs)
  }

  /**
   * Renews this request's lease for `renewMs` from now (a group round after a failed turn), only
   * while it holds it in an active session; false when the lease is lost or the session ended.
   */
  async renewLease (lease: Lease, renewMs: number): Promise<boolean> {
    const { rowCount } = await this.pool.query(
      `UPDATE sessions SET reply_lease_until = now() + make_interval(secs => $3 / 1000.0)
        WHERE id = $1 AND reply_lease_token = $2::uuid AND status = 'active' AND (expires_at IS NULL OR expires_at > $4)`,
      [lease.session.id, lease.token, renewMs, new Date(this.now())]
    )
    return rowCount === 1
  }

  /** Records events now, in their own transaction (a round's round.started, a failed turn's agent.failed). */
  async record (events: NewEvent[]): Promise<void> {
    await withTransaction(this.pool, (client) => recordEvents(client, events))
  }

  /**
   * Ends a reply that is not stored, or a group round: releases the lease (if still this request's)
   * and records the events (agent.failed, reply.discarded, round.finished) and, through
   * `inTransaction`, the idempotent outcome.
   */
  async endLease (lease: Lease, events: NewEvent[], inTransaction?: (db: pg.PoolClient) => Promise<void>): Promise<void> {
    await withTransaction(this.pool, async (client) => {
      await client.query(RELEASE_LEASE, [lease.session.id, lease.token])
      await recordEvents(client, events)
      await inTransaction?.(client)
    })
  }

  /** Why a reply could not be stored under `lease`: the session ended (gone) or the lease was lost. */
  async whyNotStored (lease: Lease): Promise<Failure> {
    const { rows } = await this.pool.query<SessionRow>(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE id = $1`, [lease.session.id])
    const row = rows[0]
    if (!row) return notFound().toFailure()
    if (withLiveStatus(toRecord(row), this.now()).status !== 'active') {
      return new DomainError('gone', `Session ${row.status === 'invalidated' ? 'invalidated' : 'expired'} while its reply was produced; the reply was not stored`, {
        code: row.status === 'invalidated' ? 'SESSION_INVALIDATED' : 'SESSION_EXPIRED'
      }).toFailure()
    }
    return new DomainError('conflict', 'The reply took longer than its lease on the session and was not stored; another reply may be running. Retry the message.', {
      code: 'REPLY_LEASE_LOST'
    }).toFailure()
  }

  /**
   * Releases this request's lease in the background, retrying while the database is away, until
   * the lease would have expired anyway. A newer lease (another request's) is never touched.
   */
  releaseEventually (lease: Lease, leaseMs: number): void {
    const giveUpAt = Date.now() + leaseMs
    const attempt = () => {
      this.pool.query(RELEASE_LEASE, [lease.session.id, lease.token]).catch(() => {
        if (Date.now() < giveUpAt) setTimeout(attempt, 500).unref()
      })
    }
    attempt()
  }

  /** Why the lease could not be taken: unknown, ended, or a reply already running. */
  private async refuse (tenant: string, id: string): Promise<never> {
    const { rows } = await this.pool.query<SessionRow & { lease_ms: number | null }>(
      `SELECT ${SESSION_COLUMNS}, (extract(epoch FROM reply_lease_until - now()) * 1000)::int AS lease_ms FROM sessions WHERE id = $1`,
      [id]
    )
    const row = rows[0]
    if (!row || row.tenant !== tenant) throw notFound()
    assertActive(toRecord(row), this.now())
    throw new DomainError('busy', 'A reply in this session is still being produced; retry when it is done', {
      code: 'SESSION_BUSY',
      retryAfterSeconds: Math.max(1, Math.min(5, Math.ceil((row.lease_ms ?? 1000) / 1000)))
    })
  }
}

/** A reply lease held by this request, with what its statement stored. */
export interface Lease {
  /** The session row right after the user message was stored. */
  session: SessionRecord
  /** The stored user message. */
  message: Message
  /** Identifies this lease: only its holder can store a reply under it or release it. */
  token: string
}

export interface NewReply {
  content: string
  agent: string
  provider: string
  model: string
  usage: { inputTokens: number; outputTokens: number }
  latencyMs: number
  /** The agent chosen to answer, and why (its agent.selected event). */
  selection: { agent: string; data: Record<string, unknown> }
  /** When the chosen agent failed and `agent`, its fallback, answered: that agent.selected event's data. */
  fallback?: Record<string, unknown> | undefined
}

export interface StoredReply {
  /** The session row after the reply (lease released). */
  session: SessionRecord
  reply: Message
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

const RELEASE_LEASE = 'UPDATE sessions SET reply_lease_until = NULL, reply_lease_token = NULL WHERE id = $1 AND reply_lease_token = $2::uuid'

/**
 * Take the lease (only if none is running and the session is active), store the user message at the
 * next seq, link it to the Idempotency-Key ($6, may be null), record message.created; the session's
 * expiry judged at $7 (the sessions' clock). No row back:
 * no lease, nothing stored. The caller announces the event after the statement (never inside it).
 */
export const TAKE_LEASE_AND_STORE_MESSAGE = `
WITH s AS (
  UPDATE sessions
     SET last_seq = last_seq + 1, message_count = message_count + 1,
         reply_lease_until = now() + make_interval(secs => $3 / 1000.0), reply_lease_token = gen_random_uuid()
   WHERE id = $1 AND tenant = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > $7)
     AND (reply_lease_until IS NULL OR reply_lease_until < now())
  RETURNING ${SESSION_COLUMNS}, reply_lease_token::text AS lease_token
), m AS (
  INSERT INTO chat_messages (session_id, seq, role, content, metadata)
  SELECT id, last_seq, 'user', $4, $5 FROM s
  RETURNING ${MESSAGE_COLUMNS}, session_id
), k AS (
  UPDATE idempotency_keys SET message_id = m.id FROM m
   WHERE $6::text IS NOT NULL AND idempotency_keys.tenant = $2 AND idempotency_keys.key = $6
), e AS (
  INSERT INTO event_logs (type, tenant, session_id, data)
  SELECT 'message.created', $2, m.session_id, jsonb_build_object('messageId', m.id, 'seq', m.seq, 'role', 'user')
    FROM m
  RETURNING id, type
)
SELECT s.*, ${PREFIXED_MESSAGE_COLUMNS}, (SELECT ${NOTIFY_PAYLOAD} FROM e) AS notify_payload
  FROM s, m`

/**
 * Store the reply at the next seq and release the lease (or, with $15 set, renew it for $15 ms: a
 * group round's turn), only under this lease ($11) in an active session (expiry judged at $14); count the agent's usage in agent_states; record agent.selected of the chosen agent ($12,
 * $10), of its fallback when one answered ($4, $13), and message.created.
 * No row back: nothing stored. The caller announces the events after the commit.
 */
export const STORE_REPLY = `
WITH s AS (
  UPDATE sessions
     SET last_seq = last_seq + 1, message_count = message_count + 1,
         reply_lease_until = CASE WHEN $15::int IS NULL THEN NULL ELSE now() + make_interval(secs => $15::int / 1000.0) END,
         reply_lease_token = CASE WHEN $15::int IS NULL THEN NULL ELSE reply_lease_token END
   WHERE id = $1 AND reply_lease_token = $11::uuid AND status = 'active' AND (expires_at IS NULL OR expires_at > $14)
  RETURNING ${SESSION_COLUMNS}
), m AS (
  INSERT INTO chat_messages (session_id, seq, role, content, agent, provider, model, input_tokens, output_tokens, latency_ms)
  SELECT id, last_seq, 'assistant', $3, $4, $5, $6, $7, $8, $9 FROM s
  RETURNING ${MESSAGE_COLUMNS}, session_id
), a AS (
  INSERT INTO agent_states (session_id, agent_id, reply_count, input_tokens, output_tokens, last_used_at)
  SELECT session_id, $4, 1, $7, $8, now() FROM m
  ON CONFLICT (session_id, agent_id) DO UPDATE
    SET reply_count = agent_states.reply_count + 1,
        input_tokens = agent_states.input_tokens + EXCLUDED.input_tokens,
        output_tokens = agent_states.output_tokens + EXCLUDED.output_tokens,
        last_used_at = now()
), e AS (
  INSERT INTO event_logs (type, tenant, session_id, agent_id, data)
  SELECT v.type, $2, m.session_id, v.agent_id, v.data
    FROM m, LATERAL (VALUES
      (1, 'agent.selected', $12::text, $10::jsonb),
      (2, 'agent.selected', $4::text, $13::jsonb),
      (3, 'message.created', $4::text, jsonb_build_object('messageId', m.id, 'seq', m.seq, 'role', 'assistant'))
    ) AS v(n, type, agent_id, data)
   WHERE v.data IS NOT NULL
   ORDER BY v.n
  RETURNING id, type
)
SELECT s.*, ${PREFIXED_MESSAGE_COLUMNS}, (SELECT ${NOTIFY_PAYLOAD} FROM e) AS notify_payload
  FROM s, m`

/**
 * Store a tool step: $6 contents, $7 metadata (JSON texts), $8 latencies, in order, at the seqs after
 * the session's last, as role 'tool' of agent $5, only under lease $3 in an active session (expiry
 * judged at $4); a tool.finished event per message. No row back: nothing stored.
 */
export const STORE_TOOL_MESSAGES = `
WITH s AS (
  UPDATE sessions
     SET last_seq = last_seq + cardinality($6::text[]), message_count = message_count + cardinality($6::text[])
   WHERE id = $1 AND reply_lease_token = $3::uuid AND status = 'active' AND (expires_at IS NULL OR expires_at > $4)
  RETURNING id, last_seq - cardinality($6::text[]) AS base_seq
), m AS (
  INSERT INTO chat_messages (session_id, seq, role, agent, content, metadata, latency_ms)
  SELECT s.id, s.base_seq + t.n, 'tool', $5, t.content, t.metadata::jsonb, t.latency
    FROM s, unnest($6::text[], $7::text[], $8::int[]) WITH ORDINALITY AS t(content, metadata, latency, n)
  RETURNING ${MESSAGE_COLUMNS}, session_id
), e AS (
  INSERT INTO event_logs (type, tenant, session_id, agent_id, data)
  SELECT 'tool.finished', $2, m.session_id, $5,
         jsonb_build_object('callId', m.metadata->'callId', 'tool', m.metadata->'tool', 'server', m.metadata->'server',
                            'isError', m.metadata->'isError', 'messageId', m.id, 'seq', m.seq)
    FROM m ORDER BY m.seq
  RETURNING id, type
)
SELECT ${MESSAGE_COLUMNS}, (SELECT ${NOTIFY_PAYLOAD} FROM e) AS notify_payload FROM m ORDER BY seq`
