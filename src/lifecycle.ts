import { setMaxListeners } from 'node:events'
import type pg from 'pg'
import type { AgentRegistry } from './agents/registry.js'
import type { Cache } from './cache/cache.js'
import type { ToolCatalog } from './tools/tools.js'

export type Phase = 'starting' | 'ready' | 'stopping'

/** Time and timers, injected so that tests move time instead of waiting for it. */
export interface Clock {
  now(): number
  setTimeout(callback: () => void, ms: number): unknown
  clearTimeout(timer: unknown): void
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (timer) => clearTimeout(timer as NodeJS.Timeout)
}

export interface DrainOptions {
  /** SHUTDOWN_TIMEOUT_MS: when the forced exit comes (close-with-grace's own deadline). */
  timeoutMs: number
  /** Closes the api instance: no new connections, in-flight requests finish, Redis and PostgreSQL closed. */
  closeApi: () => Promise<void>
  /** Closes the ops instance, last, so that liveness answers while the api drains. */
  closeOps: () => Promise<void>
  log: { warn(message: string): void }
}

/** What the api instance lends the ops instance once its plugins are up. */
export interface ServiceDependencies {
  pool: pg.Pool
  cache: Cache
  migrations: { version: number; expected: number }
  databaseKind: 'external' | 'embedded'
  agents: AgentRegistry
  /** The MCP servers, for /health (absent where an app is built without the tools plugin). */
  tools?: ToolCatalog
}

/**
 * The state shared by the two Fastify instances of one process. The ops instance starts first (so
 * liveness answers during a long migration) and reads the api instance's clients from here.
 */
export class Lifecycle {
  phase: Phase = 'starting'
  dependencies: ServiceDependencies | undefined
  shutdownStartedAt: number | undefined
  /** Aborted at the shutdown deadline: replies still running end with an error instead of being cut. */
  private readonly replies = new AbortController()
  readonly replySignal = this.replies.signal

  constructor (private readonly clock: Clock = systemClock) {
    // Every reply in flight listens here (its deadline's parent): more than Node's default of 10
    // listeners is the normal state of a busy replica, not a leak worth a warning in the logs.
    setMaxListeners(0, this.replySignal)
  }

  attach (dependencies: ServiceDependencies): void {
    this.dependencies = dependencies
  }

  markReady (): void {
    if (this.phase === 'starting') this.phase = 'ready'
  }

  /** From this moment /ready answers 503, so load balancers stop sending new traffic. */
  beginShutdown (): void {
    this.phase = 'stopping'
    this.shutdownStartedAt ??= this.clock.now()
  }

  abortReplies (): void {
    this.replies.abort(new Error('shutting down'))
  }

  /**
   * The drain, once shutdown has begun: the api instance first, the ops instance last. Replies still
   * running shortly before the deadline are ended with an error event (their user messages are
   * stored, the failure recorded), so that nothing is cut off mid-write by the forced exit.
   */
  async drain (options: DrainOptions): Promise<void> {
    const margin = Math.min(1000, options.timeoutMs / 5)
    const endReplies = this.clock.setTimeout(() => {
      options.log.warn('shutdown deadline is near: ending the replies still running')
      this.abortReplies()
    }, options.timeoutMs - margin)
    try {
      await options.closeApi()
    } finally {
      this.clock.clearTimeout(endReplies)
    }
    await options.closeOps()
  }

  /** Seconds since shutdown began (0 before): how long the drain has been running. */
  shutdownSeconds (): number {
    return this.shutdownStartedAt === undefined ? 0 : (this.clock.now() - this.shutdownStartedAt) / 1000
  }
}
