/**
 * ManualClock: a Clock (src/clock.ts) that moves only when the test moves it, so that timers and
 * deadlines are tested without sleeping and without depending on the machine's speed.
 *
 *   const clock = new ManualClock()
 *   new ProviderGuard({ ..., clock })       // or HealthMonitor({ clock }), buildService(t, env, { clock })
 *   clock.advance(300)                       // runs every timer due within 300 ms, in order
 *   clock.pending                            // the delays (from now) of the timers set and not run
 *   await clock.waitForTimer(60_000)         // until the code under test has set a timer that far ahead
 *   await clock.waitFor((pending) => pending.length === 1)
 *   await clock.runUntil(promise)            // runs each timer as soon as it is set, until `promise` settles
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { Clock } from '../../src/clock.js'

interface Timer {
  at: number
  fn: () => void
}

export class ManualClock implements Clock {
  private time: number
  private readonly timers = new Set<Timer>()

  constructor (start = Date.now()) {
    this.time = start
  }

  now (): number {
    return this.time
  }

  setTimeout (fn: () => void, ms: number): () => void {
    const timer: Timer = { at: this.time + Math.max(0, ms), fn }
    this.timers.add(timer)
    return () => { this.timers.delete(timer) }
  }

  /** The delays from now of the pending timers, soonest first. */
  get pending (): number[] {
    return [...this.timers].map((timer) => timer.at - this.time).sort((a, b) => a - b)
  }

  /** Moves time `ms` forward, running each timer that falls due at its own time (those they set too). */
  advance (ms: number): void {
    const until = this.time + ms
    for (let next = this.next(); next && next.at <= until; next = this.next()) {
      this.timers.delete(next)
      this.time = next.at
      next.fn()
    }
    this.time = until
  }

  /** Resolves once `count` timers are pending `ms` from now: the code under test sets them in its own time. */
  waitForTimer (ms: number, count = 1): Promise<void> {
    return this.waitFor((pending) => pending.filter((delay) => delay === ms).length >= count, `${count} timer(s) ${ms} ms ahead`)
  }

  /** Resolves once `check` holds for the pending timers (their delays from now, soonest first). */
  async waitFor (check: (pending: number[]) => boolean, what = 'the expected timers', timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!check(this.pending)) {
      if (Date.now() > deadline) throw new Error(`clock: waited for ${what}; pending: [${this.pending.join(', ')}]`)
      await sleep(5)
    }
  }

  /**
   * Runs each timer as soon as it is set, moving time to it, until `work` settles: for waits beside the
   * point of a test (backoff between retries). Never use it while a deadline should not pass.
   */
  async runUntil<T> (work: Promise<T>): Promise<T> {
    const state = { settled: false }
    const done = work.then(() => { state.settled = true }, () => { state.settled = true })
    while (!state.settled) {
      const next = this.next()
      if (next) this.advance(next.at - this.time)
      else await Promise.race([done, sleep(5)])
    }
    return work
  }

  private next (): Timer | undefined {
    let soonest: Timer | undefined
    for (const timer of this.timers) if (!soonest || timer.at < soonest.at) soonest = timer
    return soonest
  }
}
