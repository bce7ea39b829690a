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
  /**
   * Sequence lists: a contiguous run of items numbered by consecutive seqs, the newest last (a
   * session's recent messages). appendToSeqList adds the item numbered `seq` when the list ends at
   * seq - 1 (or starts a list at seq 1), trims it to its newest `maxLength` items and renews its TTL;
   * a list that already holds seq (or a newer tail) is left alone; a list that would get a gap is
   * deleted, so that a list is never anything but a true run of consecutive items.
   */
  appendToSeqList(key: string, seq: number, item: string, maxLength: number, ttlSeconds: number): Promise<void>
  /** Deletes seq lists, with everything a backend keeps for them. */
  deleteSeqLists(...keys: string[]): Promise<void>
  /** Stores `items`, numbered up to `lastSeq`, unless the list already ends at lastSeq or later. */
  replaceSeqList(key: string, lastSeq: number, items: readonly string[], ttlSeconds: number): Promise<void>
  /**
   * The items numbered after+1 to min(after + limit, lastSeq), in one read, from a list that ends
   * at lastSeq; undefined unless the list ends exactly there and holds them all.
   */
  readSeqList(key: string, lastSeq: number, after: number, limit: number): Promise<SeqItems | undefined>
  /**
   * getRanked and a seq list in one round trip (a session record and its history): the list comes
   * back as a snapshot, whose windows are checked against the lastSeq the caller reads in the value.
   */
  getRankedWithSeqList(rankedKey: string, listKey: string): Promise<{ value: string | undefined; list: SeqListSnapshot | undefined }>
  state(): CacheState
  /** A round trip with a deadline, for the probes: resolves with the latency in ms, rejects on failure. */
  ping(timeoutMs: number): Promise<number>
  close(): Promise<void>
}

/** What readSeqList returns: the items asked for, joined by commas. */
export interface SeqItems {
  /**
   * As UTF-8 bytes, so that JSON items become the inside of a JSON array without being parsed or
   * re-encoded on the way from the cache to the socket.
   */
  joined: Buffer
  count: number
}

/** A seq list as read at one moment. */
export interface SeqListSnapshot {
  /** As readSeqList: the items after+1 to min(after + limit, lastSeq) if the list ends at lastSeq and holds them. */
  window(lastSeq: number, after: number, limit: number): SeqItems | undefined
}

/** How a ranked value is stored: "<rank0>.<rank1>|<value>", so Redis can compare it in a script. */
export function encodeRanked (value: string, rank: readonly [number, number]): string {
  return `${rank[0]}.${rank[1]}|${value}`
}

export function decodeRanked (stored: string | undefined): { rank: [number, number]; value: string } | undefined {
  if (stored === undefined) return undefined
  const match = /^(\d+)\.(\d+)\|/.exec(stored)
  if (!match) return undefined
  return { rank: [Number(match[1]), Number(match[2])], value: stored.slice(match[0].length) }
}

export function isNewer (a: readonly [number, number], b: readonly [number, number]): boolean {
  return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1])
}
