import type { Cache, SeqListSnapshot } from '../cache/cache.js'
import type { SessionRecord, SessionStore } from '../sessions/session-store.js'
import type { Queryable } from '../db/transaction.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'
import { HistoryPages } from './history-pages.js'

/**
 * A stored message as the API shows it. Assistant messages carry the provider fields; tool messages
 * (a tool call and its result, DESIGN section 14) the agent that called it and the call's latency,
 * the call itself in their metadata.
 */
export interface Message {
  id: string
  seq: number
  role: 'user' | 'assistant' | 'system' | 'tool'
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

export function toMessage (row: MessageRow): Message {
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
  } else if (row.role === 'tool') {
    message.agent = row.agent ?? undefined
    message.latencyMs = row.latency_ms ?? 0
  }
  return message
}

/**
 * The newest messages of a session, cached as a seq list of their JSON (as the API shows them), so
 * that a page of history is a slice of that list sent as it is: never parsed, never re-serialised.
 */
const historyKey = (sessionId: string) => `history:${sessionId}`
const HISTORY_TTL_SECONDS = 600

export interface HistoryOptions {
  cache: Cache
  metrics: ConversationMetrics
  /** How many of the newest messages the cache keeps per session. */
  cacheSize: number
  /** HISTORY_PAGE_CACHE_MB in bytes: finished history responses kept in this replica (0: none). */
  pageCacheBytes?: number
}

/** The start of a history response; the messages' JSON goes in between, then the cursor. */
const LIST_START = Buffer.from('{"messages":[')
const EMPTY_LIST = Buffer.from('{"messages":[],"nextCursor":null}')

/**
 * Message history: PostgreSQL is the truth; the newest `cacheSize` messages of each session are
 * kept in the cache (write-through after each commit) for the model's context and history reads.
 * A cached list is used only when it ends at the session's newest seq (the session record says
 * which) and holds the whole window asked for; anything else is read from PostgreSQL. Finished
 * history responses are also kept in this replica's memory (HistoryPages), checked against the
 * session record at every read.
 */
export class MessageHistory {
  private readonly pages: HistoryPages

  constructor (private readonly options: HistoryOptions) {
    this.pages = new HistoryPages(options.pageCacheBytes ?? 0)
  }

  /**
   * The response body of a history read (`{"messages":[...],"nextCursor":...}`): messages after
   * `after` in seq order, at most `limit`, of an active session of this tenant (not_found or gone
   * otherwise, as SessionStore.getActive). The session record is always read (from the cache, or
   * PostgreSQL): a page kept at the record's newest seq is answered as it is. Otherwise the record
   * and the cached list come in one round trip (a second one when a kept page had gone stale), and
   * the list serves the page when it ends at the record's lastSeq and holds the whole window, else
   * PostgreSQL does.
   */
  async page (sessions: SessionStore, db: Queryable, tenant: string, sessionId: string, after: number, limit: number): Promise<Buffer> {
    const kept = this.pages.has(sessionId, after, limit)
    let session: SessionRecord
    let list: SeqListSnapshot | undefined
    if (kept) session = await sessions.getActive(tenant, sessionId)
    else ({ session, list } = await this.activeSession(sessions, tenant, sessionId))
    // Nothing after `after` yet: the session record says so, no need to read anything.
    if (after >= session.lastSeq) return EMPTY_LIST
    const { metrics } = this.options
    if (this.pages.enabled) {
      const body = this.pages.get(sessionId, after, limit, session.lastSeq)
      metrics.cacheLookups.inc({ cache: 'history_page', result: body ? 'hit' : 'miss' })
      if (body) return body
    }
    const cached = kept ? await this.options.cache.readSeqList(historyKey(sessionId), session.lastSeq, after, limit) : list?.window(session.lastSeq, after, limit)
    metrics.cacheLookups.inc({ cache: 'history', result: cached ? 'hit' : 'miss' })
    let json: Buffer
    let count: number
    // seq of the page's last message (a cached list numbers its items by position).
    let pageLastSeq: number
    if (cached) {
      json = cached.joined
      count = cached.count
      pageLastSeq = after + count
    } else {
      const { rows } = await db.query<MessageRow>(
        `SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`,
        [session.id, after, limit]
      )
      json = Buffer.from(rows.map((row) => JSON.stringify(toMessage(row))).join(','))
      count = rows.length
      pageLastSeq = Number(rows[rows.length - 1]?.seq ?? after)
    }
    const nextCursor = count > 0 && count === limit && pageLastSeq < session.lastSeq ? pageLastSeq : null
    const body = Buffer.concat([LIST_START, json, Buffer.from(`],"nextCursor":${nextCursor}}`)])
    this.pages.set(sessionId, after, limit, session.lastSeq, body)
    return body
  }

  /**
   * An active session's record with its cached history list, in one round trip to the cache
   * (not_found or gone as SessionStore.getActive): a history read, and a reply before it can ask the model.
   */
  async activeSession (sessions: SessionStore, tenant: string, sessionId: string): Promise<{ session: SessionRecord; list: SeqListSnapshot | undefined }> {
    const { record, list } = await sessions.getActiveWithList(tenant, sessionId, historyKey(sessionId))
    return { session: record, list }
  }

  /**
   * The newest `count` messages, oldest first (the model's context). From the list the caller has
   * read already (`read`, from activeSession: the cache is not asked again, even when it had none),
   * else from the cache; PostgreSQL when the cache lacks them.
   */
  async recent (db: Queryable, sessionId: string, lastSeq: number, count: number, read?: { list: SeqListSnapshot | undefined }): Promise<Message[]> {
    if (lastSeq === 0) return []
    const after = Math.max(0, lastSeq - count)
    const cached = read ? read.list?.window(lastSeq, after, count) : await this.options.cache.readSeqList(historyKey(sessionId), lastSeq, after, count)
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
  async append (sessionId: string, message: Message): Promise<void> {
    await this.options.cache.appendToSeqList(historyKey(sessionId), message.seq, JSON.stringify(message), this.options.cacheSize, HISTORY_TTL_SECONDS)
  }

  async forget (sessionId: string): Promise<void> {
    await this.options.cache.deleteSeqLists(historyKey(sessionId))
  }

  private async loadTail (db: Queryable, sessionId: string, count: number): Promise<Message[]> {
    const { rows } = await db.query<MessageRow>(
      `SELECT * FROM (SELECT ${MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 ORDER BY seq DESC LIMIT $2) newest ORDER BY seq`,
      [sessionId, count]
    )
    return rows.map(toMessage)
  }
}
