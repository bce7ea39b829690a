import type pg from 'pg'
import type { Clock } from '../clock.js'
import { tokensToday, utcDayStart } from './usage.js'

/** How long a replica reuses a tenant's total for the day before it reads PostgreSQL again. */
export const DAILY_TOKENS_TTL_MS = 1000

/**
 * Each tenant's tokens of the current UTC day, as the budget check sees them: read from PostgreSQL
 * (reply_usage, what GET /v1/usage sums), at most once per DAILY_TOKENS_TTL_MS per tenant and
 * replica, with one read in flight per tenant however many posts wait for it. Without this a busy
 * tenant's every post would sum all its replies of the day. The price: a replica may admit posts for
 * up to that long after the tenant reached its budget (documented with the overshoot).
 */
export class DailyTokens {
  private readonly totals = new Map<string, { day: number; readAt: number; total: Promise<number> }>()

  constructor (private readonly pool: pg.Pool, private readonly clock: Clock, private readonly ttlMs = DAILY_TOKENS_TTL_MS) {}

  used (tenant: string): Promise<number> {
    const now = this.clock.now()
    const day = utcDayStart(now)
    const cached = this.totals.get(tenant)
    if (cached && cached.day === day && now - cached.readAt < this.ttlMs) return cached.total
    const total = tokensToday(this.pool, tenant, now)
    const entry = { day, readAt: now, total }
    this.totals.set(tenant, entry)
    // A failed read is not kept: the next post reads again.
    total.catch(() => {
      if (this.totals.get(tenant) === entry) this.totals.delete(tenant)
    })
    return total
  }
}
