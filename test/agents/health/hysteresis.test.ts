import t from 'tap'
import type { AgentStatus } from '../../../src/agents/agent.js'
import { DEFAULT_HYSTERESIS, INITIAL_STATE, observe, trafficObservations, type HealthState, type Observation } from '../../../src/agents/health/hysteresis.js'

// The hysteresis and the traffic windows, as pure functions.

const h = DEFAULT_HYSTERESIS
const ok = (count = 1): Observation => ({ kind: 'success', count, reason: 'ok', source: 'probe' })
const warn = (): Observation => ({ kind: 'warn', reason: 'slow', source: 'probe' })
const fail = (count = 1): Observation => ({ kind: 'failure', count, reason: 'boom', source: 'probe' })
const run = (...observations: Observation[]) => observations.reduce((state: HealthState, obs) => observe(state, obs, h), INITIAL_STATE)
const statuses = (...observations: Observation[]) => {
  const seen: AgentStatus[] = []
  observations.reduce((state: HealthState, obs) => {
    const next = observe(state, obs, h)
    seen.push(next.status)
    return next
  }, INITIAL_STATE)
  return seen
}

t.test('hysteresis: degraded on the first failure, down after 3, healthy only after 2 successes in a row', async (t) => {
  t.same(h, { failuresToDown: 3, successesToRecover: 2 })
  t.same(statuses(fail(), fail(), fail(), ok(), ok()), ['degraded', 'degraded', 'down', 'down', 'healthy'])
  t.same(statuses(fail(), ok(), ok()), ['degraded', 'degraded', 'healthy'], 'a degraded agent recovers after 2 successes')
  t.same(statuses(fail(), fail(), ok(), fail(), fail()), ['degraded', 'degraded', 'degraded', 'degraded', 'degraded'], 'a success resets the failure count')
  t.same(statuses(fail(3), ok(), fail(), ok(), ok()), ['down', 'down', 'down', 'down', 'healthy'], 'a down agent needs successes in a row')
  t.same(statuses(warn(), warn(), warn(), warn()), ['degraded', 'degraded', 'degraded', 'degraded'], 'warnings alone never take an agent down')
  t.same(statuses(fail(), warn(), fail(), warn(), fail()), ['degraded', 'degraded', 'degraded', 'degraded', 'down'], 'warnings neither add to nor reset the failures')
  t.same(statuses(fail(3), ok(), warn(), ok()), ['down', 'down', 'down', 'down'], 'a warning breaks a run of successes')
  t.same(statuses(ok(), ok()), ['healthy', 'healthy'])
  t.equal(run(fail(3), warn()).reason, 'boom', 'a warning does not replace the reason an agent is down')
  t.same(run(fail(10)), { status: 'down', failures: 3, successes: 0, reason: 'boom', source: 'probe' }, 'counters are capped at the thresholds')
  t.same(observe(INITIAL_STATE, fail(), { failuresToDown: 1, successesToRecover: 1 }).status, 'down', 'thresholds are options')
})

t.test('traffic windows: the share of problems, and the failures in a row at the end', async (t) => {
  const base = { attempts: 0, failures: 0, rateLimited: 0, streak: 0, latencySumMs: 0, lastError: 'server: 503' }
  t.same(trafficObservations({ ...base, attempts: 50 }, 0.1), [{ kind: 'success', count: 50, reason: '50 replies answered', source: 'traffic' }])
  t.same(trafficObservations({ ...base, attempts: 100, failures: 2 }, 0.1), [{ kind: 'success', count: 98, reason: '98 replies answered', source: 'traffic' }], 'scattered errors below the ratio')
  t.match(trafficObservations({ ...base, attempts: 20, failures: 3, rateLimited: 2 }, 0.1), [{ kind: 'warn', reason: '5 of 20 replies failed or were rate limited (last: server: 503)' }])
  t.match(trafficObservations({ ...base, attempts: 10, rateLimited: 10 }, 0.1), [{ kind: 'warn' }], 'rate limits only ever degrade')
  t.match(trafficObservations({ ...base, attempts: 53, failures: 3, streak: 3 }, 0.1), [{ kind: 'success', count: 50 }, { kind: 'failure', count: 3, reason: '3 replies in a row failed: server: 503' }])
  t.match(trafficObservations({ ...base, attempts: 4, failures: 4, streak: 4 }, 0.1), [{ kind: 'failure', count: 4 }])
})
