import type pg from 'pg'
import type { FastifyBaseLogger } from 'fastify'
import { systemClock, type Clock } from '../../clock.js'
import type { LlmMetrics } from '../../metrics/llm-metrics.js'
import type { ProbeMode, Provider } from '../../providers/provider.js'
import type { AgentStatus } from '../agent.js'
import type { AgentRegistry } from '../registry.js'
import { HealthStore, type AgentHealthRow, type FoldInput, type FoldPlan, type Sample, type StateUpdate } from './health-store.js'
import {
  DEFAULT_HYSTERESIS,
  INITIAL_STATE,
  PROBE_VERDICT,
  mergeWindows,
  observe,
  trafficObservations,
  trafficVerdict,
  type HealthState,
  type HealthTransition,
  type Hysteresis,
  type Observation,
  type TrafficWindow
} from './hysteresis.js'
import { Prober, redactSecrets, type ProbeResult, type ProbeTarget } from './prober.js'

/*
 * How the replicas agree (DESIGN section 4, issue 5 item 5):
 *
 * - The shared state is the agent_health table: status, reason and the hysteresis counters per
 *   agent. Only a transaction holding the advisory lock writes it, and it writes the transition
 *   events in the same transaction, so the event log never disagrees with the state.
 * - Every replica runs the same tick every interval: it flushes its own traffic window into
 *   health_checks (source 'traffic', folded_at NULL), then tries the lock in a short transaction
 *   that claims each distinct provider+model+baseUrl whose last probe (agent_health.probed_at, in
 *   the database's clock) is an interval old, by setting probed_at. That transaction commits before
 *   any probe starts: a probe waits seconds on the network, and neither a pooled connection nor the
 *   lock waits with it.
 * - The claimer probes, then folds in a second short transaction, under the lock (waiting for
 *   another replica's fold): every unfolded traffic sample of every replica and its probe results
 *   through the hysteresis, written with the samples and the events. A replica that does not get
 *   the lock reads agent_health and applies it to its registry and gauge.
 * - Followers hear of a transition at once: its event is announced with NOTIFY (the event log's
 *   channel), and the plugin calls requestSync() when an agent.status_changed event arrives; the
 *   tick's read is the fallback when that connection is down.
 * - A burst of failed replies (failuresToDown in a row on one replica) asks for an early run, so
 *   an agent can go down before the next probe, wherever its traffic fails.
 *
 * No leader lives longer than one transaction: if a replica dies, the next tick of any other takes
 * over, with the counters where the last one left them (a target it had claimed is probed again an
 * interval later).
 */

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
// A follower's early run tries again this much later: the lock is only held by short transactions.
const EARLY_RETRY_MS = 1000

export interface RunReport {
  /** Whether this replica led the run: took the lock, probed what was due, folded and wrote. */
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
  /** Times the ticks, the early runs and the probes (default: the system clock). */
  clock?: Clock
}

/** Which traffic windows a step writes: all (a tick), one agent's (an early step after a burst), none (its retry). */
type Flush = 'all' | { agent: string } | null

/**
 * The agent health monitor: probes each distinct provider+model every interval on the replica that
 * claims it, learns from real replies (recordTraffic), applies the hysteresis, writes samples,
 * transitions and events, and keeps every replica's registry and gauge on the shared state.
 */
export class HealthMonitor {
  private readonly store: HealthStore
  private readonly registry: AgentRegistry
  private readonly log: FastifyBaseLogger
  private readonly intervalMs: number
  private readonly hysteresis: Hysteresis
  private readonly errorRatio: number
  private readonly clock: Clock
  private readonly prober: Prober
  private windows = new Map<string, TrafficWindow>()
  /** When each agent last asked for an early run (at most one per interval). */
  private readonly earlyRunAt = new Map<string, number>()
  private readonly stopController = new AbortController()
  private chain: Promise<unknown> = Promise.resolve()
  private cancelTick: (() => void) | undefined
  private cancelRetry: (() => void) | undefined
  private started = false
  private stopped = false
  private syncing: Promise<void> | undefined
  private syncAgain = false

  constructor (private readonly options: HealthMonitorOptions) {
    this.store = new HealthStore(options.pool)
    this.registry = options.registry
    this.log = options.log
    this.intervalMs = options.intervalMs
    const probeTimeoutMs = Math.min(options.probeTimeoutMs, options.intervalMs)
    this.hysteresis = { ...DEFAULT_HYSTERESIS, ...options.hysteresis }
    this.errorRatio = options.trafficErrorRatio ?? 0.1
    this.clock = options.clock ?? systemClock
    this.prober = new Prober({
      mode: options.probeMode,
      timeoutMs: probeTimeoutMs,
      slowMs: options.slowProbeMs ?? probeTimeoutMs / 2,
      secrets: options.secrets ?? [],
      stopSignal: this.stopController.signal,
      clock: this.clock
    })
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
    this.cancelTick?.()
    this.cancelRetry?.()
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
    const rows = await this.store.readStates()
    if (this.stopped) return
    const byId = new Map(rows.map((row) => [row.agent_id, row]))
    for (const agent of this.registry.definitions()) {
      if (this.registry.effectiveProvider(agent.id) === 'echo') continue
      const row = byId.get(agent.id)
      if (row) this.apply(agent.id, row.status, row.reason, row.checked_at)
    }
  }

  private schedule (delayMs: number): void {
    this.cancelTick = this.clock.setTimeout(() => { void this.tick() }, delayMs)
  }

  private async tick (): Promise<void> {
    const started = this.clock.now()
    try {
      await this.enqueue('all')
    } catch (err) {
      this.log.warn({ err: { message: (err as Error).message } }, 'agent health check failed; retrying at the next interval')
    }
    if (!this.stopped) this.schedule(Math.max(0, this.intervalMs - (this.clock.now() - started)))
  }

  private requestEarlyRun (agentId: string): void {
    const now = this.clock.now()
    const last = this.earlyRunAt.get(agentId)
    if (!this.started || (last !== undefined && now - last < this.intervalMs)) return
    this.earlyRunAt.set(agentId, now)
    const failed = (err: Error) => this.log.warn({ err: { message: err.message } }, 'agent health: early check failed')
    this.enqueue({ agent: agentId })
      .then((report) => {
        // Another replica held the lock (for one of its short transactions): try once more after it,
        // so that the burst does not wait for the next interval.
        if (report.leader || this.stopped) return
        this.cancelRetry = this.clock.setTimeout(() => { void this.enqueue(null).catch(failed) }, EARLY_RETRY_MS)
      })
      .catch(failed)
  }

  /** Runs never overlap: each waits for the previous one. */
  private enqueue (flush: Flush): Promise<RunReport> {
    const run = this.chain.then(() => this.run(flush))
    this.chain = run.catch(() => undefined)
    return run
  }

  /** A step: write the traffic windows named by `flush`, then lead (claim, probe, fold) or follow. */
  private async run (flush: Flush): Promise<RunReport> {
    const report: RunReport = { leader: false, probed: [], flushed: 0, folded: 0, transitions: [], purged: 0 }
    if (this.stopped) return report
    if (flush !== null) report.flushed = await this.flushTraffic(flush)

    const due = await this.store.claimProbes((rows, now) => this.dueTargets(rows, now))
    if (due === undefined) {
      await this.sync()
      return report
    }
    report.leader = true
    // No connection is checked out from here until the fold: the probes take the time they take.
    const results = await Promise.all(due.map((target) => this.prober.probe(target)))
    if (this.stopped) return report

    const { folded, transitions, states } = await this.store.fold((input) => this.plan(input, due, results))
    report.folded = folded
    report.transitions = transitions
    report.probed = due.filter((_target, i) => results[i]!.observation).flatMap((target) => target.agents)
    for (const transition of transitions) {
      const level = transition.to === 'healthy' ? 'info' : 'warn'
      this.log[level]({ agent: transition.agentId, from: transition.from, to: transition.to, reason: transition.reason }, `agent ${transition.agentId} is ${transition.to}`)
    }
    // The leader applies what it read and what it wrote: its registry is current without a sync.
    for (const row of states) {
      if (this.registry.has(row.agent_id)) this.apply(row.agent_id, row.status, row.reason, row.checked_at)
    }
    report.purged = await this.store.purge(this.options.retentionDays, () => this.stopped)
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
      samples.push({
        agentId,
        provider: this.registry.effectiveProvider(agentId),
        model: this.registry.get(agentId)!.model,
        status: trafficVerdict(trafficObservations(w, this.errorRatio), this.hysteresis),
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
      await this.store.insertTraffic(samples)
      return samples.length
    } catch (err) {
      for (const [agentId, w] of taken) {
        const newer = this.windows.get(agentId)
        this.windows.set(agentId, newer ? mergeWindows(w, newer) : w)
      }
      throw err
    }
  }

  /**
   * The traffic samples and the probe results through the hysteresis: the probe samples to write
   * and the new state of every agent that has news (echo agents are healthy by definition).
   */
  private plan ({ rows, traffic }: FoldInput, due: ProbeTarget[], results: ProbeResult[]): FoldPlan {
    const observations = new Map<string, Observation[]>()
    const add = (agentId: string, obs: Observation) => {
      const list = observations.get(agentId) ?? []
      list.push(obs)
      observations.set(agentId, list)
    }
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
    const samples: Sample[] = []
    const probed = new Set<string>()
    due.forEach((target, i) => {
      const { observation, latencyMs, error } = results[i]!
      if (!observation) return
      for (const agentId of target.agents) {
        add(agentId, observation)
        probed.add(agentId)
        samples.push({
          agentId,
          provider: target.providerName,
          model: target.model,
          status: PROBE_VERDICT[observation.kind],
          latencyMs,
          error,
          source: 'probe',
          attempts: 1,
          failures: observation.kind === 'failure' ? 1 : 0,
          rateLimited: observation.kind === 'warn' && error !== null ? 1 : 0,
          streak: observation.kind === 'failure' ? 1 : 0,
          folded: true
        })
      }
    })

    const updates: StateUpdate[] = []
    for (const agent of this.registry.definitions()) {
      const row = rows.get(agent.id)
      let state: HealthState = row
        ? { status: row.status, failures: row.failures, successes: row.successes, reason: row.reason, source: 'probe' }
        : INITIAL_STATE
      if (this.registry.effectiveProvider(agent.id) === 'echo') {
        // Echo answers in-process: healthy whenever the service is.
        if (row && row.status === 'healthy' && !probed.has(agent.id)) continue
        state = { status: 'healthy', failures: 0, successes: 0, reason: 'built-in echo provider', source: 'echo' }
      } else {
        const list = observations.get(agent.id)
        if (!list && row) continue
        for (const obs of list ?? []) state = observe(state, obs, this.hysteresis)
      }
      updates.push({ agentId: agent.id, state })
    }
    return { samples, updates }
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

  private apply (agentId: string, status: AgentStatus, reason: string, checkedAt: Date): void {
    // A read that started before the latest commit may finish after it: never step back in time.
    const current = this.registry.health(agentId).checkedAt
    if (current !== null && Date.parse(current) > checkedAt.getTime()) return
    this.registry.setStatus(agentId, status, reason, checkedAt)
    this.options.metrics.setAgentState(agentId, status)
  }
}

function describeTrafficError (outcome: TrafficOutcome): string {
  const kind = outcome.errorKind ?? 'error'
  return outcome.error ? `${kind}: ${outcome.error}` : kind
}
