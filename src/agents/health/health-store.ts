import type pg from 'pg'
import type { Queryable } from '../../db/transaction.js'
import type { NewEvent } from '../../events/event-log.js'
import type { AgentStatus } from '../agent.js'
import type { HealthState, HealthTransition } from './hysteresis.js'

// The SQL of agent_health (the shared state, one row per agent) and health_checks (the samples).

// One key on every replica (cleanup uses ...002, migrations ...001): pg_try_advisory_lock lets one
// replica at a time probe, fold the traffic samples and write transitions.
export const HEALTH_LOCK_KEY = 7_365_120_003
const PURGE_BATCH = 5000
// A run deletes at most this many batches, so a large backlog never holds the lock for long.
const PURGE_MAX_BATCHES = 10

export interface AgentHealthRow {
  agent_id: string
  status: AgentStatus
  reason: string
  failures: number
  successes: number
  probed_at: Date | null
  changed_at: Date
  checked_at: Date
}

export interface TrafficRow {
  id: string
  agent_id: string
  attempts: number
  failures: number
  rate_limited: number
  failure_streak: number
  error: string | null
}

/** One health_checks row: a probe's result, or one replica's traffic window of an agent. */
export interface Sample {
  agentId: string
  provider: string
  model: string
  status: AgentStatus
  latencyMs: number | null
  error: string | null
  source: 'probe' | 'traffic'
  attempts: number
  failures: number
  rateLimited: number
  streak: number
  folded: boolean
}

export interface StateUpdate {
  agentId: string
  state: HealthState
  row: AgentHealthRow | undefined
}

export async function tryLock (client: pg.PoolClient): Promise<boolean> {
  const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [HEALTH_LOCK_KEY])
  return rows[0]?.locked === true
}

export async function unlock (client: pg.PoolClient): Promise<void> {
  await client.query('SELECT pg_advisory_unlock($1)', [HEALTH_LOCK_KEY])
}

export async function databaseNow (db: Queryable): Promise<Date> {
  const { rows } = await db.query<{ now: Date }>('SELECT now() AS now')
  return rows[0]!.now
}

export async function readStates (db: Queryable): Promise<AgentHealthRow[]> {
  const { rows } = await db.query<AgentHealthRow>('SELECT agent_id, status, reason, failures, successes, probed_at, changed_at, checked_at FROM agent_health')
  return rows
}

/** Every replica's traffic samples not folded yet, marked folded at `now`, oldest first. */
export async function takeUnfoldedTraffic (client: pg.PoolClient, now: Date): Promise<TrafficRow[]> {
  const { rows } = await client.query<TrafficRow>(
    `UPDATE health_checks SET folded_at = $1
      WHERE folded_at IS NULL AND source = 'traffic'
      RETURNING id, agent_id, attempts, failures, rate_limited, failure_streak, error`,
    [now]
  )
  return rows.sort((a, b) => Number(a.id) - Number(b.id))
}

export async function insertSamples (db: Queryable, samples: Sample[], at?: Date): Promise<void> {
  if (samples.length === 0) return
  await db.query(
    `INSERT INTO health_checks (agent_id, provider, model, status, latency_ms, error, source, attempts, failures, rate_limited, failure_streak, checked_at, folded_at)
     SELECT a, p, m, s, l, e, src, n, f, r, k, COALESCE($12::timestamptz, now()), CASE WHEN folded THEN COALESCE($12::timestamptz, now()) END
       FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::int[], $9::int[], $10::int[], $11::int[], $13::boolean[])
         AS x(a, p, m, s, l, e, src, n, f, r, k, folded)`,
    [
      samples.map((s) => s.agentId),
      samples.map((s) => s.provider),
      samples.map((s) => s.model),
      samples.map((s) => s.status),
      samples.map((s) => s.latencyMs),
      samples.map((s) => s.error),
      samples.map((s) => s.source),
      samples.map((s) => s.attempts),
      samples.map((s) => s.failures),
      samples.map((s) => s.rateLimited),
      samples.map((s) => s.streak),
      at ?? null,
      samples.map((s) => s.folded)
    ]
  )
}

export async function writeStates (client: pg.PoolClient, updates: StateUpdate[], probed: Set<string>, now: Date): Promise<void> {
  if (updates.length === 0) return
  await client.query(
    `INSERT INTO agent_health (agent_id, status, reason, failures, successes, probed_at, changed_at, checked_at)
     SELECT a, s, r, f, k, p, c, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[], $7::timestamptz[]) AS x(a, s, r, f, k, p, c)
     ON CONFLICT (agent_id) DO UPDATE SET
       status = EXCLUDED.status, reason = EXCLUDED.reason, failures = EXCLUDED.failures, successes = EXCLUDED.successes,
       probed_at = COALESCE(EXCLUDED.probed_at, agent_health.probed_at), changed_at = EXCLUDED.changed_at, checked_at = EXCLUDED.checked_at`,
    [
      updates.map((u) => u.agentId),
      updates.map((u) => u.state.status),
      updates.map((u) => u.state.reason),
      updates.map((u) => u.state.failures),
      updates.map((u) => u.state.successes),
      updates.map((u) => (probed.has(u.agentId) ? now : null)),
      updates.map((u) => (u.row && u.row.status === u.state.status ? u.row.changed_at : now)),
      now
    ]
  )
}

/** agent.status_changed for every transition; agent.failed on entering down, agent.recovered on leaving it. */
export function transitionEvents (t: HealthTransition, row: AgentHealthRow | undefined, now: Date): NewEvent[] {
  const base = { tenant: null, agentId: t.agentId }
  const events: NewEvent[] = [{ ...base, type: 'agent.status_changed', data: { from: t.from, to: t.to, reason: t.reason, source: t.source } }]
  if (t.to === 'down') events.push({ ...base, type: 'agent.failed', data: { source: 'monitor', from: t.from, reason: t.reason } })
  if (t.from === 'down') {
    const downSeconds = row ? Math.max(0, Math.round((now.getTime() - row.changed_at.getTime()) / 1000)) : null
    events.push({ ...base, type: 'agent.recovered', data: { source: 'monitor', to: t.to, reason: t.reason, downSeconds } })
  }
  return events
}

/** Deletes samples older than the retention, in bounded batches; `stopped` ends it early. */
export async function purgeSamples (db: Queryable, retentionDays: number, stopped: () => boolean): Promise<number> {
  let total = 0
  for (let batch = 0; batch < PURGE_MAX_BATCHES && !stopped(); batch++) {
    const { rowCount } = await db.query(
      `DELETE FROM health_checks WHERE id IN (
         SELECT id FROM health_checks WHERE checked_at < now() - make_interval(days => $1) ORDER BY id LIMIT $2)`,
      [retentionDays, PURGE_BATCH]
    )
    total += rowCount ?? 0
    if ((rowCount ?? 0) < PURGE_BATCH) break
  }
  return total
}
