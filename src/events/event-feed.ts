import pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { EVENTS_CHANNEL, listEvents, type StoredEvent } from './event-log.js'

interface Row {
  id: string
  type: string
  tenant: string | null
  session_id: string | null
  agent_id: string | null
  data: Record<string, unknown>
  created_at: Date
}

export interface Subscriber {
  tenant: string
  matches(type: string): boolean
  deliver(event: StoredEvent): void
}

/** `session.*` → matches session.created, session.expired...; `*` or nothing → everything. */
export function typeMatcher (type: string | undefined): (candidate: string) => boolean {
  if (!type || type === '*') return () => true
  if (type.endsWith('.*')) {
    const prefix = type.slice(0, -1)
    return (candidate) => candidate.startsWith(prefix)
  }
  return (candidate) => candidate === type
}

/**
 * The live event feed of one replica. Events are announced with pg_notify right after the commit
 * that writes them (event-log.ts `announce`), so every replica hears of each committed event as soon
 * as it is visible, and never of one that was rolled back. The payload names each statement's id
 * range and event types (NOTIFY_PAYLOAD): the feed reads exactly that range, once, and fans it out to its subscribers, or
 * reads nothing when no subscriber wants those types (the common case: no SSE client listening).
 * Reading ranges rather than "everything after the last id" matters because ids are assigned at
 * insert and committed in another order: a transaction that took id 10 may commit after the one
 * that took id 11, and a reader that had moved past 11 would never see 10.
 * One dedicated connection LISTENs; if it drops, the feed reconnects and catches up from the
 * largest id it heard of.
 * The same event can be read more than once: a statement's range may hold another transaction's id
 * (ids are taken row by row, so concurrent inserts interleave), a payload may name an id again, and a
 * catch-up overlaps the announcements heard meanwhile. The feed remembers the ids it delivered
 * lately and passes each one on once.
 */
export class EventFeed {
  private client: pg.Client | undefined
  /** The largest event id announced (or read at start): where a catch-up after a reconnect starts. */
  private lastId = '0'
  private readonly subscribers = new Set<Subscriber>()
  private fetching: Promise<void> | undefined
  /** Id ranges announced and not read yet; null asks for a catch-up after lastId. */
  private pending: Array<[string, string] | null> = []
  private stopped = false
  private reconnectTimer: NodeJS.Timeout | undefined
  /**
   * The ids delivered lately, oldest first. A repeat comes within moments of the first read (the
   * announcements of the same few milliseconds, a catch-up's overlap), far less than this many
   * events later.
   */
  private readonly delivered = new Set<string>()
  private static readonly REMEMBERED = 10_000

  constructor (
    private readonly connectionString: string,
    private readonly pool: pg.Pool,
    private readonly log: FastifyBaseLogger
  ) {}

  async start (): Promise<void> {
    const { rows } = await this.pool.query<{ id: string | null }>('SELECT max(id)::text AS id FROM event_logs')
    this.lastId = rows[0]?.id ?? '0'
    await this.listen()
  }

  subscribe (subscriber: Subscriber): () => void {
    this.subscribers.add(subscriber)
    return () => this.subscribers.delete(subscriber)
  }

  get subscriberCount (): number {
    return this.subscribers.size
  }

  /** The events after `after` that a subscriber may see, for a resume with Last-Event-ID. */
  backlog (tenant: string, after: string, type: string | undefined, limit: number) {
    return listEvents(this.pool, { tenant, after, type, limit })
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.reconnectTimer)
    this.subscribers.clear()
    await this.fetching
    await this.client?.end().catch(() => undefined)
  }

  private async listen (): Promise<void> {
    const client = new pg.Client({ connectionString: this.connectionString, application_name: 'smalltalk-events' })
    client.on('error', (err) => this.lost(err))
    client.on('end', () => this.lost(new Error('connection ended')))
    client.on('notification', (message) => this.announced(message.payload))
    try {
      await client.connect()
      await client.query(`LISTEN ${EVENTS_CHANNEL}`)
    } catch (err) {
      this.lost(err as Error)
      return
    }
    this.client = client
    // Whatever was committed while we were not listening.
    this.pending.push(null)
    this.fetch()
  }

  private lost (err: Error): void {
    if (this.stopped || this.reconnectTimer) return
    this.log.warn({ err: { message: err.message } }, 'event feed lost its PostgreSQL connection; reconnecting')
    const client = this.client
    this.client = undefined
    client?.removeAllListeners()
    client?.end().catch(() => undefined)
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined
      if (!this.stopped) void this.listen()
    }, 1000)
    this.reconnectTimer.unref()
  }

  private announced (payload: string | undefined): void {
    let wanted = false
    for (const entry of (payload ?? '').split(';')) {
      const [min, max, types] = entry.split(':')
      if (!min || !max || !/^\d+$/.test(min) || !/^\d+$/.test(max)) {
        // Not our format: read everything after the last id.
        this.pending.push(null)
        wanted = true
        continue
      }
      if (BigInt(max) > BigInt(this.lastId)) this.lastId = max
      const announcedTypes = (types ?? '').split(',')
      if (![...this.subscribers].some((subscriber) => announcedTypes.some((type) => subscriber.matches(type)))) continue
      this.pending.push([min, max])
      wanted = true
    }
    if (wanted) this.fetch()
  }

  /** Reads the announced ranges; announcements that arrive during a read are coalesced into the next. */
  private fetch (): void {
    if (this.fetching) return
    this.fetching = (async () => {
      while (this.pending.length > 0 && !this.stopped) {
        const batch = this.pending
        this.pending = []
        try {
          await this.deliver(batch)
        } catch (err) {
          this.log.warn({ err: { message: (err as Error).message } }, 'event feed could not read new events')
        }
      }
    })().finally(() => (this.fetching = undefined))
  }

  private async deliver (batch: Array<[string, string] | null>): Promise<void> {
    const ranges = batch.filter((range): range is [string, string] => range !== null)
    const rows: Row[] = []
    if (ranges.length > 0) {
      const found = await this.pool.query<Row>(
        `SELECT e.id, e.type, e.tenant, e.session_id, e.agent_id, e.data, e.created_at
           FROM event_logs e JOIN unnest($1::bigint[], $2::bigint[]) AS r(lo, hi) ON e.id BETWEEN r.lo AND r.hi`,
        [ranges.map((range) => range[0]), ranges.map((range) => range[1])]
      )
      rows.push(...found.rows)
    }
    if (ranges.length < batch.length) {
      const newer = await this.pool.query<Row>('SELECT id, type, tenant, session_id, agent_id, data, created_at FROM event_logs WHERE id > $1 ORDER BY id LIMIT 1000', [this.lastId])
      for (const row of newer.rows) {
        if (BigInt(row.id) > BigInt(this.lastId)) this.lastId = String(row.id)
        rows.push(row)
      }
      if (newer.rows.length === 1000) this.pending.push(null)
    }
    if (this.subscribers.size === 0) return
    rows.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1))
    for (const row of rows) {
      const id = String(row.id)
      if (this.delivered.has(id)) continue
      this.delivered.add(id)
      if (this.delivered.size > EventFeed.REMEMBERED) this.delivered.delete(this.delivered.values().next().value as string)
      const event: StoredEvent = { id, type: row.type, sessionId: row.session_id, agentId: row.agent_id, data: row.data, createdAt: row.created_at.toISOString() }
      for (const subscriber of this.subscribers) {
        if ((row.tenant === null || row.tenant === subscriber.tenant) && subscriber.matches(row.type)) subscriber.deliver(event)
      }
    }
  }
}
