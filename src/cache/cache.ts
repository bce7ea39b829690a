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
  /**
   * Compare-and-set for records that change over time: stores `value` unless the cached one carries
   * a newer `rank` (compared element by element), so a slow writer can never put an older record
   * back over a newer one. Read it back with getRanked.
   */
  setRanked(key: string, value: string, ttlSeconds: number, rank: readonly [number, number]): Promise<void>
  getRanked(key: string): Promise<string | undefined>
  delete(...keys: string[]): Promise<void>
  state(): CacheState
  /** A round trip with a deadline, for the probes: resolves with the latency in ms, rejects on failure. */
  ping(timeoutMs: number): Promise<number>
  close(): Promise<void>
}

/** How a ranked value is stored: "<rank0>.<rank1>|<value>", so Redis can compare it in a script. */
export function encodeRanked(value: string, rank: readonly [number, number]): string {
  return `${rank[0]}.${rank[1]}|${value}`
}

export function decodeRanked(stored: string | undefined): { rank: [number, number]; value: string } | undefined {
  if (stored === undefined) return undefined
  const match = /^(\d+)\.(\d+)\|/.exec(stored)
  if (!match) return undefined
  return { rank: [Number(match[1]), Number(match[2])], value: stored.slice(match[0].length) }
}

export function isNewer(a: readonly [number, number], b: readonly [number, number]): boolean {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1])
}
