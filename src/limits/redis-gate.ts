import type { Redis } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { Cache } from '../cache/cache.js'
import type { Clock } from '../clock.js'

/** How long the limits stay on their per-replica share after a Redis command failed or timed out. */
export const REDIS_PAUSE_AFTER_FAILURE_MS = 1000

/**
 * Whether the limits count in Redis (exact across replicas) or on this replica alone (its share of
 * each limit). Redis is used only while its connection is ready, the cache does not report it
 * degraded, and no limit command failed in the last REDIS_PAUSE_AFTER_FAILURE_MS: a Redis that hangs
 * costs one request the command timeout (REDIS_COMMAND_TIMEOUT_MS), not every request.
 */
export class RedisGate {
  private pausedUntil = 0
  private degraded = false

  constructor (
    readonly client: Redis | undefined,
    private readonly cache: Cache,
    private readonly clock: Clock,
    private readonly log: FastifyBaseLogger
  ) {}

  usable (): boolean {
    return this.client !== undefined && this.client.status === 'ready' && this.cache.state() === 'ok' && this.clock.now() >= this.pausedUntil
  }

  /** Counting falls back to this replica's share: logged once per outage. */
  failed (err: unknown): void {
    this.pausedUntil = this.clock.now() + REDIS_PAUSE_AFTER_FAILURE_MS
    if (this.degraded) return
    this.degraded = true
    this.log.warn({ err: { message: (err as Error).message } }, 'limits: Redis unavailable, each replica enforces its share (limit / LIMIT_REPLICAS)')
  }

  succeeded (): void {
    if (!this.degraded) return
    this.degraded = false
    this.log.info('limits: Redis is back, counting exactly across replicas again')
  }
}
