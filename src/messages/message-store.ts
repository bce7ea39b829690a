import type { Cache } from '../cache/cache.js'
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

export interface NewMessage {
  sessionId: string
  seq: number
  role: Message['role']
  content: string
  metadata?: Record<string, unknown>
  agent?: string
  provider?: string
  model?: string
  inputTokens?: number
  outputTokens?: number
  latencyMs?: number
}

export async function insertMessage(db: Queryable, message: NewMessage): Promise<Message> {
  const { rows } = await db.query<MessageRow>(
    `INSERT INTO chat_messages (session_id, seq, role, content, metadata, agent, provider, model, input_tokens, output_tokens, latency_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     RETURNING ${MESSAGE_COLUMNS}`,
    [
      message.sessionId,
      message.seq,
      message.role,
      message.content,
      message.metadata ?? {},
      message.agent ?? null,
      message.provider ?? null,
      message.model ?? null,
      message.inputTokens ?? null,
      message.outputTokens ?? null,
      message.latencyMs ?? null
    ]
  )
  return toMessage(rows[0] as MessageRow)
}

/** The recent history of a session, cached as a contiguous tail of its messages. */
interface CachedHistory {
  /** seq of the newest message the tail holds: compared with the session's, to detect staleness. */
  lastSeq: number
  messages: Message[]
}

const historyKey = (sessionId: string) => `history:${sessionId}`
const HISTORY_TTL_SECONDS = 600

export interface HistoryOptions {
  cache: Cache
  metrics: ConversationMetrics
  /** How many of the newest messages the cache keeps per session. */
  cacheSize: number
}

/**
 * Message history: PostgreSQL is the truth; the newest `cacheSize` messages of each session are
 * kept in the cache (write-through after each commit) for the model's context and history reads.
 */
export class MessageHistory {
  constructor(private readonly options: HistoryOptions) {}

  /**
   * Messages after `after` in seq order, at most `limit`, for a session whose newest seq is
   * `lastSeq`: from the cache when it holds that window, else from PostgreSQL.
   */
  async page(db: Queryable, sessionId: string, lastSeq: number, after: number, limit: number): Promise<Message[]> {
    const cached = await this.cached(sessionId, lastSeq)
    const first = cached?.messages[0]?.seq
    if (cached && (cached.messages.length === 0 || (first !== undefined && first <= after + 1))) {
      return cached.messages.filter((m) => m.seq > after).slice(0, limit)
    }
    const { rows } = await db.query<MessageRow>(
      `SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`,
      [sessionId, after, limit]
    )
    return rows.map(toMessage)
  }

  /** The newest `count` messages, oldest first (the model's context). */
  async recent(db: Queryable, sessionId: string, lastSeq: number, count: number): Promise<Message[]> {
    const cached = await this.cached(sessionId, lastSeq)
    if (cached && (cached.messages.length >= count || cached.messages[0]?.seq === 1 || lastSeq === 0)) {
      return cached.messages.slice(-count)
    }
    const tail = await this.loadTail(db, sessionId, Math.max(count, this.options.cacheSize))
    await this.store(sessionId, tail)
    return tail.slice(-count)
  }

  /** Write-through after a commit: appends to the cached tail if it is current, else drops it. */
  async append(sessionId: string, message: Message): Promise<void> {
    const key = historyKey(sessionId)
    const raw = await this.options.cache.get(key)
    const current = raw ? (JSON.parse(raw) as CachedHistory) : undefined
    if (message.seq === 1) {
      await this.store(sessionId, [message])
    } else if (current && current.lastSeq === message.seq - 1) {
      await this.store(sessionId, [...current.messages, message].slice(-this.options.cacheSize))
    } else {
      await this.options.cache.delete(key)
    }
  }

  async forget(sessionId: string): Promise<void> {
    await this.options.cache.delete(historyKey(sessionId))
  }

  private async cached(sessionId: string, lastSeq: number): Promise<CachedHistory | undefined> {
    const raw = await this.options.cache.get(historyKey(sessionId))
    const history = raw ? (JSON.parse(raw) as CachedHistory) : undefined
    const usable = history !== undefined && history.lastSeq === lastSeq
    this.options.metrics.cacheLookups.inc({ cache: 'history', result: usable ? 'hit' : 'miss' })
    return usable ? history : undefined
  }

  private async loadTail(db: Queryable, sessionId: string, count: number): Promise<Message[]> {
    const { rows } = await db.query<MessageRow>(
      `SELECT * FROM (SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`,
      [sessionId, count]
    )
    return rows.map(toMessage)
  }

  private async store(sessionId: string, messages: Message[]): Promise<void> {
    const history: CachedHistory = { lastSeq: messages[messages.length - 1]?.seq ?? 0, messages }
    await this.options.cache.set(historyKey(sessionId), JSON.stringify(history), HISTORY_TTL_SECONDS)
  }
}
