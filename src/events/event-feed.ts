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
export function typeMatcher(type: string | undefined): (candidate: string) => boolean {
  if (!type || type === '*') return () => true
  if (type.endsWith('.*')) {
    const prefix = type.slice(0, -1)
    return (candidate) => candidate.startsWith(prefix)
  }
  return (candidate) => candidate === type
}

/**
 * The live event feed of one replica. Events are announced with pg_notify in the transaction that
 * writes them, so every replica hears of each committed event exactly when it becomes visible (and
 * never of one that was rolled back); the feed then reads the new rows once and fans them out to
 * its SSE subscribers. One dedicated connection LISTENs; if it drops, the feed reconnects and
 * catches up from the last id it delivered, so subscribers miss nothing.
 */
export class EventFeed {
  private client: pg.Client | undefined
  private lastId = '0'
  private readonly subscribers = new Set<Subscriber>()
  private fetching: Promise<void> | undefined
  private again = false
  private stopped = false
  private reconnectTimer: NodeJS.Timeout | undefined

  constructor(
    private readonly connectionString: string,
    private readonly pool: pg.Pool,
    private readonly log: FastifyBaseLogger
  ) {}

  async start(): Promise<void> {
    const { rows } = await this.pool.query<{ id: string | null }>('SELECT max(id)::text AS id FROM event_logs')
    this.lastId = rows[0]?.id ?? '0'
    await this.listen()
  }

  subscribe(subscriber: Subscriber): () => void {
    this.subscribers.add(subscriber)
    return () => this.subscribers.delete(subscriber)
  }

  get subscriberCount(): number {
    return this.subscribers.size
  }

  /** The events after `after` that a subscriber may see, for a resume with Last-Event-ID. */
  backlog(tenant: string, after: string, type: string | undefined, limit: number) {
    return listEvents(this.pool, { tenant, after, type, limit })
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.reconnectTimer)
    this.subscribers.clear()
    await this.fetching
    await this.client?.end().catch(() => undefined)
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.connectionString, application_name: 'smalltalk-events' })
    client.on('error', (err) => this.lost(err))
    client.on('end', () => this.lost(new Error('connection ended')))
    client.on('notification', () => this.fetch())
    try {
      await client.connect()
      await client.query(`LISTEN ${EVENTS_CHANNEL}`)
    } catch (err) {
      this.lost(err as Error)
      return
    }
    this.client = client
    // Whatever was committed while we were not listening.
    this.fetch()
  }

  private lost(err: Error): void {
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

  /** Reads every event after the last delivered one; concurrent announcements coalesce. */
  private fetch(): void {
    if (this.fetching) {
      this.again = true
      return
    }
    this.fetching = (async () => {
      do {
        this.again = false
        try {
          await this.deliverNew()
        } catch (err) {
          this.log.warn({ err: { message: (err as Error).message } }, 'event feed could not read new events')
        }
      } while (this.again && !this.stopped)
    })().finally(() => (this.fetching = undefined))
  }

  private async deliverNew(): Promise<void> {
    for (;;) {
      const { rows } = await this.pool.query<Row>(
        'SELECT id, type, tenant, session_id, agent_id, data, created_at FROM event_logs WHERE id > $1 ORDER BY id LIMIT 1000',
        [this.lastId]
      )
      for (const row of rows) {
        this.lastId = String(row.id)
        if (this.subscribers.size === 0) continue
        const event: StoredEvent = { id: String(row.id), type: row.type, sessionId: row.session_id, agentId: row.agent_id, data: row.data, createdAt: row.created_at.toISOString() }
        for (const subscriber of this.subscribers) {
          if ((row.tenant === null || row.tenant === subscriber.tenant) && subscriber.matches(row.type)) subscriber.deliver(event)
        }
      }
      if (rows.length < 1000) return
    }
  }
}
