/** 'ok': working; 'degraded': Redis configured but unreachable (reads miss, writes are skipped). */
export type CacheState = 'ok' | 'degraded'

/**
 * The small interface the service needs from a cache. Redis is never the only copy of anything, so
 * every method degrades instead of throwing: a failed get is a miss, a failed set or delete is skipped.
 */
export interface Cache {
  readonly backend: 'redis' | 'memory'
  get(key: string): Promise<string | undefined>
  set(key: string, value: string, ttlSeconds: number): Promise<void>
  delete(...keys: string[]): Promise<void>
  state(): CacheState
  /** A round trip with a deadline, for the probes: resolves with the latency in ms, rejects on failure. */
  ping(timeoutMs: number): Promise<number>
  close(): Promise<void>
}
