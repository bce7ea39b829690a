import pg from 'pg'
import { afterCommit, type Queryable } from '../db/transaction.js'

export type EventType =
  | 'session.created'
  | 'session.updated'
  | 'session.invalidated'
  | 'session.expired'
  | 'message.created'
  | 'agent.selected'
  | 'reply.discarded'
  | 'agent.failed'
  | 'agent.recovered'
  | 'agent.status_changed'
  | 'round.started'
  | 'round.finished'
  | 'tool.called'
  | 'tool.finished'

export interface NewEvent {
  type: EventType
  /** null for events that belong to no tenant (agent health): every tenant sees those. */
  tenant: string | null
  sessionId?: string
  agentId?: string
  data?: Record<string, unknown>
}

export interface StoredEvent {
  id: string
  type: string
  sessionId: string | null
  agentId: string | null
  data: Record<string, unknown>
  createdAt: string
}

/** The channel on which committed events are announced (LISTEN/NOTIFY, delivered on commit). */
export const EVENTS_CHANNEL = 'smalltalk_events'

/**
 * The NOTIFY payload of a statement that inserted events, read from its `RETURNING id, type` rows
 * (a CTE or subquery named `e`): `<min id>:<max id>:<distinct types>`. The feed reads exactly that
 * range, which is visible when the notification arrives (NOTIFY is delivered at commit), and skips
 * the read when no subscriber wants any of those types.
 */
export const NOTIFY_PAYLOAD = 'min(e.id)::text || \':\' || max(e.id)::text || \':\' || string_agg(DISTINCT e.type, \',\')'

/**
 * Writes events with the caller's client, so that inside a transaction they commit or vanish with
 * the change they describe: the event log never disagrees with the data. One round trip for all.
 * The announcement to the live feeds goes out after the commit (see `announce`).
 */
export async function recordEvents (db: Queryable, events: NewEvent[]): Promise<void> {
  if (events.length === 0) return
  const { rows } = await db.query<{ payload: string }>(
    `WITH e AS (
       INSERT INTO event_logs (type, tenant, session_id, agent_id, data)
       SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::jsonb[])
       RETURNING id, type
     )
     SELECT ${NOTIFY_PAYLOAD} AS payload FROM e`,
    [
      events.map((e) => e.type),
      events.map((e) => e.tenant),
      events.map((e) => e.sessionId ?? null),
      events.map((e) => e.agentId ?? null),
      events.map((e) => JSON.stringify(e.data ?? {}))
    ]
  )
  const payload = rows[0]?.payload
  if (!payload || afterCommit(db, (pool) => announce(pool, payload))) return
  // A client in a transaction of its own making: the announcement commits (or vanishes) with it.
  if (db instanceof pg.Pool) announce(db, payload)
  else await db.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, payload])
}

/**
 * Tells every replica's live feed that events were committed (NOTIFY, payload NOTIFY_PAYLOAD; several
 * payloads joined by ';'). Sent after the commit, never inside the writing transaction: a transaction
 * that notifies holds PostgreSQL's notification lock through its commit and WAL flush, so every
 * writer of events would commit one at a time (the reply path measured 3 to 5 times slower). The
 * announcements of ANNOUNCE_WINDOW_MS go out together in one statement, so a busy replica sends a
 * fraction of a NOTIFY per reply instead of two (one per event-loop turn still made 0.65 per reply
 * at 50 connections: a third of the reply path's statements), for at most that much more latency on
 * the live streams.
 * The cost is a window: a process that dies between a commit and the flush leaves its events stored
 * and listed by GET /v1/events, but not pushed to live streams. A failed flush is dropped the same way.
 */
export function announce (pool: pg.Pool, payload: string): void {
  let announcer = announcers.get(pool)
  if (!announcer) {
    announcer = new Announcer(pool)
    announcers.set(pool, announcer)
  }
  announcer.add(payload)
}

/** Sends what is waiting to be announced at once (before the pool closes). */
export async function flushAnnouncements (pool: pg.Pool): Promise<void> {
  await announcers.get(pool)?.flush()
}

// NOTIFY payloads must stay under 8000 bytes.
const MAX_PAYLOAD = 7_000
const ANNOUNCE_WINDOW_MS = 5
const announcers = new WeakMap<pg.Pool, Announcer>()

class Announcer {
  private pending: string[] = []
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly pool: pg.Pool) {}

  add (payload: string): void {
    this.pending.push(payload)
    if (this.timer) return
    this.timer = setTimeout(() => { void this.flush() }, ANNOUNCE_WINDOW_MS)
  }

  async flush (): Promise<void> {
    clearTimeout(this.timer)
    this.timer = undefined
    const payloads = this.pending
    this.pending = []
    const sent: Promise<void>[] = []
    let batch = ''
    for (const payload of payloads) {
      if (batch !== '' && batch.length + payload.length + 1 > MAX_PAYLOAD) {
        sent.push(this.send(batch))
        batch = ''
      }
      batch = batch === '' ? payload : `${batch};${payload}`
    }
    if (batch !== '') sent.push(this.send(batch))
    await Promise.all(sent)
  }

  private send (batch: string): Promise<void> {
    return this.pool.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, batch]).then(
      () => undefined,
      () => undefined
    )
  }
}

export interface EventQuery {
  tenant: string
  /** Exact type, or a prefix wildcard such as `session.*`. */
  type?: string
  sessionId?: string
  /** Only events with a larger id (the previous page's nextCursor, or an SSE Last-Event-ID). */
  after?: string
  limit: number
}

/** Turns `session.*` into a LIKE pattern and an exact type into itself. */
export function typePattern (type: string): string {
  const escaped = type.replace(/[\\%_]/g, (c) => '\\' + c)
  return escaped.endsWith('.*') ? escaped.slice(0, -1) + '%' : escaped === '*' ? '%' : escaped
}

export async function listEvents (db: Queryable, query: EventQuery): Promise<{ events: StoredEvent[]; nextCursor: string | null }> {
  const { rows } = await db.query<{ id: string; type: string; session_id: string | null; agent_id: string | null; data: Record<string, unknown>; created_at: Date }>(
    `SELECT id, type, session_id, agent_id, data, created_at
       FROM event_logs
      WHERE (tenant = $1 OR tenant IS NULL)
        AND id > $2
        AND ($3::text IS NULL OR type LIKE $3)
        AND ($4::uuid IS NULL OR session_id = $4)
      ORDER BY id
      LIMIT $5`,
    [query.tenant, query.after ?? '0', query.type ? typePattern(query.type) : null, query.sessionId ?? null, query.limit + 1]
  )
  const page = rows.slice(0, query.limit)
  return {
    events: page.map(toStoredEvent),
    nextCursor: rows.length > query.limit && page.length > 0 ? String(page[page.length - 1]?.id) : null
  }
}

function toStoredEvent (row: { id: string; type: string; session_id: string | null; agent_id: string | null; data: Record<string, unknown>; created_at: Date }): StoredEvent {
  return { id: String(row.id), type: row.type, sessionId: row.session_id, agentId: row.agent_id, data: row.data, createdAt: row.created_at.toISOString() }
}

/** Retention: events older than `days` go, in bounded batches so a big backlog never locks for long. */
export async function purgeOldEvents (pool: pg.Pool, days: number, batch = 5000): Promise<number> {
  let total = 0
  for (;;) {
    const { rowCount } = await pool.query(
      `DELETE FROM event_logs WHERE id IN (
         SELECT id FROM event_logs WHERE created_at < now() - make_interval(days => $1) ORDER BY id LIMIT $2)`,
      [days, batch]
    )
    total += rowCount ?? 0
    if ((rowCount ?? 0) < batch) return total
  }
}
