import { decodeRanked, encodeRanked, isNewer, type Cache, type CacheState } from './cache.js'

interface Entry {
  value: string
  expiresAt: number
}

/**
 * The in-process stand-in for Redis on a developer's machine: per-key TTLs and a bound on the number
 * of entries (the least recently used go first), so it cannot grow without limit.
 */
export class MemoryCache implements Cache {
  readonly backend = 'memory' as const
  private readonly entries = new Map<string, Entry>()

  constructor(
    private readonly maxEntries: number,
    private readonly now: () => number = Date.now
  ) {}

  async get(key: string): Promise<string | undefined> {
    const entry = this.entries.get(key)
    if (!entry) return undefined
    if (entry.expiresAt <= this.now()) {
      this.entries.delete(key)
      return undefined
    }
    // Map keeps insertion order: re-inserting marks the key as most recently used.
    this.entries.delete(key)
    this.entries.set(key, entry)
    return entry.value
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.entries.delete(key)
    this.entries.set(key, { value, expiresAt: this.now() + ttlSeconds * 1000 })
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string
      this.entries.delete(oldest)
    }
  }

  async setRanked(key: string, value: string, ttlSeconds: number, rank: readonly [number, number]): Promise<void> {
    const current = decodeRanked(await this.get(key))
    if (current && isNewer(current.rank, rank)) return
    await this.set(key, encodeRanked(value, rank), ttlSeconds)
  }

  async getRanked(key: string): Promise<string | undefined> {
    return decodeRanked(await this.get(key))?.value
  }

  async delete(...keys: string[]): Promise<void> {
    for (const key of keys) this.entries.delete(key)
  }

  get size(): number {
    return this.entries.size
  }

  state(): CacheState {
    return 'ok'
  }

  async ping(): Promise<number> {
    return 0
  }

  async close(): Promise<void> {
    this.entries.clear()
  }
}
