import type pg from 'pg'

const DAY_MS = 86_400_000

/** The start of the UTC day that holds `ms`. */
export function utcDayStart (ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS
}

/** Seconds from `ms` to the next UTC midnight (at least 1). */
export function secondsToUtcMidnight (ms: number): number {
  return Math.max(1, Math.ceil((utcDayStart(ms) + DAY_MS - ms) / 1000))
}

/** Input plus output tokens of every reply of `tenant` stored in the UTC day that holds `now`. */
export async function tokensToday (pool: pg.Pool, tenant: string, now: number): Promise<number> {
  const start = utcDayStart(now)
  const { rows } = await pool.query<{ total: string }>(
    `SELECT COALESCE(sum(input_tokens + output_tokens), 0)::text AS total
       FROM reply_usage WHERE tenant = $1 AND created_at >= $2 AND created_at < $3`,
    [tenant, new Date(start), new Date(start + DAY_MS)]
  )
  return Number(rows[0]?.total ?? 0)
}

/** tokensToday for several tenants in one query (the metrics' scrape): tenant → tokens. */
export async function tokensTodayByTenant (pool: pg.Pool, tenants: readonly string[], now: number): Promise<Map<string, number>> {
  const start = utcDayStart(now)
  const { rows } = await pool.query<{ tenant: string; total: string }>(
    `SELECT tenant, sum(input_tokens + output_tokens)::text AS total
       FROM reply_usage WHERE tenant = ANY($1) AND created_at >= $2 AND created_at < $3 GROUP BY tenant`,
    [tenants, new Date(start), new Date(start + DAY_MS)]
  )
  return new Map(rows.map((row) => [row.tenant, Number(row.total)]))
}

export type UsageGroupBy = 'day' | 'agent' | 'model'

export interface UsageRow {
  key: string
  inputTokens: number
  outputTokens: number
  replies: number
}

export interface UsageReport {
  from: string
  to: string
  groupBy: UsageGroupBy
  totals: Omit<UsageRow, 'key'>
  rows: UsageRow[]
}

// Column expressions, never user input: the grouping is chosen from this table.
const GROUP_KEY: Record<UsageGroupBy, string> = {
  day: 'to_char(created_at AT TIME ZONE \'UTC\', \'YYYY-MM-DD\')',
  agent: 'COALESCE(agent, \'\')',
  model: 'COALESCE(model, \'\')'
}

/**
 * The usage of `tenant` over the UTC days `from` to `to` (ISO dates, both included), by day, agent or
 * model: one index-only range scan of reply_usage (db/migrations/006.do.reply-usage.sql).
 */
export async function usageReport (pool: pg.Pool, tenant: string, from: string, to: string, groupBy: UsageGroupBy): Promise<UsageReport> {
  const start = Date.parse(`${from}T00:00:00Z`)
  const end = Date.parse(`${to}T00:00:00Z`) + DAY_MS
  const { rows } = await pool.query<{ key: string; input: string; output: string; replies: string }>(
    `SELECT ${GROUP_KEY[groupBy]} AS key, sum(input_tokens)::text AS input, sum(output_tokens)::text AS output, count(*)::text AS replies
       FROM reply_usage WHERE tenant = $1 AND created_at >= $2 AND created_at < $3
      GROUP BY 1 ORDER BY 1`,
    [tenant, new Date(start), new Date(end)]
  )
  const report: UsageReport = { from, to, groupBy, totals: { inputTokens: 0, outputTokens: 0, replies: 0 }, rows: [] }
  for (const row of rows) {
    const usage = { key: row.key, inputTokens: Number(row.input), outputTokens: Number(row.output), replies: Number(row.replies) }
    report.rows.push(usage)
    report.totals.inputTokens += usage.inputTokens
    report.totals.outputTokens += usage.outputTokens
    report.totals.replies += usage.replies
  }
  return report
}
