import type { Cache } from '../cache/cache.js'
import type { SessionRecord, SessionStore } from '../sessions/session-store.js'
import type { Queryable } from '../db/transaction.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'

/** A stored message as the API shows it. Assistant messages carry the provider fields. */
export interface Message {
  id: string
  seq: number
  role: 'user' | 'assistant' | 'system'
  content: string
  metadata: Record<string, unknown>
  createdAt: string
  agent?: string
  provider?: string
  model?: string
  usage?: { inputTokens: number; outputTokens: number }
  latencyMs?: number
}

export interface MessageRow {
  id: string
  seq: string | number
  role: Message['role']
  agent: string | null
  content: string
  metadata: Record<string, unknown>
  provider: string | null
  model: string | null
  input_tokens: number | null
  output_tokens: number | null
  latency_ms: number | null
  created_at: Date
}

export const MESSAGE_COLUMNS = 'id, seq, role, agent, content, metadata, provider, model, input_tokens, output_tokens, latency_ms, created_at'

export function toMessage(row: MessageRow): Message {
  const message: Message = {
    id: row.id,
    seq: Number(row.seq),
    role: row.role,
    content: row.content,
    metadata: row.metadata,
    createdAt: row.created_at.toISOString()
  }
  if (row.role === 'assistant') {
    message.agent = row.agent ?? undefined
    message.provider = row.provider ?? undefined
    message.model = row.model ?? undefined
    message.usage = { inputTokens: row.input_tokens ?? 0, outputTokens: row.output_tokens ?? 0 }
    message.latencyMs = row.latency_ms ?? 0
  }
  return message
}

/**
 * The newest messages of a session, cached as a seq list of their JSON (as the API shows them), so
 * that a page of history is a slice of that list sent as it is: never parsed, never re-serialised.
 */
const historyKey = (sessionId: string) => `history-list:${sessionId}`
const HISTORY_TTL_SECONDS = 600

export interface HistoryOptions {
  cache: Cache
  metrics: ConversationMetrics
  /** How many of the newest messages the cache keeps per session. */
  cacheSize: number
}

/** A page of history: its messages as the inside of a JSON array. */
export interface HistoryPage {
  /** The messages' JSON objects joined by commas, as UTF-8 bytes. */
  json: Buffer
  count: number
  /** seq of the page's last message (null when the page is empty). */
  lastSeq: number | null
}

const EMPTY_PAGE: HistoryPage = { json: Buffer.alloc(0), count: 0, lastSeq: null }

/**
 * Message history: PostgreSQL is the truth; the newest `cacheSize` messages of each session are
 * kept in the cache (write-through after each commit) for the model's context and history reads.
 * A cached list is used only when it ends at the session's newest seq (the session record says
 * which) and holds the whole window asked for; anything else is read from PostgreSQL.
 */
export class MessageHistory {
  constructor(private readonly options: HistoryOptions) {}

  /**
   * A page of history for the API: messages after `after` in seq order, at most `limit`, of an
   * active session of this tenant (404 or 410 otherwise, as SessionStore.getActive). The session
   * record and the cached list are read in one round trip; the list serves the page when it ends at
   * the record's lastSeq and holds the whole window, else PostgreSQL does.
   */
  async page(sessions: SessionStore, db: Queryable, tenant: string, sessionId: string, after: number, limit: number): Promise<{ session: SessionRecord; page: HistoryPage }> {
    const { record: session, list } = await sessions.getActiveWithList(tenant, sessionId, historyKey(sessionId))
    // Nothing after `after` yet: the session record says so, no need to read anything.
    if (after >= session.lastSeq) return { session, page: EMPTY_PAGE }
    const cached = list?.window(session.lastSeq, after, limit)
    this.options.metrics.cacheLookups.inc({ cache: 'history', result: cached ? 'hit' : 'miss' })
    if (cached) return { session, page: { json: cached.joined, count: cached.count, lastSeq: after + cached.count } }
    const { rows } = await db.query<MessageRow>(
      `SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`,
      [session.id, after, limit]
    )
    const last = rows[rows.length - 1]
    const json = Buffer.from(rows.map((row) => JSON.stringify(toMessage(row))).join(','))
    return { session, page: { json, count: rows.length, lastSeq: last ? Number(last.seq) : null } }
  }

  /** The newest `count` messages, oldest first (the model's context). */
  async recent(db: Queryable, sessionId: string, lastSeq: number, count: number): Promise<Message[]> {
    if (lastSeq === 0) return []
    const cached = await this.options.cache.readSeqList(historyKey(sessionId), lastSeq, Math.max(0, lastSeq - count), count)
    this.options.metrics.cacheLookups.inc({ cache: 'history', result: cached ? 'hit' : 'miss' })
    if (cached) return JSON.parse(`[${cached.joined.toString()}]`) as Message[]
    const tail = await this.loadTail(db, sessionId, Math.max(count, this.options.cacheSize))
    const newest = tail[tail.length - 1]
    // seqs are gap-free (each is taken in the transaction that stores its message): check anyway,
    // since a cached list numbers its items by position.
    if (newest && newest.seq - (tail[0] as Message).seq + 1 === tail.length) {
      await this.options.cache.replaceSeqList(historyKey(sessionId), newest.seq, tail.map((m) => JSON.stringify(m)), HISTORY_TTL_SECONDS)
    }
    return tail.slice(-count)
  }

  /**
   * Write-through after a commit: appends the message to the cached list when it continues it
   * (one atomic step in the cache), drops a list it would leave with a gap.
   */
  async append(sessionId: string, message: Message): Promise<void> {
    await this.options.cache.appendToSeqList(historyKey(sessionId), message.seq, JSON.stringify(message), this.options.cacheSize, HISTORY_TTL_SECONDS)
  }

  async forget(sessionId: string): Promise<void> {
    await this.options.cache.deleteSeqLists(historyKey(sessionId))
  }

  private async loadTail(db: Queryable, sessionId: string, count: number): Promise<Message[]> {
    const { rows } = await db.query<MessageRow>(
      `SELECT * FROM (SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`,
      [sessionId, count]
    )
    return rows.map(toMessage)
  }
}
