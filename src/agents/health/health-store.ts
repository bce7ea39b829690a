import type pg from 'pg'
import { withTransaction, type Queryable } from '../../db/transaction.js'
import { recordEvents, type NewEvent } from '../../events/event-log.js'
import type { AgentStatus } from '../agent.js'
import { INITIAL_STATE, type HealthState, type HealthTransition } from './hysteresis.js'

// The SQL of agent_health (the shared state, one row per agent) and health_checks (the samples).

// One key on every replica (cleanup uses ...002, migrations ...001). Only ever taken inside a
// transaction (pg_*advisory_xact_lock): a commit or a rollback lets it go, and no transaction of
// this module waits on the network.
export const HEALTH_LOCK_KEY = 7_365_120_003
// How long a fold waits for another replica's transaction under the lock (they take milliseconds).
const FOLD_LOCK_TIMEOUT_MS = 5000
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
}

/** What a fold reads, in its transaction and under the lock. */
export interface FoldInput {
  /** The database's clock. */
  now: Date
  rows: Map<string, AgentHealthRow>
  /** Every replica's traffic samples not folded yet, oldest first (now marked folded). */
  traffic: TrafficRow[]
}

/** What a fold writes: the samples (folded already) and the new state of each agent that has news. */
export interface FoldPlan {
  samples: Sample[]
  updates: StateUpdate[]
}

export interface FoldResult {
  folded: number
  transitions: HealthTransition[]
  /** agent_health as committed. */
  states: AgentHealthRow[]
}

/** agent_health and health_checks for the health monitor. */
export class HealthStore {
  constructor (private readonly pool: pg.Pool) {}

  readStates (): Promise<AgentHealthRow[]> {
    return readStates(this.pool)
  }

  /** One replica's traffic windows, not folded yet. */
  insertTraffic (samples: Sample[]): Promise<void> {
    return insertSamples(this.pool, samples)
  }

  /**
   * The leadership of one run, and its probes, in one short transaction: under
   * pg_try_advisory_xact_lock, `pick` chooses the targets that are due from the stored states (in the
   * database's clock), and their agents' probed_at is set, so that no replica probes them again
   * within the interval. Undefined when another replica holds the lock. The commit lets the lock and
   * the connection go before any probe starts.
   */
  async claimProbes<T extends { agents: string[] }> (pick: (rows: Map<string, AgentHealthRow>, now: Date) => T[]): Promise<T[] | undefined> {
    return withTransaction(this.pool, async (client) => {
      const { rows: [lock] } = await client.query<{ locked: boolean; now: Date }>('SELECT pg_try_advisory_xact_lock($1) AS locked, now() AS now', [HEALTH_LOCK_KEY])
      if (!lock?.locked) return undefined
      const due = pick(byAgent(await readStates(client)), lock.now)
      const agents = due.flatMap((target) => target.agents)
      if (agents.length > 0) {
        await client.query(
          `INSERT INTO agent_health (agent_id, status, reason, probed_at)
           SELECT a, 'healthy', $2, $3 FROM unnest($1::text[]) AS a
           ON CONFLICT (agent_id) DO UPDATE SET probed_at = EXCLUDED.probed_at`,
          [agents, INITIAL_STATE.reason, lock.now]
        )
      }
      return due
    })
  }

  /**
   * One fold, in one short transaction under the lock (waiting for another replica's fold): takes
   * every unfolded traffic sample, lets `plan` run them with the probe results through the
   * hysteresis, and writes the samples, the states and the transitions' events together.
   */
  async fold (plan: (input: FoldInput) => FoldPlan): Promise<FoldResult> {
    return withTransaction(this.pool, async (client) => {
      await client.query("SELECT set_config('lock_timeout', $1, true)", [`${FOLD_LOCK_TIMEOUT_MS}ms`])
      await client.query('SELECT pg_advisory_xact_lock($1)', [HEALTH_LOCK_KEY])
      const now = await databaseNow(client)
      const rows = byAgent(await readStates(client))
      const traffic = await takeUnfoldedTraffic(client, now)
      const { samples, updates } = plan({ now, rows, traffic })
      const transitions: HealthTransition[] = []
      const events: NewEvent[] = []
      for (const { agentId, state } of updates) {
        const row = rows.get(agentId)
        const from = row?.status ?? INITIAL_STATE.status
        if (state.status === from) continue
        const transition: HealthTransition = { agentId, from, to: state.status, reason: state.reason, source: state.source }
        transitions.push(transition)
        events.push(...transitionEvents(transition, row, now))
      }
      await insertSamples(client, samples, now)
      await writeStates(client, updates, rows, now)
      await recordEvents(client, events)
      return { folded: traffic.length, transitions, states: await readStates(client) }
    })
  }

  /**
   * Deletes samples older than the retention, in bounded batches, each in a short transaction under
   * the lock (skipped while another replica holds it); `stopped` ends it early.
   */
  async purge (retentionDays: number, stopped: () => boolean): Promise<number> {
    let total = 0
    for (let batch = 0; batch < PURGE_MAX_BATCHES && !stopped(); batch++) {
      const deleted = await withTransaction(this.pool, async (client) => {
        const { rows: [lock] } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS locked', [HEALTH_LOCK_KEY])
        if (!lock?.locked) return 0
        const { rowCount } = await client.query(
          `DELETE FROM health_checks WHERE id IN (
             SELECT id FROM health_checks WHERE checked_at < now() - make_interval(days => $1) ORDER BY id LIMIT $2)`,
          [retentionDays, PURGE_BATCH]
        )
        return rowCount ?? 0
      })
      total += deleted
      if (deleted < PURGE_BATCH) break
    }
    return total
  }
}

function byAgent (rows: AgentHealthRow[]): Map<string, AgentHealthRow> {
  return new Map(rows.map((row) => [row.agent_id, row]))
}

async function databaseNow (db: Queryable): Promise<Date> {
  const { rows } = await db.query<{ now: Date }>('SELECT now() AS now')
  return rows[0]!.now
}

async function readStates (db: Queryable): Promise<AgentHealthRow[]> {
  const { rows } = await db.query<AgentHealthRow>('SELECT agent_id, status, reason, failures, successes, probed_at, changed_at, checked_at FROM agent_health')
  return rows
}

/** Every replica's traffic samples not folded yet, marked folded at `now`, oldest first. */
async function takeUnfoldedTraffic (client: pg.PoolClient, now: Date): Promise<TrafficRow[]> {
  const { rows } = await client.query<TrafficRow>(
    `UPDATE health_checks SET folded_at = $1
      WHERE folded_at IS NULL AND source = 'traffic'
      RETURNING id, agent_id, attempts, failures, rate_limited, failure_streak, error`,
    [now]
  )
  return rows.sort((a, b) => Number(a.id) - Number(b.id))
}

async function insertSamples (db: Queryable, samples: Sample[], at?: Date): Promise<void> {
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

/** The states of `updates`; probed_at is the claims' (claimProbes). */
async function writeStates (client: pg.PoolClient, updates: StateUpdate[], rows: Map<string, AgentHealthRow>, now: Date): Promise<void> {
  if (updates.length === 0) return
  await client.query(
    `INSERT INTO agent_health (agent_id, status, reason, failures, successes, changed_at, checked_at)
     SELECT a, s, r, f, k, c, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[]) AS x(a, s, r, f, k, c)
     ON CONFLICT (agent_id) DO UPDATE SET
       status = EXCLUDED.status, reason = EXCLUDED.reason, failures = EXCLUDED.failures, successes = EXCLUDED.successes,
       changed_at = EXCLUDED.changed_at, checked_at = EXCLUDED.checked_at`,
    [
      updates.map((u) => u.agentId),
      updates.map((u) => u.state.status),
      updates.map((u) => u.state.reason),
      updates.map((u) => u.state.failures),
      updates.map((u) => u.state.successes),
      updates.map((u) => {
        const row = rows.get(u.agentId)
        return row && row.status === u.state.status ? row.changed_at : now
      }),
      now
    ]
  )
}

/** agent.status_changed for every transition; agent.failed on entering down, agent.recovered on leaving it. */
function transitionEvents (t: HealthTransition, row: AgentHealthRow | undefined, now: Date): NewEvent[] {
  const base = { tenant: null, agentId: t.agentId }
  const events: NewEvent[] = [{ ...base, type: 'agent.status_changed', data: { from: t.from, to: t.to, reason: t.reason, source: t.source } }]
  if (t.to === 'down') events.push({ ...base, type: 'agent.failed', data: { source: 'monitor', from: t.from, reason: t.reason } })
  if (t.from === 'down') {
    const downSeconds = row ? Math.max(0, Math.round((now.getTime() - row.changed_at.getTime()) / 1000)) : null
    events.push({ ...base, type: 'agent.recovered', data: { source: 'monitor', to: t.to, reason: t.reason, downSeconds } })
  }
  return events
}
