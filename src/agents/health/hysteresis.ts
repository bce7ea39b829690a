import type { AgentStatus } from '../agent.js'

/*
 * The agent health state machine, as pure functions: what a probe or a window of replies says
 * (observations), how observations move an agent's state (observe), and the verdict of one sample on
 * its own. No clock, no database, no network.
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

export interface HealthTransition {
  agentId: string
  from: AgentStatus
  to: AgentStatus
  reason: string
  source: HealthSource
}

/**
 * The hysteresis. healthy → degraded on the first failure or warning; → down after
 * `failuresToDown` failures with no success in between; degraded or down → healthy only after
 * `successesToRecover` successes in a row (a down agent stays down until then, so one lucky probe
 * does not send traffic back to a flapping provider).
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

/** An older window that could not be written, followed by what came since. */
export function mergeWindows (older: TrafficWindow, newer: TrafficWindow): TrafficWindow {
  return {
    attempts: older.attempts + newer.attempts,
    failures: older.failures + newer.failures,
    rateLimited: older.rateLimited + newer.rateLimited,
    streak: newer.streak === newer.attempts ? older.streak + newer.streak : newer.streak,
    latencySumMs: older.latencySumMs + newer.latencySumMs,
    lastError: newer.lastError ?? older.lastError
  }
}

/**
 * The verdict of a traffic window on its own (health_checks.status); the agent's state is the
 * hysteresis: down when it ends in a burst of failures, degraded when it has problems, else healthy.
 */
export function trafficVerdict (observations: Observation[], h: Hysteresis): AgentStatus {
  let verdict: AgentStatus = 'healthy'
  for (const obs of observations) {
    if (obs.kind === 'failure') verdict = obs.count >= h.failuresToDown ? 'down' : 'degraded'
    else if (obs.kind === 'warn' && verdict === 'healthy') verdict = 'degraded'
  }
  return verdict
}

/** The verdict of one probe on its own: healthy (answered in time), degraded (slow or rate limited), down (failed). */
export const PROBE_VERDICT: Record<Observation['kind'], AgentStatus> = { success: 'healthy', warn: 'degraded', failure: 'down' }
