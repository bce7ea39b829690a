import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { withTransaction } from '../db/transaction.js'
import { purgeOldEvents, recordEvents } from '../events/event-log.js'
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
 * applies the retention of events and idempotency keys.
 */
export async function runCleanup (options: CleanupOptions): Promise<CleanupReport> {
  const { pool } = options
  const lockClient = await pool.connect()
  try {
    const { rows } = await lockClient.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [CLEANUP_LOCK_KEY])
    if (!rows[0]?.locked) return { ran: false, expired: 0, purged: 0, events: 0, idempotencyKeys: 0 }
    try {
      const expired = await withTransaction(pool, async (client) => {
        const { rows: ended } = await client.query<{ id: string; tenant: string }>(
          `UPDATE sessions SET status = 'expired'
            WHERE id IN (SELECT id FROM sessions WHERE status = 'active' AND expires_at <= $1 LIMIT 10000 FOR UPDATE SKIP LOCKED)
            RETURNING id, tenant`,
          [new Date(options.sessions.now())]
        )
        await recordEvents(client, ended.map((s) => ({ type: 'session.expired' as const, tenant: s.tenant, sessionId: s.id })))
        return ended
      })
      if (expired.length > 0) {
        options.metrics.sessionsExpired.inc(expired.length)
        await options.sessions.forget(...expired.map((s) => s.id))
      }
      const { rows: purged } = await pool.query<{ id: string }>(
        `DELETE FROM sessions
          WHERE status <> 'active'
            AND COALESCE(invalidated_at, expires_at, updated_at) < $2::timestamptz - make_interval(secs => $1)
          RETURNING id`,
        [options.purgeAfterSeconds, new Date(options.sessions.now())]
      )
      await options.sessions.forget(...purged.map((s) => s.id))
      for (const { id } of purged) await options.history.forget(id)
      const events = await purgeOldEvents(pool, options.eventRetentionDays)
      const idempotencyKeys = await options.idempotency.purgeExpired()
      const report = { ran: true, expired: expired.length, purged: purged.length, events, idempotencyKeys }
      if (expired.length + purged.length + events + idempotencyKeys > 0) options.log.info(report, 'session cleanup')
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
