import { Redis } from 'ioredis'
import type { FastifyBaseLogger as Logger } from 'fastify'
import { decodeRanked, encodeRanked, type Cache, type CacheState, type SeqItems } from './cache.js'

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

// Seq lists: each item is stored as "<seq>|<item>", so a script can tell where a list ends and
// check that an append continues it. The two scripts keep every list a run of consecutive seqs, so
// that a read is a plain LRANGE (a script that copies the items costs Redis several times more).
const APPEND_SEQ_SCRIPT = `
local seq = tonumber(ARGV[1])
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local lastSeq = tonumber(string.match(last, '^(%d+)|'))
  if lastSeq and lastSeq >= seq then return 0 end
  if lastSeq ~= seq - 1 then
    redis.call('DEL', KEYS[1])
    return 0
  end
elseif seq ~= 1 then
  return 0
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1`

const REPLACE_SEQ_SCRIPT = `
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local lastSeq = tonumber(string.match(last, '^(%d+)|'))
  if lastSeq and lastSeq >= tonumber(ARGV[1]) then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1`

const SEPARATOR = 0x7c // '|'
const COMMA = Buffer.from(',')
const EMPTY = Buffer.alloc(0)

/** The seq of a stored seq-list item ("<seq>|<item>"); NaN if it has none. */
function seqOf(item: Buffer): number {
  const end = item.indexOf(SEPARATOR)
  return end > 0 ? Number(item.toString('latin1', 0, end)) : Number.NaN
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
 * Redis behind the Cache interface. No request ever waits on Redis for long: commands fail at once
 * while disconnected (no offline queue) and time out after commandTimeoutMs when Redis hangs; the
 * client reconnects by itself in the background, forever, with a capped backoff.
 */
export class RedisCache implements Cache {
  readonly backend = 'redis' as const
  readonly client: Redis
  private readonly log: Logger
  private lastError: string | undefined
  /**
   * Keys whose set or delete could not reach Redis: after an outage their cached values may be
   * stale, so they are deleted first thing on reconnection. Past the bound, the whole prefix goes.
   */
  private readonly unsynced = new Set<string>()
  private unsyncedOverflow = false
  private static readonly MAX_UNSYNCED = 10_000
  private readonly keyPrefix: string
  private pausedUntil = 0
  private static readonly PAUSE_AFTER_TIMEOUT_MS = 5000

  constructor(options: RedisCacheOptions) {
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
      connectionName: 'smalltalk-server'
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
      void this.resync()
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
    return this.usable() ? 'ok' : 'degraded'
  }

  /**
   * Connected, and not in the pause after a timed-out command: a Redis that hangs on a live
   * connection would otherwise cost every cache call the full command timeout. The probes' ping
   * keeps trying and ends the pause as soon as Redis answers again.
   */
  private usable(): boolean {
    return this.client.status === 'ready' && Date.now() >= this.pausedUntil
  }

  async get(key: string): Promise<string | undefined> {
    if (!this.usable()) return undefined
    try {
      return (await this.client.get(key)) ?? undefined
    } catch (err) {
      this.noteFailure('get', err)
      return undefined
    }
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    if (!this.usable()) return this.markUnsynced([key])
    try {
      await this.client.set(key, value, 'EX', ttlSeconds)
    } catch (err) {
      this.noteFailure('set', err)
      this.markUnsynced([key])
    }
  }

  async setRanked(key: string, value: string, ttlSeconds: number, rank: readonly [number, number]): Promise<void> {
    if (!this.usable()) return this.markUnsynced([key])
    try {
      await (this.client as ScriptedClient).setRanked(key, encodeRanked(value, rank), rank[0], rank[1], ttlSeconds)
    } catch (err) {
      this.noteFailure('setRanked', err)
      this.markUnsynced([key])
    }
  }

  async getRanked(key: string): Promise<string | undefined> {
    return decodeRanked(await this.get(key))?.value
  }

  async delete(...keys: string[]): Promise<void> {
    if (keys.length === 0) return
    if (!this.usable()) return this.markUnsynced(keys)
    try {
      await this.client.del(...keys)
    } catch (err) {
      this.noteFailure('delete', err)
      this.markUnsynced(keys)
    }
  }

  async appendToSeqList(key: string, seq: number, item: string, maxLength: number, ttlSeconds: number): Promise<void> {
    if (!this.usable()) return this.markUnsynced([key])
    try {
      await (this.client as ScriptedClient).appendSeq(key, seq, `${seq}|${item}`, maxLength, ttlSeconds)
    } catch (err) {
      this.noteFailure('appendToSeqList', err)
      this.markUnsynced([key])
    }
  }

  async replaceSeqList(key: string, lastSeq: number, items: readonly string[], ttlSeconds: number): Promise<void> {
    if (items.length === 0) return
    if (!this.usable()) return this.markUnsynced([key])
    const firstSeq = lastSeq - items.length + 1
    try {
      await (this.client as ScriptedClient).replaceSeq(key, lastSeq, ttlSeconds, ...items.map((item, i) => `${firstSeq + i}|${item}`))
    } catch (err) {
      this.noteFailure('replaceSeqList', err)
      this.markUnsynced([key])
    }
  }

  async readSeqList(key: string, lastSeq: number, after: number, limit: number): Promise<SeqItems | undefined> {
    const count = Math.min(limit, lastSeq - after)
    if (count <= 0) return { joined: EMPTY, count: 0 }
    if (!this.usable()) return undefined
    let items: Buffer[]
    try {
      // Counted from the end: the list is meant to end at lastSeq.
      items = await this.client.lrangeBuffer(key, after - lastSeq, after - lastSeq + count - 1)
    } catch (err) {
      this.noteFailure('readSeqList', err)
      return undefined
    }
    // The list is a run of consecutive seqs: if it holds `count` items from after+1, it ends at
    // lastSeq and these are the ones asked for.
    if (items.length !== count || seqOf(items[0] as Buffer) !== after + 1) return undefined
    const parts: Buffer[] = []
    for (const item of items) {
      if (parts.length > 0) parts.push(COMMA)
      parts.push(item.subarray(item.indexOf(SEPARATOR) + 1))
    }
    return { joined: Buffer.concat(parts), count }
  }

  private markUnsynced(keys: string[]): void {
    for (const key of keys) {
      if (this.unsynced.size >= RedisCache.MAX_UNSYNCED) {
        this.unsyncedOverflow = true
        return
      }
      this.unsynced.add(key)
    }
  }

  /** Drops what may have gone stale while Redis was out of reach. */
  private async resync(): Promise<void> {
    const keys = [...this.unsynced]
    const overflow = this.unsyncedOverflow
    this.unsynced.clear()
    this.unsyncedOverflow = false
    try {
      for (let i = 0; i < keys.length; i += 500) await this.client.del(...keys.slice(i, i + 500))
      if (overflow) {
        // Too many to track: forget everything under our prefix (SCAN sees raw key names).
        let cursor = '0'
        do {
          const [next, found] = await this.client.scan(cursor, 'MATCH', `${this.keyPrefix}*`, 'COUNT', 1000)
          cursor = next
          const unprefixed = found.map((key) => key.slice(this.keyPrefix.length))
          if (unprefixed.length > 0) await this.client.del(...unprefixed)
        } while (cursor !== '0')
      }
      if (keys.length > 0 || overflow) this.log.info({ keys: keys.length, overflow }, 'dropped cache entries written while Redis was unreachable')
    } catch (err) {
      this.noteFailure('resync', err)
      this.markUnsynced(keys)
      this.unsyncedOverflow ||= overflow
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
    this.pausedUntil = 0
    return performance.now() - started
  }

  async close(): Promise<void> {
    this.client.disconnect()
  }

  private noteFailure(operation: string, err: unknown): void {
    if (/timed out/i.test((err as Error).message ?? '')) {
      if (Date.now() >= this.pausedUntil) this.log.warn({ operation }, 'Redis command timed out: bypassing the cache for a few seconds')
      this.pausedUntil = Date.now() + RedisCache.PAUSE_AFTER_TIMEOUT_MS
    }
    this.log.debug({ operation, err: { message: (err as Error).message } }, 'Redis command failed; treated as a cache miss')
  }
}
