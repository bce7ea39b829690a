import { Redis } from 'ioredis'
import type { FastifyBaseLogger as Logger } from 'fastify'
import type { Cache, CacheState } from './cache.js'

export interface RedisCacheOptions {
  url: string
  keyPrefix: string
  connectTimeoutMs: number
  commandTimeoutMs: number
  log: Logger
}

/**
 * Redis behind the Cache interface. No request ever waits on Redis for long: commands fail at once
 * while disconnected (no offline queue) and time out after commandTimeoutMs when Redis hangs; the
 * client reconnects by itself in the background, forever, with a capped backoff.
 */
export class RedisCache implements Cache {
  readonly backend = 'redis' as const
  readonly client: Redis
  private readonly log: Logger
  private lastError: string | undefined

  constructor(options: RedisCacheOptions) {
    this.log = options.log.child({ component: 'redis' })
    this.client = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      lazyConnect: true,
      connectTimeout: options.connectTimeoutMs,
      commandTimeout: options.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (attempt) => Math.min(100 * 2 ** Math.min(attempt, 5), 2000),
      connectionName: 'smalltalk-server'
    })
    this.client.on('error', (err: Error) => {
      // ioredis emits an error per failed reconnection attempt: log the first of a series only.
      if (this.lastError !== err.message) this.log.warn({ err: { message: err.message } }, 'Redis error')
      this.lastError = err.message
    })
    this.client.on('ready', () => {
      if (this.lastError !== undefined) this.log.info('Redis connection restored')
      this.lastError = undefined
    })
  }

  /** Connects, but never fails start-up: an unreachable Redis leaves the cache degraded. */
  async connect(): Promise<void> {
    try {
      await this.client.connect()
    } catch (err) {
      this.log.warn({ err: { message: (err as Error).message } }, 'Redis unreachable at start-up: running degraded, reconnecting in the background')
    }
  }

  state(): CacheState {
    return this.client.status === 'ready' ? 'ok' : 'degraded'
  }

  async get(key: string): Promise<string | undefined> {
    if (this.client.status !== 'ready') return undefined
    try {
      return (await this.client.get(key)) ?? undefined
    } catch (err) {
      this.noteFailure('get', err)
      return undefined
    }
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    if (this.client.status !== 'ready') return
    try {
      await this.client.set(key, value, 'EX', ttlSeconds)
    } catch (err) {
      this.noteFailure('set', err)
    }
  }

  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0 || this.client.status !== 'ready') return
    try {
      await this.client.del(...keys)
    } catch (err) {
      this.noteFailure('delete', err)
    }
  }

  async ping(timeoutMs: number): Promise<number> {
    const started = performance.now()
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        this.client.ping(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
        })
      ])
    } finally {
      clearTimeout(timer)
    }
    return performance.now() - started
  }

  async close(): Promise<void> {
    this.client.disconnect()
  }

  private noteFailure(operation: string, err: unknown): void {
    this.log.debug({ operation, err: { message: (err as Error).message } }, 'Redis command failed; treated as a cache miss')
  }
}
