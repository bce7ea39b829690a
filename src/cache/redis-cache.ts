import { Redis } from 'ioredis'
import type { FastifyBaseLogger as Logger } from 'fastify'
import { decodeRanked, encodeRanked, isNewer, type Cache, type CacheState, type SeqItems, type SeqListSnapshot } from './cache.js'

// Compare-and-set of a ranked value ("<a>.<b>|<value>"): keeps the cached one when its rank is newer.
const SET_RANKED_SCRIPT = `
local current = redis.call('GET', KEYS[1])
if current then
  local a, b = string.match(current, '^(%d+)%.(%d+)|')
  if a then
    local na, nb = tonumber(ARGV[2]), tonumber(ARGV[3])
    a, b = tonumber(a), tonumber(b)
    if a > na or (a == na and b > nb) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
return 1`

// Seq lists: two string keys. `<key>` is the index: 12-hex-digit fields, the list's last seq, the
// offset `base` of the first byte of the items key, then one offset per item boundary (n + 1 for
// n items). Offsets only grow (trimming raises `base`), so an append rewrites no offset. `<key>:items`
// holds the items, each followed by a comma. A read is one MGET of both keys, and a page is a slice
// of the items' bytes: no script and no per-item work on the read path (a script that copies the
// items, or an LRANGE of one reply per item, costs several times more, in Redis and in ioredis).
const FIELD = 12
const APPEND_SEQ_SCRIPT = `
local seq = tonumber(ARGV[1])
local item = ARGV[2] .. ','
local index = redis.call('GET', KEYS[1])
if index then
  local lastSeq = tonumber(string.sub(index, 1, 12), 16)
  if lastSeq >= seq then return 0 end
  local base = tonumber(string.sub(index, 13, 24), 16)
  local top = tonumber(string.sub(index, -12), 16)
  if lastSeq ~= seq - 1 or redis.call('STRLEN', KEYS[2]) ~= top - base then
    redis.call('DEL', KEYS[1], KEYS[2])
    return 0
  end
  redis.call('APPEND', KEYS[2], item)
  index = string.format('%012x', seq) .. string.sub(index, 13) .. string.format('%012x', top + #item)
  local count = (#index - 24) / 12 - 1
  local max = tonumber(ARGV[3])
  -- Trimmed by batches (past a quarter more than asked), so that most appends copy nothing.
  if count > max + math.ceil(max / 4) then
    local cut = tonumber(string.sub(index, 25 + (count - max) * 12, 36 + (count - max) * 12), 16)
    redis.call('SET', KEYS[2], redis.call('GETRANGE', KEYS[2], cut - base, -1))
    index = string.sub(index, 1, 12) .. string.format('%012x', cut) .. string.sub(index, 25 + (count - max) * 12)
  end
elseif seq == 1 then
  redis.call('SET', KEYS[2], item)
  index = string.format('%012x%012x%012x%012x', 1, 0, 0, #item)
else
  return 0
end
redis.call('SET', KEYS[1], index, 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1`

// Stores a whole list (index and items built by the caller) unless the one there ends as late.
const REPLACE_SEQ_SCRIPT = `
local index = redis.call('GET', KEYS[1])
if index and tonumber(string.sub(index, 1, 12), 16) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
return 1`

const EMPTY = Buffer.alloc(0)
const itemsKey = (key: string) => `${key}:items`
const hex = (value: number) => value.toString(16).padStart(FIELD, '0')

/** Field `i` of an index (0: last seq, 1: base, 2 + k: offset k). */
function field (index: Buffer, i: number): number {
  return Number.parseInt(index.toString('latin1', i * FIELD, (i + 1) * FIELD), 16)
}

const NOTHING: SeqItems = { joined: EMPTY, count: 0 }

/** A seq list's index and items as MGET returned them; undefined if they do not make a list. */
function snapshot (index: Buffer | null | undefined, items: Buffer | null | undefined): SeqListSnapshot | undefined {
  if (!index || !items || index.length < 3 * FIELD || index.length % FIELD !== 0) return undefined
  const fields = index.length / FIELD
  const base = field(index, 1)
  // The items key lost or changed behind the index's back (evicted, say): not a list any more.
  if (items.length !== field(index, fields - 1) - base) return undefined
  const listLastSeq = field(index, 0)
  return {
    window (lastSeq, after, limit) {
      const count = Math.min(limit, lastSeq - after)
      if (count <= 0) return NOTHING
      if (listLastSeq !== lastSeq) return undefined
      // Item k (1-based) of the n is seq lastSeq - n + k, between offsets k - 1 and k.
      const first = after + 1 - (lastSeq - (fields - 3) + 1)
      if (first < 0) return undefined
      return { joined: items.subarray(field(index, 2 + first) - base, field(index, 2 + first + count) - base - 1), count }
    }
  }
}

type ScriptedClient = Redis & {
  setRanked(key: string, value: string, a: number, b: number, ttl: number): Promise<number>
  appendSeq(index: string, items: string, seq: number, item: string, maxLength: number, ttl: number): Promise<number>
  replaceSeq(index: string, items: string, lastSeq: number, ttl: number, indexValue: string, itemsValue: string): Promise<number>
}

export interface RedisCacheOptions {
  url: string
  keyPrefix: string
  connectTimeoutMs: number
  commandTimeoutMs: number
  log: Logger
}

/**
 * What makes a key right again after a write to it failed: delete it, or put the newest ranked value
 * back (a compare-and-set, so that an older record written late cannot replace it).
 */
type Repair = { value: string; rank: readonly [number, number]; expiresAt: number } | null

/**
 * Redis behind the Cache interface. No request ever waits on Redis for long: commands fail at once
 * while disconnected (no offline queue) and time out after commandTimeoutMs when Redis hangs; the
 * client reconnects by itself in the background, forever, with a capped backoff.
 *
 * A write that failed, timed out or was skipped may have left the old value in Redis, where every
 * replica reads it. Its key is dirty: this replica reads it from PostgreSQL, never from Redis, until
 * the key is repaired (deleted, or its newest ranked value written again), which is tried as soon as
 * any command succeeds again (on the same connection or after a reconnection). While the cache is
 * bypassed after a timeout, writes still go out, without anyone waiting for their answer: a Redis
 * that stalls applies them, in order, before what other replicas ask it afterwards.
 */
export class RedisCache implements Cache {
  readonly backend = 'redis' as const
  readonly client: Redis
  private readonly log: Logger
  private lastError: string | undefined
  /**
   * Dirty keys, each with its repair and the number of the failure that marked it last (a repair
   * clears a key only if no write to it failed since). Past the bound, every key is dirty: the whole
   * prefix goes.
   */
  private readonly dirty = new Map<string, { repair: Repair; failure: number }>()
  private failures = 0
  private dirtyOverflow = false
  /** Raised at each overflow, so that a flush clears only the overflow it started for. */
  private overflowEpoch = 0
  private repairing = false
  /** After a failed repair, the next waits a little: a Redis that refuses writes is not asked at every read. */
  private repairAfter = 0
  private static readonly REPAIR_RETRY_MS = 1000
  private static readonly MAX_DIRTY = 10_000
  private readonly keyPrefix: string
  private pausedUntil = 0
  private static readonly PAUSE_AFTER_TIMEOUT_MS = 5000

  constructor (options: RedisCacheOptions) {
    this.log = options.log.child({ component: 'redis' })
    this.keyPrefix = options.keyPrefix
    this.client = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      lazyConnect: true,
      connectTimeout: options.connectTimeoutMs,
      commandTimeout: options.commandTimeoutMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: (attempt) => Math.min(100 * 2 ** Math.min(attempt, 5), 2000),
      connectionName: 'smalltalk-server',
      // Commands issued in the same event-loop turn (a reply's record and history writes, many
      // requests' lookups under load) go out in one socket write: a write costs more than a command.
      enableAutoPipelining: true
    })
    this.client.defineCommand('setRanked', { numberOfKeys: 1, lua: SET_RANKED_SCRIPT })
    this.client.defineCommand('appendSeq', { numberOfKeys: 2, lua: APPEND_SEQ_SCRIPT })
    this.client.defineCommand('replaceSeq', { numberOfKeys: 2, lua: REPLACE_SEQ_SCRIPT })
    this.client.on('error', (err: Error) => {
      // ioredis emits an error per failed reconnection attempt: log the first of a series only.
      if (this.lastError !== err.message) this.log.warn({ err: { message: err.message } }, 'Redis error')
      this.lastError = err.message
    })
    this.client.on('ready', () => {
      if (this.lastError !== undefined) this.log.info('Redis connection restored')
      this.lastError = undefined
      this.repairAfter = 0
      void this.repair()
    })
  }

  /** Connects, but never fails start-up: an unreachable Redis leaves the cache degraded. */
  async connect (): Promise<void> {
    try {
      await this.client.connect()
    } catch (err) {
      this.log.warn({ err: { message: (err as Error).message } }, 'Redis unreachable at start-up: running degraded, reconnecting in the background')
    }
  }

  state (): CacheState {
    return this.usable() ? 'ok' : 'degraded'
  }

  /**
   * Connected, and not in the pause after a timed-out command: a Redis that hangs on a live
   * connection would otherwise cost every cache call the full command timeout. The probes' ping
   * keeps trying and ends the pause as soon as Redis answers again.
   */
  private usable (): boolean {
    return this.client.status === 'ready' && Date.now() >= this.pausedUntil
  }

  /** A key this replica may read from Redis: its last write got through, or it was repaired since. */
  private readable (key: string): boolean {
    return !this.dirtyOverflow && !this.dirty.has(key)
  }

  async get (key: string): Promise<string | undefined> {
    if (!this.usable() || !this.readable(key)) return undefined
    try {
      const value = await this.client.get(key)
      this.succeeded()
      return value ?? undefined
    } catch (err) {
      this.noteFailure('get', err)
      return undefined
    }
  }

  async set (key: string, value: string, ttlSeconds: number): Promise<void> {
    await this.write('set', [key], null, () => this.client.set(key, value, 'EX', ttlSeconds))
  }

  async setRanked (key: string, value: string, ttlSeconds: number, rank: readonly [number, number]): Promise<void> {
    const repair = { value, rank, expiresAt: Date.now() + ttlSeconds * 1000 }
    await this.write('setRanked', [key], repair, () => (this.client as ScriptedClient).setRanked(key, encodeRanked(value, rank), rank[0], rank[1], ttlSeconds))
  }

  async getRanked (key: string): Promise<string | undefined> {
    return decodeRanked(await this.get(key))?.value
  }

  async delete (...keys: string[]): Promise<void> {
    if (keys.length === 0) return
    await this.write('delete', keys, null, () => this.client.del(...keys))
  }

  async deleteSeqLists (...keys: string[]): Promise<void> {
    await this.delete(...keys.flatMap((key) => [key, itemsKey(key)]))
  }

  async appendToSeqList (key: string, seq: number, item: string, maxLength: number, ttlSeconds: number): Promise<void> {
    await this.write('appendToSeqList', [key, itemsKey(key)], null, () => (this.client as ScriptedClient).appendSeq(key, itemsKey(key), seq, item, maxLength, ttlSeconds))
  }

  async replaceSeqList (key: string, lastSeq: number, items: readonly string[], ttlSeconds: number): Promise<void> {
    if (items.length === 0) return
    let offset = 0
    let index = hex(lastSeq) + hex(0) + hex(0)
    for (const item of items) {
      offset += Buffer.byteLength(item) + 1
      index += hex(offset)
    }
    await this.write('replaceSeqList', [key, itemsKey(key)], null, () => (this.client as ScriptedClient).replaceSeq(key, itemsKey(key), lastSeq, ttlSeconds, index, `${items.join(',')},`))
  }

  async readSeqList (key: string, lastSeq: number, after: number, limit: number): Promise<SeqItems | undefined> {
    if (lastSeq - after <= 0) return NOTHING
    if (!this.usable() || !this.readable(key)) return undefined
    try {
      // One command, so the index and the items are of the same moment.
      const [index, items] = await this.client.mgetBuffer(key, itemsKey(key))
      this.succeeded()
      return snapshot(index, items)?.window(lastSeq, after, limit)
    } catch (err) {
      this.noteFailure('readSeqList', err)
      return undefined
    }
  }

  async getRankedWithSeqList (rankedKey: string, listKey: string): Promise<{ value: string | undefined; list: SeqListSnapshot | undefined }> {
    const [rankedReadable, listReadable] = [this.readable(rankedKey), this.readable(listKey)]
    if (!this.usable() || (!rankedReadable && !listReadable)) return { value: undefined, list: undefined }
    try {
      const [ranked, index, items] = await this.client.mgetBuffer(rankedKey, listKey, itemsKey(listKey))
      this.succeeded()
      return {
        value: ranked && rankedReadable ? decodeRanked(ranked.toString())?.value : undefined,
        list: listReadable ? snapshot(index, items) : undefined
      }
    } catch (err) {
      this.noteFailure('getRankedWithSeqList', err)
      return { value: undefined, list: undefined }
    }
  }

  /**
   * Sends a write, or marks its keys dirty when it cannot be sent or fails. Waits for the answer
   * unless the cache is bypassed after a timeout.
   */
  private async write (operation: string, keys: string[], repair: Repair, command: () => Promise<unknown>): Promise<void> {
    if (this.client.status !== 'ready') return this.markDirty(keys, repair)
    const answered = command().then(
      () => this.succeeded(),
      (err: unknown) => {
        this.noteFailure(operation, err)
        this.markDirty(keys, repair)
      }
    )
    if (this.usable()) await answered
  }

  private markDirty (keys: string[], repair: Repair): void {
    const failure = ++this.failures
    for (const key of keys) {
      if (this.dirty.size >= RedisCache.MAX_DIRTY && !this.dirty.has(key)) {
        this.dirty.clear()
        this.dirtyOverflow = true
        this.overflowEpoch++
        return
      }
      const current = this.dirty.get(key)?.repair
      // A delete wins over any value, and a value over an older one.
      const kept = current === null || (current !== undefined && repair !== null && !isNewer(repair.rank, current.rank))
      this.dirty.set(key, { repair: kept ? current : repair, failure })
    }
  }

  private succeeded (): void {
    if (this.dirty.size > 0 || this.dirtyOverflow) void this.repair()
  }

  /** Repairs the dirty keys (one pipeline), after an overflow the whole prefix; failures stay dirty. */
  private async repair (): Promise<void> {
    if (this.repairing || this.client.status !== 'ready' || Date.now() < this.repairAfter) return
    this.repairing = true
    try {
      const entries = [...this.dirty]
      const now = Date.now()
      await Promise.all(entries.map(([key, { repair }]) =>
        repair && repair.expiresAt > now + 1000
          ? (this.client as ScriptedClient).setRanked(key, encodeRanked(repair.value, repair.rank), repair.rank[0], repair.rank[1], Math.floor((repair.expiresAt - now) / 1000))
          : this.client.del(key)
      ))
      // A key whose write failed again meanwhile stays dirty.
      for (const [key, { failure }] of entries) if (this.dirty.get(key)?.failure === failure) this.dirty.delete(key)
      const epoch = this.overflowEpoch
      const flush = this.dirtyOverflow
      if (flush) {
        // Too many to track: forget everything under our prefix (SCAN sees raw key names).
        let cursor = '0'
        do {
          const [next, found] = await this.client.scan(cursor, 'MATCH', `${this.keyPrefix}*`, 'COUNT', 1000)
          cursor = next
          const unprefixed = found.map((key) => key.slice(this.keyPrefix.length))
          if (unprefixed.length > 0) await this.client.del(...unprefixed)
        } while (cursor !== '0')
        if (epoch === this.overflowEpoch) this.dirtyOverflow = false
      }
      if (entries.length > 0 || flush) this.log.info({ keys: entries.length, flushed: flush }, 'repaired cache entries whose writes had not got through')
    } catch (err) {
      this.noteFailure('repair', err)
      this.repairAfter = Date.now() + RedisCache.REPAIR_RETRY_MS
    } finally {
      this.repairing = false
    }
  }

  async ping (timeoutMs: number): Promise<number> {
    const started = performance.now()
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([
        this.client.ping(),
        new Promise((_resolve, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
        })
      ])
    } finally {
      clearTimeout(timer)
    }
    this.pausedUntil = 0
    this.succeeded()
    return performance.now() - started
  }

  async close (): Promise<void> {
    this.client.disconnect()
  }

  private noteFailure (operation: string, err: unknown): void {
    if (/timed out/i.test((err as Error).message ?? '')) {
      if (Date.now() >= this.pausedUntil) this.log.warn({ operation }, 'Redis command timed out: bypassing the cache for a few seconds')
      this.pausedUntil = Date.now() + RedisCache.PAUSE_AFTER_TIMEOUT_MS
    }
    this.log.debug({ operation, err: { message: (err as Error).message } }, 'Redis command failed; treated as a cache miss')
  }
}
