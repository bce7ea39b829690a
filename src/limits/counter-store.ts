import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import type { Redis } from 'ioredis'
import type { Clock } from '../clock.js'
import type { RedisGate } from './redis-gate.js'

type Result = { current: number; ttl: number }
type Callback = (error: Error | null, result?: Result) => void

// @fastify/rate-limit's own Redis store (an atomic INCR + PEXPIRE script): its module has no types
// (declared in rate-limit-store.d.ts). A static import, so that the image's bundle (esbuild) has it.
import RedisStoreModule from '@fastify/rate-limit/store/RedisStore.js'

const RedisStore = RedisStoreModule as unknown as new (
  continueExceeding: boolean, exponentialBackoff: boolean, redis: Redis, key: string
) => Pick<FastifyRateLimitStore, 'incr'>

/** Fixed windows counted in this process, timed by the injected clock. */
export class LocalWindows {
  private readonly windows = new Map<string, { count: number; resetAt: number }>()
  private static readonly SWEEP_AT = 10_000

  constructor (private readonly clock: Clock) {}

  incr (key: string, windowMs: number): Result {
    const now = this.clock.now()
    let window = this.windows.get(key)
    if (!window || window.resetAt <= now) {
      if (this.windows.size >= LocalWindows.SWEEP_AT) this.sweep(now)
      window = { count: 0, resetAt: now + windowMs }
      this.windows.set(key, window)
    }
    window.count++
    return { current: window.count, ttl: window.resetAt - now }
  }

  private sweep (now: number): void {
    for (const [key, window] of this.windows) if (window.resetAt <= now) this.windows.delete(key)
  }
}

export interface CounterStoreOptions {
  gate: RedisGate
  clock: Clock
  /** LIMIT_REPLICAS: while Redis is unreachable each replica admits max / replicas. */
  replicas: number
}

/**
 * A store for @fastify/rate-limit that counts in Redis through the plugin's RedisStore (exact across
 * replicas) and, while Redis is unreachable or a command fails or times out, in this process: there
 * each replica admits its share, max / LIMIT_REPLICAS (at least 1). The plugin compares the count
 * with max, so a local count is reported scaled to max: the share's last request counts as max.
 */
export function counterStore (options: CounterStoreOptions): FastifyRateLimitStoreCtor {
  const { gate, clock, replicas } = options
  const redisStore = gate.client ? new RedisStore(false, false, gate.client, 'limits:') : undefined
  const local = new LocalWindows(clock)

  const localIncr = (key: string, windowMs: number, max: number): Result => {
    const { current, ttl } = local.incr(key, windowMs)
    const share = Math.max(1, Math.floor(max / replicas))
    return { current: Math.ceil(current * max / share), ttl }
  }

  class CounterStore implements FastifyRateLimitStore {
    incr (key: string, callback: Callback, timeWindow: number, max: number): void {
      if (!redisStore || !gate.usable()) {
        callback(null, localIncr(key, timeWindow, max))
        return
      }
      redisStore.incr(key, (err, result) => {
        if (err || !result) {
          gate.failed(err)
          callback(null, localIncr(key, timeWindow, max))
          return
        }
        gate.succeeded()
        callback(null, result)
      }, timeWindow, max)
    }

    // One store for every use: the key generators keep the limits apart ("rate:<tenant>", "messages:<tenant>").
    child (): FastifyRateLimitStore {
      return this
    }
  }
  return CounterStore
}
