import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { recordEvents, type NewEvent } from '../events/event-log.js'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import { ProviderError, type ProbeMode, type Provider } from '../providers/provider.js'
import { LazyProvider } from '../providers/index.js'
import type { AgentStatus } from './agent.js'
import type { AgentRegistry } from './registry.js'

// One key on every replica (cleanup uses ...002, migrations ...001): pg_try_advisory_lock lets one
// replica at a time probe, fold the traffic samples and write transitions.
const HEALTH_LOCK_KEY = 7_365_120_003
const PURGE_BATCH = 5000
// A run deletes at most this many batches, so a large backlog never holds the lock for long.
const PURGE_MAX_BATCHES = 10
const MAX_ERROR_CHARS = 500

/*
 * How the replicas agree (DESIGN section 4, issue 5 item 5):
 *
 * - The shared state is the agent_health table: status, reason and the hysteresis counters per
 *   agent. Only a replica holding the advisory lock writes it, and it writes the transition events
 *   in the same transaction, so the event log never disagrees with the state.
 * - Every replica runs the same tick every interval: it flushes its own traffic window into
 *   health_checks (source 'traffic', folded_at NULL), then tries the lock. The holder probes each
 *   distinct provider+model+baseUrl whose last probe (agent_health.probed_at, in the database's
 *   clock) is an interval old, folds every unfolded traffic sample of every replica and the probe
 *   results through the hysteresis, and commits. A replica that does not get the lock reads
 *   agent_health and applies it to its registry and gauge.
 * - Followers hear of a transition at once: its event is announced with NOTIFY (the event log's
 *   channel), and the plugin calls requestSync() when an agent.status_changed event arrives; the
 *   tick's read is the fallback when that connection is down.
 * - A burst of failed replies (failuresToDown in a row on one replica) asks for an early run, so
 *   an agent can go down before the next probe, wherever its traffic fails.
 *
 * No leader lives longer than one run: if a replica dies, the next tick of any other takes over,
 * with the counters where the last holder left them.
 */

export type HealthSource = 'probe' | 'traffic' | 'echo'

/** One agent's health as the hysteresis sees it. */
export interface HealthState {
  status: AgentStatus
  /** Failures since the last success (warnings neither add nor reset). */
  failures: number
  /** Successes since the last failure or warning. */
  successes: number
  reason: string
  /** What the last status change (or the last reason) came from. */
  source: HealthSource
}

/**
 * What a probe or a traffic window says: success (answered), warn (answered, but slowly or rate
 * limited: degraded, never down by itself), failure (did not answer).
 */
export type Observation =
  | { kind: 'success'; count: number; reason: string; source: HealthSource }
  | { kind: 'warn'; reason: string; source: HealthSource }
  | { kind: 'failure'; count: number; reason: string; source: HealthSource }

export interface Hysteresis {
  /** Failures with no success in between that take an agent down (default 3). */
  failuresToDown: number
  /** Successes in a row that take a degraded or down agent back to healthy (default 2). */
  successesToRecover: number
}

export const DEFAULT_HYSTERESIS: Hysteresis = { failuresToDown: 3, successesToRecover: 2 }

export const INITIAL_STATE: HealthState = { status: 'healthy', failures: 0, successes: 0, reason: 'not checked yet', source: 'probe' }

/**
 * The hysteresis, as a pure function. healthy → degraded on the first failure or warning;
 * → down after `failuresToDown` failures with no success in between; degraded or down → healthy
 * only after `successesToRecover` successes in a row (a down agent stays down until then, so one
 * lucky probe does not send traffic back to a flapping provider).
 */
export function observe (state: HealthState, obs: Observation, h: Hysteresis): HealthState {
  const next: HealthState = { ...state }
  if (obs.kind === 'success') {
    next.failures = 0
    next.successes = Math.min(state.successes + obs.count, h.successesToRecover)
    if (state.status === 'healthy' || next.successes >= h.successesToRecover) {
      next.status = 'healthy'
      next.reason = obs.reason
      next.source = obs.source
    }
    return next
  }
  next.successes = 0
  if (obs.kind === 'failure') next.failures = Math.min(state.failures + obs.count, h.failuresToDown)
  next.status = next.failures >= h.failuresToDown ? 'down' : state.status === 'down' ? 'down' : 'degraded'
  // A warning on a down agent does not explain why it is down: keep the failure's reason.
  if (!(obs.kind === 'warn' && state.status === 'down')) {
    next.reason = obs.reason
    next.source = obs.source
  }
  return next
}

/** One replica's replies of one agent since its last flush. */
export interface TrafficWindow {
  attempts: number
  /** Failed replies (rate limits excluded). */
  failures: number
  rateLimited: number
  /** Failed replies in a row at the end of the window. */
  streak: number
  latencySumMs: number
  lastError: string | undefined
}

/**
 * A traffic window as observations, in order: the replies before its final run of failures are
 * judged by their share of problems (at least `errorRatio` failed or rate limited: a warning, else
 * their successes count); the final run of failures counts one failure per reply, so a burst can
 * take an agent down. Scattered errors below the ratio do not move the state: under load, one error
 * in a hundred replies is not a degraded provider.
 */
export function trafficObservations (w: TrafficWindow, errorRatio: number): Observation[] {
  const observations: Observation[] = []
  const before = w.attempts - w.streak
  if (before > 0) {
    const problems = w.failures - w.streak + w.rateLimited
    const ok = before - problems
    if (problems > 0 && problems / before >= errorRatio) {
      const last = w.lastError ? ` (last: ${w.lastError})` : ''
      observations.push({ kind: 'warn', reason: `${problems} of ${before} replies failed or were rate limited${last}`, source: 'traffic' })
    } else if (ok > 0) {
      observations.push({ kind: 'success', count: ok, reason: `${ok} replies answered`, source: 'traffic' })
    }
  }
  if (w.streak > 0) {
    observations.push({ kind: 'failure', count: w.streak, reason: `${w.streak} replies in a row failed: ${w.lastError ?? 'error'}`, source: 'traffic' })
  }
  return observations
}

/**
 * The verdict of one sample on its own (health_checks.status); the agent's state is the hysteresis.
 * A probe: healthy (answered in time), degraded (slow or rate limited), down (failed). A traffic
 * window: down when it ends in a burst of failures, degraded when it has problems, else healthy.
 */
function verdictOf (observations: Observation[], h: Hysteresis): AgentStatus {
  let verdict: AgentStatus = 'healthy'
  for (const obs of observations) {
    if (obs.kind === 'failure') verdict = obs.count >= h.failuresToDown ? 'down' : 'degraded'
    else if (obs.kind === 'warn' && verdict === 'healthy') verdict = 'degraded'
  }
  return verdict
}

/** Removes the configured keys and anything shaped like a credential from an error text. */
export function redactSecrets (text: string, secrets: readonly string[] = []): string {
  let out = text
  for (const secret of secrets) if (secret.length >= 4) out = out.split(secret).join('[redacted]')
  out = out
    .replace(/\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}/g, '[redacted]')
    .replace(/\bAIza[0-9A-Za-z_-]{20,}/g, '[redacted]')
    .replace(/([?&](?:key|api[_-]?key|access_token)=)[^&\s"']+/gi, '$1[redacted]')
    .replace(/(bearer\s+)[^\s"',]+/gi, '$1[redacted]')
    .replace(/(\/\/[^/\s:@]+:)[^@\s/]+@/g, '$1[redacted]@')
  return out.length > MAX_ERROR_CHARS ? out.slice(0, MAX_ERROR_CHARS - 1) + '…' : out
}

/** One provider call's outcome, as the resilience layer reports it (ProviderGuard's TrafficSample). */
export interface TrafficOutcome {
  ok: boolean
  latencyMs: number
  /** A ProviderError kind, or timeout / cancelled / circuit_open. */
  errorKind?: string
  error?: string
}

// Outcomes that say nothing about the provider: our own cancellations, a breaker that made no call,
// a request the provider refused for its content (a too-long context is not an outage).
const IGNORED_TRAFFIC = new Set(['cancelled', 'circuit_open', 'bad_request'])

export interface HealthTransition {
  agentId: string
  from: AgentStatus
  to: AgentStatus
  reason: string
  source: HealthSource
}

export interface RunReport {
  /** Whether this replica held the lock (probed, folded, wrote). */
  leader: boolean
  /** Agents whose provider+model was probed in this run. */
  probed: string[]
  /** Traffic samples this replica wrote to health_checks. */
  flushed: number
  /** Traffic samples (of every replica) folded into the state. */
  folded: number
  transitions: HealthTransition[]
  /** health_checks rows deleted by retention. */
  purged: number
}

export interface HealthMonitorOptions {
  pool: pg.Pool
  registry: AgentRegistry
  metrics: Pick<LlmMetrics, 'setAgentState'>
  log: FastifyBaseLogger
  /** AGENT_HEALTH_CHECK_INTERVAL in ms: ticks, and the shortest time between two probes of a model. */
  intervalMs: number
  /** Delay of the first tick after start() (default 1 s): soon, but not during start-up. */
  firstTickDelayMs?: number
  /** AGENT_HEALTH_PROBE: list the models (free) or a 1-token completion. */
  probeMode: ProbeMode
  /** AGENT_HEALTH_PROBE_TIMEOUT_MS, capped at the interval: a probe that takes longer has failed. */
  probeTimeoutMs: number
  /** A probe slower than this is a warning (default: half the probe timeout). */
  slowProbeMs?: number
  /** HEALTH_CHECK_RETENTION_DAYS. */
  retentionDays: number
  hysteresis?: Partial<Hysteresis>
  /** Share of failed or rate-limited replies in a traffic window that degrades an agent (default 0.1). */
  trafficErrorRatio?: number
  /** Values removed from stored error texts (the provider keys). */
  secrets?: readonly string[]
  /** Milliseconds clock, for the traffic windows (default Date.now). */
  now?: () => number
}

interface AgentHealthRow {
  agent_id: string
  status: AgentStatus
  reason: string
  failures: number
  successes: number
  probed_at: Date | null
  changed_at: Date
  checked_at: Date
}

interface TrafficRow {
  id: string
  agent_id: string
  attempts: number
  failures: number
  rate_limited: number
  failure_streak: number
  error: string | null
}

interface ProbeTarget {
  provider: Provider
  providerName: string
  model: string
  agents: string[]
}

interface ProbeResult {
  /** Undefined when the probe was cut short by stop(): no observation at all. */
  observation: Observation | undefined
  latencyMs: number
  error: string | null
}

interface Sample {
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

/** Which traffic windows a step writes: all (a tick), one agent's (an early step after a burst), none (its retry). */
type Flush = 'all' | { agent: string } | null

class ProbeTimeout extends Error {
  override readonly name = 'ProbeTimeout'
}

/**
 * The agent health monitor: probes each distinct provider+model every interval on the replica that
 * holds the lock, learns from real replies (recordTraffic), applies the hysteresis, writes samples,
 * transitions and events, and keeps every replica's registry and gauge on the shared state.
 */
export class HealthMonitor {
  private readonly pool: pg.Pool
  private readonly registry: AgentRegistry
  private readonly log: FastifyBaseLogger
  private readonly intervalMs: number
  private readonly probeTimeoutMs: number
  private readonly slowProbeMs: number
  private readonly hysteresis: Hysteresis
  private readonly errorRatio: number
  private readonly now: () => number
  private windows = new Map<string, TrafficWindow>()
  /** When each agent last asked for an early run (at most one per interval). */
  private readonly earlyRunAt = new Map<string, number>()
  private readonly stopController = new AbortController()
  private chain: Promise<unknown> = Promise.resolve()
  private timer: NodeJS.Timeout | undefined
  private retryTimer: NodeJS.Timeout | undefined
  private started = false
  private stopped = false
  private syncing: Promise<void> | undefined
  private syncAgain = false

  constructor (private readonly options: HealthMonitorOptions) {
    this.pool = options.pool
    this.registry = options.registry
    this.log = options.log
    this.intervalMs = options.intervalMs
    this.probeTimeoutMs = Math.min(options.probeTimeoutMs, options.intervalMs)
    this.slowProbeMs = options.slowProbeMs ?? this.probeTimeoutMs / 2
    this.hysteresis = { ...DEFAULT_HYSTERESIS, ...options.hysteresis }
    this.errorRatio = options.trafficErrorRatio ?? 0.1
    this.now = options.now ?? Date.now
  }

  /** Starts the ticks: the first after `firstTickDelayMs`, then one every interval. */
  start (): void {
    if (this.started || this.stopped) return
    this.started = true
    this.schedule(this.options.firstTickDelayMs ?? 1000)
  }

  /** Clears the timer, aborts a probe in flight and waits for the run in progress (nothing is written after). */
  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    clearTimeout(this.retryTimer)
    this.stopController.abort(new Error('agent health monitor stopped'))
    await Promise.all([this.chain, this.syncing])
  }

  /** One run now (after any run in progress): what a tick does. */
  runOnce (): Promise<RunReport> {
    return this.enqueue('all')
  }

  /**
   * Passive learning from one provider call (the reply path calls this): synchronous, never throws,
   * never touches the database. Outcomes add up in a per-agent window that the next tick writes as
   * one sample; a burst of failures asks for an early run.
   */
  recordTraffic (agentId: string, outcome: TrafficOutcome): void {
    try {
      if (this.stopped || !this.registry.has(agentId) || this.registry.effectiveProvider(agentId) === 'echo') return
      if (!outcome.ok && outcome.errorKind !== undefined && IGNORED_TRAFFIC.has(outcome.errorKind)) return
      let w = this.windows.get(agentId)
      if (!w) {
        w = { attempts: 0, failures: 0, rateLimited: 0, streak: 0, latencySumMs: 0, lastError: undefined }
        this.windows.set(agentId, w)
      }
      w.attempts++
      w.latencySumMs += Number.isFinite(outcome.latencyMs) && outcome.latencyMs > 0 ? outcome.latencyMs : 0
      if (outcome.ok) {
        w.streak = 0
        return
      }
      w.lastError = describeTrafficError(outcome)
      if (outcome.errorKind === 'rate_limited') {
        w.rateLimited++
        w.streak = 0
        return
      }
      w.failures++
      w.streak++
      if (w.streak >= this.hysteresis.failuresToDown && !this.registry.isDown(agentId)) this.requestEarlyRun(agentId)
    } catch (err) {
      this.log.error({ err }, 'agent health: recording a provider call failed')
    }
  }

  /** Reads the shared state and applies it (a follower hearing of a transition); coalesces bursts. */
  requestSync (): void {
    if (this.stopped) return
    if (this.syncing) {
      this.syncAgain = true
      return
    }
    this.syncing = (async () => {
      do {
        this.syncAgain = false
        try {
          await this.sync()
        } catch (err) {
          this.log.warn({ err: { message: (err as Error).message } }, 'agent health: could not read the shared state')
        }
      } while (this.syncAgain && !this.stopped)
    })().finally(() => (this.syncing = undefined))
  }

  /** Applies agent_health to this replica's registry and gauge. */
  async sync (): Promise<void> {
    const { rows } = await this.pool.query<AgentHealthRow>('SELECT agent_id, status, reason, checked_at FROM agent_health')
    if (this.stopped) return
    const byId = new Map(rows.map((row) => [row.agent_id, row]))
    for (const agent of this.registry.definitions()) {
      if (this.registry.effectiveProvider(agent.id) === 'echo') continue
      const row = byId.get(agent.id)
      if (row) this.apply(agent.id, row.status, row.reason, row.checked_at)
    }
  }

  private schedule (delayMs: number): void {
    this.timer = setTimeout(() => { void this.tick() }, delayMs)
    this.timer.unref()
  }

  private async tick (): Promise<void> {
    const started = this.now()
    try {
      await this.enqueue('all')
    } catch (err) {
      this.log.warn({ err: { message: (err as Error).message } }, 'agent health check failed; retrying at the next interval')
    }
    if (!this.stopped) this.schedule(Math.max(0, this.intervalMs - (this.now() - started)))
  }

  private requestEarlyRun (agentId: string): void {
    const now = this.now()
    const last = this.earlyRunAt.get(agentId)
    if (!this.started || (last !== undefined && now - last < this.intervalMs)) return
    this.earlyRunAt.set(agentId, now)
    const failed = (err: Error) => this.log.warn({ err: { message: err.message } }, 'agent health: early check failed')
    this.enqueue({ agent: agentId })
      .then((report) => {
        // Another replica held the lock (in its own step, at most a probe timeout long): try once
        // more after it, so that the burst does not wait for the next interval.
        if (report.leader || this.stopped) return
        this.retryTimer = setTimeout(() => { void this.enqueue(null).catch(failed) }, this.probeTimeoutMs + 100)
        this.retryTimer.unref()
      })
      .catch(failed)
  }

  /** Runs never overlap: each waits for the previous one. */
  private enqueue (flush: Flush): Promise<RunReport> {
    const run = this.chain.then(() => this.run(flush))
    this.chain = run.catch(() => undefined)
    return run
  }

  /** A step: write the traffic windows named by `flush`, then lead (probe, fold, write) or follow. */
  private async run (flush: Flush): Promise<RunReport> {
    const report: RunReport = { leader: false, probed: [], flushed: 0, folded: 0, transitions: [], purged: 0 }
    if (this.stopped) return report
    if (flush !== null) report.flushed = await this.flushTraffic(flush)

    const client = await this.pool.connect()
    let locked = false
    try {
      const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [HEALTH_LOCK_KEY])
      locked = rows[0]?.locked === true
      if (locked) {
        report.leader = true
        try {
          await this.lead(client, report)
        } finally {
          await client.query('SELECT pg_advisory_unlock($1)', [HEALTH_LOCK_KEY])
        }
      }
    } catch (err) {
      // A connection that failed mid-run may still hold the lock or a transaction: never reuse it.
      client.release(err as Error)
      throw err
    }
    client.release()
    if (!locked) await this.sync()
    return report
  }

  /** Writes this replica's traffic windows as samples; a window that could not be written is kept. */
  private async flushTraffic (which: 'all' | { agent: string }): Promise<number> {
    const taken = new Map<string, TrafficWindow>()
    for (const [agentId, w] of this.windows) {
      if (which === 'all' || agentId === which.agent) taken.set(agentId, w)
    }
    for (const agentId of taken.keys()) this.windows.delete(agentId)
    if (taken.size === 0) return 0
    const samples: Sample[] = []
    for (const [agentId, w] of taken) {
      const agent = this.registry.get(agentId)!
      samples.push({
        agentId,
        provider: this.registry.effectiveProvider(agentId),
        model: agent.model,
        status: verdictOf(trafficObservations(w, this.errorRatio), this.hysteresis),
        latencyMs: Math.round(w.latencySumMs / w.attempts),
        error: w.lastError === undefined ? null : redactSecrets(w.lastError, this.options.secrets),
        source: 'traffic',
        attempts: w.attempts,
        failures: w.failures,
        rateLimited: w.rateLimited,
        streak: w.streak,
        folded: false
      })
    }
    try {
      await insertSamples(this.pool, samples)
      return samples.length
    } catch (err) {
      for (const [agentId, w] of taken) {
        const newer = this.windows.get(agentId)
        this.windows.set(agentId, newer ? mergeWindows(w, newer) : w)
      }
      throw err
    }
  }

  /** The lock holder's part: probe what is due, fold, write, apply, purge. */
  private async lead (client: pg.PoolClient, report: RunReport): Promise<void> {
    const { rows: clock } = await client.query<{ now: Date }>('SELECT now() AS now')
    const now = clock[0]!.now
    const { rows: stored } = await client.query<AgentHealthRow>(
      'SELECT agent_id, status, reason, failures, successes, probed_at, changed_at, checked_at FROM agent_health'
    )
    const rows = new Map(stored.map((row) => [row.agent_id, row]))

    const due = this.dueTargets(rows, now)
    const results = await Promise.all(due.map((target) => this.probe(target)))
    if (this.stopped) return

    const samples: Sample[] = []
    const observations = new Map<string, Observation[]>()
    const add = (agentId: string, obs: Observation) => {
      const list = observations.get(agentId) ?? []
      list.push(obs)
      observations.set(agentId, list)
    }
    const probedAgents = new Set<string>()

    await client.query('BEGIN')
    try {
      // Every replica's traffic since the last fold, oldest first; probes are the freshest news.
      const { rows: traffic } = await client.query<TrafficRow>(
        `UPDATE health_checks SET folded_at = $1
          WHERE folded_at IS NULL AND source = 'traffic'
          RETURNING id, agent_id, attempts, failures, rate_limited, failure_streak, error`,
        [now]
      )
      traffic.sort((a, b) => Number(a.id) - Number(b.id))
      report.folded = traffic.length
      for (const row of traffic) {
        if (!this.registry.has(row.agent_id)) continue
        const w: TrafficWindow = {
          attempts: row.attempts,
          failures: row.failures,
          rateLimited: row.rate_limited,
          streak: row.failure_streak,
          latencySumMs: 0,
          lastError: row.error ?? undefined
        }
        for (const obs of trafficObservations(w, this.errorRatio)) add(row.agent_id, obs)
      }
      due.forEach((target, i) => {
        const result = results[i]!
        if (!result.observation) return
        for (const agentId of target.agents) {
          add(agentId, result.observation)
          probedAgents.add(agentId)
          samples.push({
            agentId,
            provider: target.providerName,
            model: target.model,
            status: probeVerdict[result.observation.kind],
            latencyMs: result.latencyMs,
            error: result.error,
            source: 'probe',
            attempts: 1,
            failures: result.observation.kind === 'failure' ? 1 : 0,
            rateLimited: result.observation.kind === 'warn' && result.error !== null ? 1 : 0,
            streak: result.observation.kind === 'failure' ? 1 : 0,
            folded: true
          })
        }
      })

      const updates: { agentId: string; state: HealthState; row: AgentHealthRow | undefined }[] = []
      const events: NewEvent[] = []
      for (const agent of this.registry.definitions()) {
        const row = rows.get(agent.id)
        const before: HealthState = row
          ? { status: row.status, failures: row.failures, successes: row.successes, reason: row.reason, source: 'probe' }
          : INITIAL_STATE
        let state = before
        if (this.registry.effectiveProvider(agent.id) === 'echo') {
          // Echo answers in-process: healthy whenever the service is.
          state = { status: 'healthy', failures: 0, successes: 0, reason: 'built-in echo provider', source: 'echo' }
          if (row && row.status === 'healthy' && !probedAgents.has(agent.id)) continue
        } else {
          const list = observations.get(agent.id)
          if (!list && row) continue
          for (const obs of list ?? []) state = observe(state, obs, this.hysteresis)
        }
        updates.push({ agentId: agent.id, state, row })
        if (state.status !== before.status) {
          const transition: HealthTransition = { agentId: agent.id, from: before.status, to: state.status, reason: state.reason, source: state.source }
          report.transitions.push(transition)
          events.push(...transitionEvents(transition, row, now))
        }
      }

      await insertSamples(client, samples, now)
      await upsertStates(client, updates, probedAgents, now)
      await recordEvents(client, events)
      await client.query('COMMIT')
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined)
      throw err
    }
    report.probed = [...probedAgents]

    for (const transition of report.transitions) {
      const level = transition.to === 'healthy' ? 'info' : 'warn'
      this.log[level]({ agent: transition.agentId, from: transition.from, to: transition.to, reason: transition.reason }, `agent ${transition.agentId} is ${transition.to}`)
    }
    // The holder applies what it read and what it wrote: its registry is current without a sync.
    const { rows: current } = await client.query<AgentHealthRow>('SELECT agent_id, status, reason, checked_at FROM agent_health')
    for (const row of current) {
      if (this.registry.has(row.agent_id)) this.apply(row.agent_id, row.status, row.reason, row.checked_at)
    }
    report.purged = await this.purge(client)
  }

  /**
   * One target per distinct provider endpoint (the registry shares a provider per base URL and key)
   * and model, due when its last probe is an interval old (less a tenth of it, at most 1 s, of timer
   * slack).
   */
  private dueTargets (rows: Map<string, AgentHealthRow>, now: Date): ProbeTarget[] {
    const slack = Math.min(1000, this.intervalMs / 10)
    const targets = new Map<Provider, Map<string, ProbeTarget & { due: boolean }>>()
    for (const agent of this.registry.definitions()) {
      const provider = this.registry.providerFor(agent.id)
      let byModel = targets.get(provider)
      if (!byModel) targets.set(provider, (byModel = new Map()))
      let target = byModel.get(agent.model)
      if (!target) {
        target = { provider, providerName: this.registry.effectiveProvider(agent.id), model: agent.model, agents: [], due: false }
        byModel.set(agent.model, target)
      }
      target.agents.push(agent.id)
      const probedAt = rows.get(agent.id)?.probed_at
      if (!probedAt || now.getTime() - probedAt.getTime() >= this.intervalMs - slack) target.due = true
    }
    return [...targets.values()].flatMap((byModel) => [...byModel.values()]).filter((target) => target.due)
  }

  /** One probe, bounded by the probe timeout even if the provider ignores its signal. */
  private async probe (target: ProbeTarget): Promise<ProbeResult> {
    // The SDK is imported on an agent's first call: that one-off load (seconds on a busy machine) is
    // not the provider's latency, so it happens before the clock starts.
    let provider: Provider = target.provider
    if (provider instanceof LazyProvider) {
      try {
        provider = await provider.adapter()
      } catch (err) {
        const error = this.describeProbeError(err)
        return { observation: { kind: 'failure', count: 1, reason: `probe failed: ${error}`, source: 'probe' }, latencyMs: 0, error }
      }
    }
    const controller = new AbortController()
    const stop = this.stopController.signal
    const onStop = () => controller.abort(stop.reason)
    stop.addEventListener('abort', onStop, { once: true })
    const timer = setTimeout(() => controller.abort(new ProbeTimeout(`no answer within ${this.probeTimeoutMs} ms`)), this.probeTimeoutMs)
    const aborted = new Promise<never>((_resolve, reject) => {
      const fail = () => reject(controller.signal.reason)
      if (controller.signal.aborted) fail()
      else controller.signal.addEventListener('abort', fail, { once: true })
    })
    aborted.catch(() => undefined)
    const started = performance.now()
    try {
      if (stop.aborted) throw stop.reason
      await Promise.race([provider.probe({ model: target.model, mode: this.options.probeMode, signal: controller.signal }), aborted])
      const latencyMs = Math.round(performance.now() - started)
      if (latencyMs >= this.slowProbeMs) {
        return { observation: { kind: 'warn', reason: `probe slow: ${latencyMs} ms (limit ${this.slowProbeMs} ms)`, source: 'probe' }, latencyMs, error: null }
      }
      return { observation: { kind: 'success', count: 1, reason: `probe answered in ${latencyMs} ms`, source: 'probe' }, latencyMs, error: null }
    } catch (err) {
      const latencyMs = Math.round(performance.now() - started)
      if (stop.aborted) return { observation: undefined, latencyMs, error: null }
      const error = this.describeProbeError(controller.signal.aborted ? controller.signal.reason : err)
      const kind = err instanceof ProviderError && err.kind === 'rate_limited' ? 'warn' : 'failure'
      const observation: Observation =
        kind === 'warn' ? { kind, reason: `probe ${error}`, source: 'probe' } : { kind, count: 1, reason: `probe failed: ${error}`, source: 'probe' }
      return { observation, latencyMs, error }
    } finally {
      clearTimeout(timer)
      stop.removeEventListener('abort', onStop)
    }
  }

  private describeProbeError (err: unknown): string {
    const secrets = this.options.secrets ?? []
    if (err instanceof ProbeTimeout) return `timeout: ${err.message}`
    if (err instanceof ProviderError) return redactSecrets(`${err.kind}: ${err.message}`, secrets)
    return redactSecrets(`error: ${(err as Error | undefined)?.message ?? String(err)}`, secrets)
  }

  private apply (agentId: string, status: AgentStatus, reason: string, checkedAt: Date): void {
    // A read that started before the latest commit may finish after it: never step back in time.
    const current = this.registry.health(agentId).checkedAt
    if (current !== null && Date.parse(current) > checkedAt.getTime()) return
    this.registry.setStatus(agentId, status, reason, checkedAt)
    this.options.metrics.setAgentState(agentId, status)
  }

  private async purge (client: pg.PoolClient): Promise<number> {
    let total = 0
    for (let batch = 0; batch < PURGE_MAX_BATCHES && !this.stopped; batch++) {
      const { rowCount } = await client.query(
        `DELETE FROM health_checks WHERE id IN (
           SELECT id FROM health_checks WHERE checked_at < now() - make_interval(days => $1) ORDER BY id LIMIT $2)`,
        [this.options.retentionDays, PURGE_BATCH]
      )
      total += rowCount ?? 0
      if ((rowCount ?? 0) < PURGE_BATCH) break
    }
    return total
  }
}

const probeVerdict: Record<Observation['kind'], AgentStatus> = { success: 'healthy', warn: 'degraded', failure: 'down' }

function describeTrafficError (outcome: TrafficOutcome): string {
  const kind = outcome.errorKind ?? 'error'
  return outcome.error ? `${kind}: ${outcome.error}` : kind
}

/** An older window that could not be written, followed by what came since. */
function mergeWindows (older: TrafficWindow, newer: TrafficWindow): TrafficWindow {
  return {
    attempts: older.attempts + newer.attempts,
    failures: older.failures + newer.failures,
    rateLimited: older.rateLimited + newer.rateLimited,
    streak: newer.streak === newer.attempts ? older.streak + newer.streak : newer.streak,
    latencySumMs: older.latencySumMs + newer.latencySumMs,
    lastError: newer.lastError ?? older.lastError
  }
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

async function insertSamples (db: Pick<pg.Pool, 'query'>, samples: Sample[], at?: Date): Promise<void> {
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

async function upsertStates (
  client: pg.PoolClient,
  updates: { agentId: string; state: HealthState; row: AgentHealthRow | undefined }[],
  probed: Set<string>,
  now: Date
): Promise<void> {
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
