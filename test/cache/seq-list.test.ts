import { randomBytes } from 'node:crypto'
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import pino from 'pino'
import type { Cache } from '../../src/cache/cache.js'
import { MemoryCache } from '../../src/cache/memory-cache.js'
import { RedisCache } from '../../src/cache/redis-cache.js'
import { TcpProxy } from '../support/tcp-proxy.js'
import { REDIS_URL, eventually, redisUnavailable } from '../helper.js'

// Seq lists (a session's newest messages) on both backends, which must behave the same: the same
// cases run against MemoryCache and against the real Redis.

const silent = pino({ level: 'silent' })

async function redisCache (t: Test, url = REDIS_URL as string, commandTimeoutMs = 1000): Promise<RedisCache> {
  const cache = new RedisCache({ url, keyPrefix: `test:${randomBytes(4).toString('hex')}:`, connectTimeoutMs: 1000, commandTimeoutMs, log: silent })
  await cache.connect()
  t.teardown(() => cache.close())
  return cache
}

const item = (seq: number) => JSON.stringify({ seq, content: `message ${seq}` })

/** What a read must return: the items of these seqs, joined by commas. */
const joined = (...seqs: number[]) => seqs.map(item).join(',')
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

async function read (cache: Cache, key: string, lastSeq: number, after: number, limit: number): Promise<string | undefined> {
  const items = await cache.readSeqList(key, lastSeq, after, limit)
  if (items === undefined) return undefined
  const text = items.joined.toString()
  t.equal(items.count, text === '' ? 0 : JSON.parse(`[${text}]`).length, 'count matches the items')
  return text
}

async function appendAll (cache: Cache, key: string, seqs: number[], maxLength = 100): Promise<void> {
  for (const seq of seqs) await cache.appendToSeqList(key, seq, item(seq), maxLength, 60)
}

const backends: Array<[string, (t: Test) => Promise<Cache>, { skip: string | false }]> = [
  ['memory', async () => new MemoryCache(1000), { skip: false }],
  ['redis', (t) => redisCache(t), { skip: redisUnavailable() }]
]

for (const [name, make, options] of backends) {
  t.test(`${name}: a list starts at seq 1, grows by consecutive seqs and reads any window in order`, options, async (t) => {
    const cache = await make(t)
    t.equal(await read(cache, 'l', 3, 0, 10), undefined, 'no list: undefined (a miss)')
    await appendAll(cache, 'l', range(1, 6))
    t.equal(await read(cache, 'l', 6, 0, 50), joined(...range(1, 6)), 'everything, in seq order')
    t.equal(await read(cache, 'l', 6, 0, 2), joined(1, 2), 'the first page')
    t.equal(await read(cache, 'l', 6, 2, 2), joined(3, 4), 'after=2')
    t.equal(await read(cache, 'l', 6, 4, 50), joined(5, 6), 'a short last page')
    t.equal(await read(cache, 'l', 6, 6, 50), '', 'nothing after the newest: empty, not a miss')
    t.equal(await read(cache, 'l', 5, 0, 10), undefined, 'the list is ahead of the caller\'s lastSeq: a miss')
    t.equal(await read(cache, 'l', 7, 0, 10), undefined, 'the list is behind the caller\'s lastSeq: a miss')
  })

  t.test(`${name}: the newest maxLength items are kept, no more; older windows miss`, options, async (t) => {
    const cache = await make(t)
    for (let last = 1; last <= 30; last++) {
      await appendAll(cache, 'l', [last], 8)
      const held = Math.min(last, 8)
      t.equal(await read(cache, 'l', last, last - held, 20), joined(...range(last - held + 1, last)), `after ${last}: the newest ${held}`)
      if (last > 8) t.equal(await read(cache, 'l', last, last - 9, 20), undefined, `after ${last}: no more than 8 kept`)
    }
    t.equal(await read(cache, 'l', 30, 26, 2), joined(27, 28))
    t.equal(await read(cache, 'l', 30, 0, 2), undefined, 'the first page is not held')
  })

  t.test(`${name}: appends that do not continue the list never leave a gap`, options, async (t) => {
    const cache = await make(t)
    await appendAll(cache, 'fresh', [2])
    t.equal(await read(cache, 'fresh', 2, 0, 10), undefined, 'no list is started at seq 2 (its seq 1 is unknown)')

    await appendAll(cache, 'l', range(1, 3))
    await appendAll(cache, 'l', [2])
    t.equal(await read(cache, 'l', 3, 0, 10), joined(1, 2, 3), 'an item the list already holds changes nothing')
    await appendAll(cache, 'l', [5])
    t.equal(await read(cache, 'l', 3, 0, 10), undefined, 'a gap (4 missing): the list is dropped')
    t.equal(await read(cache, 'l', 5, 0, 10), undefined)
    await appendAll(cache, 'l', [4, 6])
    t.equal(await read(cache, 'l', 6, 0, 10), undefined, 'and not rebuilt by later appends')
  })

  t.test(`${name}: replaceSeqList stores a tail unless the list is already as new`, options, async (t) => {
    const cache = await make(t)
    await cache.replaceSeqList('l', 12, range(8, 12).map(item), 60)
    t.equal(await read(cache, 'l', 12, 7, 10), joined(...range(8, 12)), 'a tail numbered up to lastSeq')
    t.equal(await read(cache, 'l', 12, 6, 10), undefined, 'nothing older than the tail')
    await appendAll(cache, 'l', [13])
    t.equal(await read(cache, 'l', 13, 10, 10), joined(11, 12, 13), 'appends continue a replaced list')

    await cache.replaceSeqList('l', 12, range(1, 12).map(item), 60)
    t.equal(await read(cache, 'l', 13, 10, 10), joined(11, 12, 13), 'an older tail never replaces a newer list')
    await cache.replaceSeqList('l', 20, range(15, 20).map(item), 60)
    t.equal(await read(cache, 'l', 20, 14, 10), joined(...range(15, 20)), 'a newer tail replaces it whole')
    t.equal(await read(cache, 'l', 13, 10, 10), undefined)
    await cache.replaceSeqList('empty', 0, [], 60)
    t.equal(await read(cache, 'empty', 1, 0, 10), undefined, 'an empty tail stores nothing')
  })

  t.test(`${name}: items come back byte for byte, whatever they contain`, options, async (t) => {
    const cache = await make(t)
    const contents = ['héllo wörld ✓', '😀 family: 👨‍👩‍👧‍👦', 'e\u0301 (combining)', 'pipes | and, commas,', '"quotes" \\ backslash \n newline', "'; DROP TABLE chat_messages; --", '\u0000 nul and \u2028 separator', 'ｆｕｌｌ　ｗｉｄｔｈ 中文 العربية']
    const items = contents.map((content, i) => JSON.stringify({ seq: i + 1, content }))
    for (const [i, value] of items.entries()) await cache.appendToSeqList('u', i + 1, value, 100, 60)
    const all = await cache.readSeqList('u', items.length, 0, 100)
    t.ok(Buffer.from(items.join(','), 'utf8').equals(all?.joined as Buffer), 'the same UTF-8 bytes')
    t.same((JSON.parse(`[${all?.joined.toString()}]`) as Array<{ content: string }>).map((m) => m.content), contents)
    t.equal((await cache.readSeqList('u', items.length, 3, 2))?.joined.toString(), items.slice(3, 5).join(','), 'a window in the middle')
  })

  t.test(`${name}: deleteSeqLists (or deleting the key) drops a list`, options, async (t) => {
    const cache = await make(t)
    await appendAll(cache, 'l', range(1, 3))
    await appendAll(cache, 'm', range(1, 3))
    await cache.deleteSeqLists('l', 'missing')
    await cache.delete('m')
    for (const key of ['l', 'm']) {
      t.equal(await read(cache, key, 3, 0, 10), undefined, `${key} is gone`)
      await appendAll(cache, key, [4])
      t.equal(await read(cache, key, 4, 0, 10), undefined, `${key} is not revived by a later append`)
      await appendAll(cache, key, [1])
      t.equal(await read(cache, key, 1, 0, 10), joined(1), `${key} starts again at seq 1`)
    }
  })
}

t.test('memory: a list expires with its TTL and counts as one entry of the bound', async (t) => {
  let now = 1_000_000
  const cache = new MemoryCache(2, () => now)
  await cache.appendToSeqList('l', 1, item(1), 10, 60)
  now += 59_000
  await cache.appendToSeqList('l', 2, item(2), 10, 60)
  now += 59_000
  t.equal((await cache.readSeqList('l', 2, 0, 10))?.joined.toString(), joined(1, 2), 'each append renews the TTL')
  now += 60_001
  t.equal(await cache.readSeqList('l', 2, 0, 10), undefined, 'expired')
  await cache.appendToSeqList('a', 1, item(1), 10, 60)
  await cache.set('b', 'x', 60)
  await cache.set('c', 'y', 60)
  t.equal(cache.size, 2)
  t.equal(await cache.readSeqList('a', 1, 0, 10), undefined, 'the least recently used list went first')
  t.equal(await cache.get('a'), undefined, 'a list is not a string value')
})

/** Every key under the cache's prefix (whatever a list is made of), with its TTL in seconds. */
async function keysUnder (direct: Redis, cache: RedisCache): Promise<Map<string, number>> {
  const found = new Map<string, number>()
  let cursor = '0'
  do {
    const [next, keys] = await direct.scan(cursor, 'MATCH', `${cache.client.options.keyPrefix}*`, 'COUNT', 100)
    cursor = next
    for (const key of keys) found.set(key, await direct.ttl(key))
  } while (cursor !== '0')
  return found
}

t.test('redis: a list lives under the key prefix with the TTL given, renewed by each append', { skip: redisUnavailable() }, async (t) => {
  const cache = await redisCache(t)
  const direct = new Redis(REDIS_URL as string)
  t.teardown(() => direct.quit())
  await appendAll(cache, 'l', [1, 2], 10)
  const stored = await keysUnder(direct, cache)
  t.ok(stored.size > 0, 'stored under the prefix')
  for (const [key, ttl] of stored) {
    t.ok(ttl > 0 && ttl <= 60, `${key}: TTL set (${ttl} s)`)
    await direct.expire(key, 5)
  }
  await appendAll(cache, 'l', [3], 10)
  for (const [key, ttl] of await keysUnder(direct, cache)) t.ok(ttl > 5, `${key}: renewed by the append (${ttl} s)`)
  t.equal(await read(cache, 'l', 3, 0, 10), joined(1, 2, 3))
})

t.test('redis: deleteSeqLists leaves nothing of the list behind', { skip: redisUnavailable() }, async (t) => {
  const cache = await redisCache(t)
  const direct = new Redis(REDIS_URL as string)
  t.teardown(() => direct.quit())
  await appendAll(cache, 'l', range(1, 3))
  t.ok((await keysUnder(direct, cache)).size > 0)
  await cache.deleteSeqLists('l')
  t.same([...(await keysUnder(direct, cache)).keys()], [], 'no key left to wait for its TTL')
  t.equal(await read(cache, 'l', 3, 0, 10), undefined)
})

t.test('redis: a key that holds no seq list is a miss, and an append drops it', { skip: redisUnavailable() }, async (t) => {
  const cache = await redisCache(t)
  const direct = new Redis(REDIS_URL as string)
  t.teardown(() => direct.quit())
  const prefix = cache.client.options.keyPrefix as string
  // Another type under the key (a string, say): the append script fails on it.
  await direct.set(`${prefix}l`, 'not a list', 'EX', 60)
  t.equal(await read(cache, 'l', 3, 0, 10), undefined, 'a string: a miss')
  await appendAll(cache, 'l', [4])
  const repaired = async () => {
    // Any command that succeeds sets off the repair of the dirty keys.
    await cache.get('other')
    return (await direct.exists(`${prefix}l`)) === 0
  }
  t.ok(await eventually(repaired, 5000), 'the failed append leaves the key dirty, and the repair deletes it')
  await appendAll(cache, 'l', [1])
  t.equal(await read(cache, 'l', 1, 0, 10), joined(1), 'a list starts there again at seq 1')

  // A LIST whose head is not a seq.
  await direct.rpush(`${prefix}m`, 'junk', item(1))
  t.equal(await read(cache, 'm', 1, 0, 10), undefined, 'a bad head: a miss')
  await appendAll(cache, 'm', [2])
  t.equal(await direct.exists(`${prefix}m`), 0, 'and the next append drops it')
})

t.test('redis: concurrent appends in any order leave a true run or no list, never a wrong one', { skip: redisUnavailable() }, async (t) => {
  const cache = await redisCache(t)
  for (let round = 0; round < 20; round++) {
    const key = `race:${round}`
    await appendAll(cache, key, range(1, 5))
    // Two writers racing on the same session, as replicas may after their commits.
    const seqs = range(6, 25).sort(() => Math.random() - 0.5)
    await Promise.all(seqs.map((seq) => cache.appendToSeqList(key, seq, item(seq), 100, 60)))
    for (let last = 5; last <= 25; last++) {
      const whole = await read(cache, key, last, 0, 100)
      if (whole !== undefined) t.equal(whole, joined(...range(1, last)), `round ${round}: a list ending at ${last} holds 1..${last}`)
    }
  }
  // In order, one after the other (as one session's replies are), every append lands.
  await appendAll(cache, 'ordered', range(1, 25))
  t.equal(await read(cache, 'ordered', 25, 0, 100), joined(...range(1, 25)))
})

t.test('redis: unreachable, a list is a miss; one written to meanwhile is dropped on reconnection', { skip: redisUnavailable() }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const cache = await redisCache(t, proxy.rewrite(REDIS_URL as string), 300)
  await appendAll(cache, 'kept', range(1, 2))
  await appendAll(cache, 'missed', range(1, 2))
  t.equal(await read(cache, 'missed', 2, 0, 10), joined(1, 2))

  await proxy.cut()
  t.ok(await eventually(() => cache.state() === 'degraded', 5000), 'the cache notices the loss')
  const started = Date.now()
  t.equal(await read(cache, 'kept', 2, 0, 10), undefined, 'a read while unreachable is a miss')
  await appendAll(cache, 'missed', [3])
  await cache.replaceSeqList('replaced', 3, range(1, 3).map(item), 60)
  t.ok(Date.now() - started < 1000, 'and nothing waits')

  await proxy.restore()
  t.ok(await eventually(() => cache.state() === 'ok', 10_000), 'reconnected')
  t.ok(await eventually(async () => (await cache.readSeqList('missed', 2, 0, 10)) === undefined, 5000), 'the list that missed an append is gone')
  t.equal(await read(cache, 'missed', 3, 0, 10), undefined, 'and is not served as if it held seq 3')
  t.equal(await read(cache, 'kept', 2, 0, 10), joined(1, 2), 'an untouched list is still there')
})

t.test('redis: a hung Redis costs a read at most its command timeout', { skip: redisUnavailable() }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const cache = await redisCache(t, proxy.rewrite(REDIS_URL as string), 300)
  await appendAll(cache, 'l', range(1, 2))
  await proxy.blackhole()
  const started = Date.now()
  t.equal(await read(cache, 'l', 2, 0, 10), undefined, 'a timed-out read is a miss')
  t.ok(Date.now() - started < 1500, `${Date.now() - started} ms`)
  await appendAll(cache, 'l', [3])
  t.ok(Date.now() - started < 1500, 'an append does not wait either (the cache is bypassed after a timeout)')
})
