import { decodeRanked, encodeRanked, isNewer, type Cache, type CacheState, type SeqItems, type SeqListSnapshot } from './cache.js'

/** A seq list in memory: items[i] is numbered lastSeq - items.length + 1 + i. */
interface SeqList {
  items: string[]
  lastSeq: number
}

interface Entry {
  value: string | SeqList
  expiresAt: number
}

const NOTHING: SeqItems = { joined: Buffer.alloc(0), count: 0 }

/**
 * The in-process stand-in for Redis on a developer's machine: per-key TTLs and a bound on the number
 * of entries (the least recently used go first), so it cannot grow without limit. Seq lists follow
 * the same rules as RedisCache's scripts.
 */
export class MemoryCache implements Cache {
  readonly backend = 'memory' as const
  private readonly entries = new Map<string, Entry>()

  constructor (
    private readonly maxEntries: number,
    private readonly now: () => number = Date.now
  ) {}

  async get (key: string): Promise<string | undefined> {
    const value = this.read(key)
    return typeof value === 'string' ? value : undefined
  }

  async set (key: string, value: string, ttlSeconds: number): Promise<void> {
    this.write(key, value, ttlSeconds)
  }

  async setRanked (key: string, value: string, ttlSeconds: number, rank: readonly [number, number]): Promise<void> {
    const current = decodeRanked(await this.get(key))
    if (current && isNewer(current.rank, rank)) return
    this.write(key, encodeRanked(value, rank), ttlSeconds)
  }

  async getRanked (key: string): Promise<string | undefined> {
    return decodeRanked(await this.get(key))?.value
  }

  async delete (...keys: string[]): Promise<void> {
    for (const key of keys) this.entries.delete(key)
  }

  async deleteSeqLists (...keys: string[]): Promise<void> {
    await this.delete(...keys)
  }

  async appendToSeqList (key: string, seq: number, item: string, maxLength: number, ttlSeconds: number): Promise<void> {
    const list = this.readList(key)
    if (list) {
      if (list.lastSeq >= seq) return
      if (list.lastSeq !== seq - 1) {
        this.entries.delete(key)
        return
      }
    } else if (seq !== 1) {
      return
    }
    const items = list ? [...list.items, item] : [item]
    this.write(key, { items: items.length > maxLength ? items.slice(-maxLength) : items, lastSeq: seq }, ttlSeconds)
  }

  async replaceSeqList (key: string, lastSeq: number, items: readonly string[], ttlSeconds: number): Promise<void> {
    if (items.length === 0) return
    const list = this.readList(key)
    if (list && list.lastSeq >= lastSeq) return
    this.write(key, { items: [...items], lastSeq }, ttlSeconds)
  }

  async readSeqList (key: string, lastSeq: number, after: number, limit: number): Promise<SeqItems | undefined> {
    if (lastSeq - after <= 0) return NOTHING
    return this.snapshot(key)?.window(lastSeq, after, limit)
  }

  async getRankedWithSeqList (rankedKey: string, listKey: string): Promise<{ value: string | undefined; list: SeqListSnapshot | undefined }> {
    return { value: await this.getRanked(rankedKey), list: this.snapshot(listKey) }
  }

  private snapshot (key: string): SeqListSnapshot | undefined {
    const list = this.readList(key)
    if (!list) return undefined
    const { items, lastSeq: listLastSeq } = list
    return {
      window (lastSeq, after, limit) {
        const count = Math.min(limit, lastSeq - after)
        if (count <= 0) return NOTHING
        if (listLastSeq !== lastSeq) return undefined
        const start = after + 1 - (lastSeq - items.length + 1)
        if (start < 0) return undefined
        return { joined: Buffer.from(items.slice(start, start + count).join(',')), count }
      }
    }
  }

  get size (): number {
    return this.entries.size
  }

  state (): CacheState {
    return 'ok'
  }

  async ping (): Promise<number> {
    return 0
  }

  async close (): Promise<void> {
    this.entries.clear()
  }

  private readList (key: string): SeqList | undefined {
    const value = this.read(key)
    return typeof value === 'object' ? value : undefined
  }

  private read (key: string): Entry['value'] | undefined {
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

  private write (key: string, value: Entry['value'], ttlSeconds: number): void {
    this.entries.delete(key)
    this.entries.set(key, { value, expiresAt: this.now() + ttlSeconds * 1000 })
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string
      this.entries.delete(oldest)
    }
  }
}
