import { setMaxListeners } from 'node:events'
import type pg from 'pg'
import type { AgentRegistry } from './agents/registry.js'
import type { Cache } from './cache/cache.js'

export type Phase = 'starting' | 'ready' | 'stopping'

/** What the api instance lends the ops instance once its plugins are up. */
export interface ServiceDependencies {
  pool: pg.Pool
  cache: Cache
  migrations: { version: number; expected: number }
  databaseKind: 'external' | 'embedded'
  agents: AgentRegistry
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

  constructor () {
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
    this.shutdownStartedAt ??= Date.now()
  }

  abortReplies (): void {
    this.replies.abort(new Error('shutting down'))
  }

  /** Seconds since shutdown began (0 before): how long the drain has been running. */
  shutdownSeconds (): number {
    return this.shutdownStartedAt === undefined ? 0 : (Date.now() - this.shutdownStartedAt) / 1000
  }
}
