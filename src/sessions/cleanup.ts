import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { purgeOldEvents } from '../events/event-log.js'
import type { IdempotencyKeys } from '../messages/idempotency.js'
import type { MessageHistory } from '../messages/message-store.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'
import type { SessionStore } from './session-store.js'

// One key for the job on every replica: pg_try_advisory_lock lets one replica run it, the others skip.
const CLEANUP_LOCK_KEY = 7_365_120_002

export interface CleanupOptions {
  pool: pg.Pool
  sessions: SessionStore
  history: MessageHistory
  idempotency: IdempotencyKeys
  metrics: ConversationMetrics
  log: FastifyBaseLogger
  /** Seconds an ended session keeps answering 410 before it and its messages are deleted. */
  purgeAfterSeconds: number
  eventRetentionDays: number
  /** Sessions per statement (default 500). */
  batchSize?: number
  /**
   * Batches of each kind (expiry, purge) per run (default 20): a run holds the lock for a bounded
   * time, and what is left waits for the next run.
   */
  maxBatches?: number
}

export interface CleanupReport {
  ran: boolean
  expired: number
  purged: number
  events: number
  idempotencyKeys: number
}

/**
 * The background housekeeping: marks sessions past their expiry as expired (with their
 * session.expired events), deletes ended sessions with their messages after the grace period, and
 * applies the retention of events and idempotency keys. Sessions go by batches, each a statement of
 * its own, whose cache entries are dropped together.
 */
export async function runCleanup (options: CleanupOptions): Promise<CleanupReport> {
  const { pool, sessions, history } = options
  const batchSize = options.batchSize ?? 500
  const maxBatches = options.maxBatches ?? 20
  const inBatches = async (step: () => Promise<string[]>): Promise<number> => {
    let total = 0
    for (let batch = 0; batch < maxBatches; batch++) {
      const ids = await step()
      total += ids.length
      // Issued in one event-loop turn, so the cache sends them in one round trip (auto-pipelining).
      await Promise.all([sessions.forget(...ids), ...ids.map((id) => history.forget(id))])
      if (ids.length < batchSize) break
    }
    return total
  }
  const lockClient = await pool.connect()
  try {
    const { rows } = await lockClient.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [CLEANUP_LOCK_KEY])
    if (!rows[0]?.locked) return { ran: false, expired: 0, purged: 0, events: 0, idempotencyKeys: 0 }
    try {
      const expired = await inBatches(() => sessions.expireDue(batchSize))
      options.metrics.sessionsExpired.inc(expired)
      const purged = await inBatches(() => sessions.purgeEnded(options.purgeAfterSeconds, batchSize))
      const events = await purgeOldEvents(pool, options.eventRetentionDays)
      const idempotencyKeys = await options.idempotency.purgeExpired()
      const report = { ran: true, expired, purged, events, idempotencyKeys }
      if (expired + purged + events + idempotencyKeys > 0) options.log.info(report, 'session cleanup')
      return report
    } finally {
      await lockClient.query('SELECT pg_advisory_unlock($1)', [CLEANUP_LOCK_KEY])
    }
  } finally {
    lockClient.release()
  }
}

/** Runs the cleanup every `intervalSeconds`; a failed run is logged and retried at the next tick. */
export class CleanupJob {
  private timer: NodeJS.Timeout | undefined
  private running: Promise<unknown> | undefined

  constructor (private readonly options: CleanupOptions, private readonly intervalSeconds: number) {}

  start (): void {
    this.timer = setInterval(() => {
      if (this.running) return
      this.running = this.runOnce()
        .catch((err) => this.options.log.warn({ err }, 'session cleanup failed; retrying at the next interval'))
        .finally(() => (this.running = undefined))
    }, this.intervalSeconds * 1000)
    this.timer.unref()
  }

  runOnce (): Promise<CleanupReport> {
    return runCleanup(this.options)
  }

  async stop (): Promise<void> {
    clearInterval(this.timer)
    await this.running
  }
}
