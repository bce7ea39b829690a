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

// Seq lists: one Redis LIST per key. Its first element is the seq of its last item, the items follow,
// oldest first; the append script checks the seq, pushes, trims to the newest maxLength and renews
// the TTL in one step. A read is one LRANGE, so the seq and the items are of the same moment.
// (Byte-offset lists, two strings sliced without per-item work, read a page twice as fast in Redis
// alone, but end to end within about 15%, and no faster with the page cache on: README "Performance".)
const APPEND_SEQ_SCRIPT = `
local seq = tonumber(ARGV[1])
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local lastSeq = tonumber(head)
  if lastSeq and lastSeq >= seq then return 0 end
  if lastSeq ~= seq - 1 then
    redis.call('DEL', KEYS[1])
    return 0
  end
elseif seq ~= 1 then
  return 0
else
  redis.call('RPUSH', KEYS[1], 0)
end
redis.call('RPUSH', KEYS[1], ARGV[2])
local max = tonumber(ARGV[3])
if redis.call('LLEN', KEYS[1]) > max + 1 then
  redis.call('LPOP', KEYS[1])
  redis.call('LTRIM', KEYS[1], -max, -1)
  redis.call('LPUSH', KEYS[1], seq)
else
  redis.call('LSET', KEYS[1], 0, seq)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1`

// Stores a whole list (ARGV[3..]: the items) unless the one there ends as late.
const REPLACE_SEQ_SCRIPT = `
local head = redis.call('LINDEX', KEYS[1], 0)
if head and (tonumber(head) or 0) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1`

const COMMA = Buffer.from(',')
const NOTHING: SeqItems = { joined: Buffer.alloc(0), count: 0 }

/** A seq list as LRANGE returned it (its last seq, then its items); undefined if it is not one. */
function snapshot (list: Buffer[]): SeqListSnapshot | undefined {
  const head = list[0]
  if (!head) return undefined
  const listLastSeq = Number(head.toString('latin1'))
  const held = list.length - 1
  if (!Number.isSafeInteger(listLastSeq) || held === 0) return undefined
  return {
    window (lastSeq, after, limit) {
      const count = Math.min(limit, lastSeq - after)
      if (count <= 0) return NOTHING
      if (listLastSeq !== lastSeq) return undefined
      // Item k (1-based) of the held ones is seq lastSeq - held + k, at list[k].
      const first = after + 1 - (lastSeq - held + 1)
      if (first < 0) return undefined
      const parts: Buffer[] = []
      for (let i = first + 1; i <= first + count; i++) {
        if (parts.length > 0) parts.push(COMMA)
        parts.push(list[i] as Buffer)
      }
      return { joined: Buffer.concat(parts), count }
    }
  }
}

type ScriptedClient = Redis & {
  setRanked(key: string, value: string, a: number, b: number, ttl: number): Promise<number>
  appendSeq(key: string, seq: number, item: string, maxLength: number, ttl: number): Promise<number>
  replaceSeq(key: string, lastSeq: number, ttl: number, ...items: string[]): Promise<number>
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
    this.client.defineCommand('appendSeq', { numberOfKeys: 1, lua: APPEND_SEQ_SCRIPT })
    this.client.defineCommand('replaceSeq', { numberOfKeys: 1, lua: REPLACE_SEQ_SCRIPT })
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
    await this.delete(...keys)
  }

  async appendToSeqList (key: string, seq: number, item: string, maxLength: number, ttlSeconds: number): Promise<void> {
    await this.write('appendToSeqList', [key], null, () => (this.client as ScriptedClient).appendSeq(key, seq, item, maxLength, ttlSeconds))
  }

  async replaceSeqList (key: string, lastSeq: number, items: readonly string[], ttlSeconds: number): Promise<void> {
    if (items.length === 0) return
    await this.write('replaceSeqList', [key], null, () => (this.client as ScriptedClient).replaceSeq(key, lastSeq, ttlSeconds, ...items))
  }

  async readSeqList (key: string, lastSeq: number, after: number, limit: number): Promise<SeqItems | undefined> {
    if (lastSeq - after <= 0) return NOTHING
    if (!this.usable() || !this.readable(key)) return undefined
    try {
      const list = await this.client.lrangeBuffer(key, 0, -1)
      this.succeeded()
      return snapshot(list)?.window(lastSeq, after, limit)
    } catch (err) {
      this.noteFailure('readSeqList', err)
      return undefined
    }
  }

  async getRankedWithSeqList (rankedKey: string, listKey: string): Promise<{ value: string | undefined; list: SeqListSnapshot | undefined }> {
    const [rankedReadable, listReadable] = [this.readable(rankedKey), this.readable(listKey)]
    if (!this.usable() || (!rankedReadable && !listReadable)) return { value: undefined, list: undefined }
    try {
      // Sent together (auto-pipelining): one round trip.
      const [ranked, list] = await Promise.all([this.client.get(rankedKey), this.client.lrangeBuffer(listKey, 0, -1)])
      this.succeeded()
      return {
        value: rankedReadable ? decodeRanked(ranked ?? undefined)?.value : undefined,
        list: listReadable ? snapshot(list) : undefined
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
