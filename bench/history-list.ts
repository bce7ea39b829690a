// Issue 10 item 5: a session's recent history in Redis (src/cache/redis-cache.ts: a plain LIST per
// session), each figure the median of BENCH_RUNS rounds with its spread:
//   1. the cache alone, through the service's own class and ioredis client: (a) a history page read
//      (the session record and the list in one round trip, then a 50-message window) from a
//      200-message list of ~300-byte messages, (b) appends to 200-message lists (trimmed each time);
//   2. end to end, on the production build: GET /v1/sessions/:id/messages?limit=50 (100-message
//      sessions) with HISTORY_PAGE_CACHE_MB=0, so that every read goes to Redis, then a chat-like mix
//      (post a message, read the newest page), with the page cache off and on; GET / as the baseline.
// The byte-offset lists this LIST replaced were measured against it, A/B, by this file at commit
// 911d34a (bench/results/history-list.json); this run writes bench/results/history-list-now.json.
// Usage: npm run bench:history-list (DATABASE_URL and REDIS_URL default to the local servers).
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import pino from 'pino'
import { RedisCache } from '../src/cache/redis-cache.js'
import { PROJECT_ROOT } from '../src/paths.js'
import { createSessions, startBenchServer, type BenchServer } from './conversation-load.js'
import { prepareDatabase } from './database.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DURATION = Number(process.env.BENCH_DURATION ?? 5)
const RUNS = Number(process.env.BENCH_RUNS ?? 4)
const CONNECTIONS = 50
const POOL = 10

interface Figure {
  perSecond: number[]
  p99Ms: number[]
}
const figure = (): Figure => ({ perSecond: [], p99Ms: [] })
const push = (f: Figure, result: { perSecond: number; p99: number }) => {
  f.perSecond.push(result.perSecond)
  f.p99Ms.push(result.p99)
}
const spread = (values: number[]) => (Math.max(...values) - Math.min(...values)) / median(values)
const fmt = (n: number, digits = 0) => n.toFixed(digits)
const at = (sorted: number[], p: number) => sorted[Math.floor(sorted.length * p)] ?? 0

/** `workers` loops of `op` for `seconds`: operations per second and p99 latency. */
async function loop (workers: number, seconds: number, op: (worker: number) => Promise<void>): Promise<{ perSecond: number; p99: number }> {
  const latencies: number[] = []
  const until = performance.now() + seconds * 1000
  const started = performance.now()
  await Promise.all(Array.from({ length: workers }, async (_, worker) => {
    while (performance.now() < until) {
      const begun = performance.now()
      await op(worker)
      latencies.push(performance.now() - begun)
    }
  }))
  latencies.sort((a, b) => a - b)
  return { perSecond: latencies.length / ((performance.now() - started) / 1000), p99: at(latencies, 0.99) }
}

// ---- 1. The cache alone --------------------------------------------------------------------------

const MICRO_LISTS = 50
const LIST_LENGTH = 200
const PAGE = 50

/** A message as the API shows it, about 300 bytes of JSON. */
function messageJson (seq: number): string {
  const message = { id: randomUUID(), seq, role: seq % 2 ? 'user' : 'assistant', content: '', metadata: {}, createdAt: new Date().toISOString() }
  message.content = 'm'.repeat(300 - JSON.stringify(message).length)
  return JSON.stringify(message)
}

async function micro () {
  const results = { read: figure(), append: figure() }
  const cache = new RedisCache({ url: REDIS_URL, keyPrefix: `bench:history-list:${randomBytes(4).toString('hex')}:`, connectTimeoutMs: 2000, commandTimeoutMs: 2000, log: pino({ level: 'warn' }) })
  const appendSeqs = Array<number>(MICRO_LISTS).fill(LIST_LENGTH)
  try {
    await cache.connect()
    const items = Array.from({ length: LIST_LENGTH }, (_, i) => messageJson(i + 1))
    for (let list = 0; list < MICRO_LISTS; list++) {
      await cache.setRanked(`session:${list}`, JSON.stringify({ id: list, lastSeq: LIST_LENGTH }), 600, [1, LIST_LENGTH])
      await cache.replaceSeqList(`read:${list}`, LIST_LENGTH, items, 600)
      await cache.replaceSeqList(`append:${list}`, LIST_LENGTH, items, 600)
    }
    for (let run = 0; run < RUNS; run++) {
      let next = 0
      push(results.read, await loop(CONNECTIONS, DURATION, async () => {
        const list = next++ % MICRO_LISTS
        const { value, list: snapshot } = await cache.getRankedWithSeqList(`session:${list}`, `read:${list}`)
        const page = snapshot?.window(LIST_LENGTH, LIST_LENGTH - PAGE, PAGE)
        if (value === undefined || page?.count !== PAGE) throw new Error('a page read missed: the benchmark would measure nothing')
      }))
      // One appender per list, as one session's messages are appended in order.
      push(results.append, await loop(MICRO_LISTS, DURATION, async (worker) => {
        const seq = ++appendSeqs[worker]!
        await cache.appendToSeqList(`append:${worker}`, seq, messageJson(seq), LIST_LENGTH, 600)
      }))
      for (let list = 0; list < MICRO_LISTS; list++) {
        const last = appendSeqs[list]!
        if ((await cache.readSeqList(`append:${list}`, last, last - LIST_LENGTH, LIST_LENGTH))?.count !== LIST_LENGTH) {
          throw new Error(`append list ${list} does not hold its newest ${LIST_LENGTH} messages`)
        }
      }
    }
  } finally {
    const prefix = cache.client.options.keyPrefix as string
    let cursor = '0'
    do {
      const [nextCursor, keys] = await cache.client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      cursor = nextCursor
      if (keys.length > 0) await cache.client.del(...keys.map((key) => key.slice(prefix.length)))
    } while (cursor !== '0')
    await cache.close()
  }
  return results
}

// ---- 2. End to end -------------------------------------------------------------------------------

const E2E_SESSIONS = 20
/** Posts per session before the reads: 100 messages (each post stores a reply), the cached list's size. */
const POSTS = 50
const CHAT_WORKERS = 20
const CONTENT = 'How do I make this query faster? It scans the whole table, and the table has grown to a few million rows since we added the audit log; the index on created_at is not used.'

async function post (url: string, session: string): Promise<number> {
  const response = await fetch(`${url}/v1/sessions/${session}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: CONTENT }) })
  if (response.status !== 201) throw new Error(`POST messages answered ${response.status}: ${await response.text()}`)
  return ((await response.json()) as { reply: { seq: number } }).reply.seq
}

async function historyLookups (server: BenchServer): Promise<{ hit: number; miss: number }> {
  const text = await (await fetch(`${server.opsUrl}/metrics`)).text()
  const count = (result: string) => Number(new RegExp(`smalltalk_cache_lookups_total\\{cache="history",result="${result}"\\} (\\d+)`).exec(text)?.[1] ?? 0)
  return { hit: count('hit'), miss: count('miss') }
}

async function reads (server: BenchServer, sessions: string[]): Promise<{ perSecond: number; p99: number; non2xx: number; hitRatio: number }> {
  const before = await historyLookups(server)
  let next = 0
  const result = await autocannon({
    url: server.url,
    connections: CONNECTIONS,
    duration: DURATION,
    requests: [{ method: 'GET', setupRequest: (request) => ({ ...request, path: `/v1/sessions/${sessions[next++ % sessions.length]}/messages?limit=50` }) }]
  })
  const after = await historyLookups(server)
  const [hit, miss] = [after.hit - before.hit, after.miss - before.miss]
  return { perSecond: result['2xx'] / result.duration, p99: result.latency.p99, non2xx: result.non2xx, hitRatio: hit + miss > 0 ? hit / (hit + miss) : 0 }
}

async function root (url: string): Promise<{ perSecond: number; p99: number }> {
  const result = await autocannon({ url: `${url}/`, connections: CONNECTIONS, duration: DURATION })
  return { perSecond: result['2xx'] / result.duration, p99: result.latency.p99 }
}

/** Each worker posts a message to its session, then reads the newest 50 messages: pairs per second. */
async function chat (url: string, chats: Array<{ session: string; lastSeq: number }>): Promise<{ perSecond: number; p99: number }> {
  return loop(CHAT_WORKERS, DURATION, async (worker) => {
    const chatSession = chats[worker]!
    chatSession.lastSeq = await post(url, chatSession.session)
    const response = await fetch(`${url}/v1/sessions/${chatSession.session}/messages?after=${Math.max(0, chatSession.lastSeq - PAGE)}&limit=${PAGE}`)
    if (response.status !== 200) throw new Error(`GET messages answered ${response.status}`)
    await response.arrayBuffer()
  })
}

async function endToEnd (databaseUrl: string, pageCacheMb: number) {
  const phase = { pageCacheMb, reads: { ...figure(), non2xx: [] as number[], historyHitRatio: [] as number[] }, chat: figure(), root: figure() }
  const server = await startBenchServer({ databaseUrl, redisUrl: REDIS_URL, poolSize: POOL, env: { HISTORY_PAGE_CACHE_MB: String(pageCacheMb) } })
  const direct = new Redis(REDIS_URL)
  try {
    const sessions = await createSessions(server.url, E2E_SESSIONS)
    await Promise.all(sessions.map(async (session) => {
      for (let i = 0; i < POSTS; i++) await post(server.url, session)
    }))
    const type = await direct.type(`bench:${new URL(server.url).port}:history:${sessions[0]}`)
    if (type !== 'list') throw new Error(`the history key is a ${type}, not a list: is the key name still history:<id>?`)
    const chats = (await createSessions(server.url, CHAT_WORKERS)).map((session) => ({ session, lastSeq: 0 }))
    for (let run = 0; run < RUNS; run++) {
      const result = await reads(server, sessions)
      push(phase.reads, result)
      phase.reads.non2xx.push(result.non2xx)
      phase.reads.historyHitRatio.push(result.hitRatio)
      push(phase.root, await root(server.url))
      push(phase.chat, await chat(server.url, chats))
    }
  } finally {
    server.child.kill('SIGTERM')
    await sleep(500)
    direct.disconnect()
  }
  return phase
}

// ---- Report --------------------------------------------------------------------------------------

const line = (label: string, f: Figure, unit: string) =>
  `  ${label.padEnd(30)} ${fmt(median(f.perSecond)).padStart(7)} ${unit}  p99 ${fmt(median(f.p99Ms), 1)} ms  spread ${fmt(spread(f.perSecond) * 100)}%`

const database = await prepareDatabase(DATABASE_URL)
try {
  const cacheAlone = await micro()
  const pageCacheOff = await endToEnd(database.url, 0)
  const pageCacheOn = await endToEnd(database.url, 32)
  const report = {
    date: new Date().toISOString(),
    command: 'npm run bench:history-list',
    database: database.description,
    settings: { durationSeconds: DURATION, runs: RUNS, connections: CONNECTIONS, poolSize: POOL, listLength: LIST_LENGTH, page: PAGE, e2eSessions: E2E_SESSIONS, e2eMessagesPerSession: POSTS * 2, chatWorkers: CHAT_WORKERS },
    cacheAlone,
    pageCacheOff,
    pageCacheOn,
    ratios: {
      readToRootPageCacheOff: median(pageCacheOff.reads.perSecond) / median(pageCacheOff.root.perSecond),
      readToRootPageCacheOn: median(pageCacheOn.reads.perSecond) / median(pageCacheOn.root.perSecond)
    }
  }
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'history-list-now.json'), JSON.stringify(report, null, 2) + '\n')
  console.log(`
History lists (a Redis LIST per session), ${DURATION} s x ${RUNS} rounds, median; spread = (max - min) / median
 cache alone (${LIST_LENGTH}-message lists of ~300-byte messages, ${CONNECTIONS} in flight)
${line('page read (50)', cacheAlone.read, 'op/s')}
${line('append + trim', cacheAlone.append, 'op/s')}
 end to end, HISTORY_PAGE_CACHE_MB=0 (${E2E_SESSIONS} sessions of ${POSTS * 2} messages)
${line('GET messages?limit=50', pageCacheOff.reads, 'req/s')}  (/ GET /: ${fmt(report.ratios.readToRootPageCacheOff, 2)})
${line('GET /', pageCacheOff.root, 'req/s')}
${line('chat (post + newest page)', pageCacheOff.chat, 'pairs/s')}
 end to end, HISTORY_PAGE_CACHE_MB=32
${line('GET messages?limit=50', pageCacheOn.reads, 'req/s')}  (/ GET /: ${fmt(report.ratios.readToRootPageCacheOn, 2)})
${line('GET /', pageCacheOn.root, 'req/s')}
${line('chat (post + newest page)', pageCacheOn.chat, 'pairs/s')}
 history reads served by the Redis list (page cache off): ${pageCacheOff.reads.historyHitRatio.map((r) => fmt(r * 100)).join('/')}%
`)
} finally {
  await database.dispose()
}
