// The conversation benchmarks of issue 4, against the production build (dist/) on a real PostgreSQL
// and Redis, each figure beside a baseline measured in the same run:
//   1. POST /v1/sessions/:id/messages (JSON, echo provider), 50 connections over 100 sessions,
//      versus a raw `pg` script committing the same rows with the same pool size (bench/raw-pg.ts:
//      plain statements, and, for the record, the service's own two statements with their
//      after-commit NOTIFY);
//   2. GET .../messages?limit=50 with the cache warm, versus GET / on the same server;
//   3. SSE replies of 100 deltas: replies per second and time to first delta.
// Usage: npm run bench:conversations (DATABASE_URL and REDIS_URL default to the local servers).
import { writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { PROJECT_ROOT } from '../src/paths.js'
import { createSessions, postMessages, postSseReply, rawReplyLoad, startBenchServer, type BenchServer, type LoadResult } from './conversation-load.js'
import { prepareDatabase } from './database.js'
import { commitReplyRowsAsService } from './raw-pg.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DURATION = Number(process.env.BENCH_DURATION ?? 8)
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const CONNECTIONS = 50
const SESSIONS = 100
const POOL = 10
const load = { connections: CONNECTIONS, durationSeconds: DURATION }

async function getLoad (url: string) {
  const result = await autocannon({ url, connections: CONNECTIONS, duration: DURATION })
  return { perSecond: result['2xx'] / result.duration, p99: result.latency.p99, non2xx: result.non2xx }
}

/** SSE replies of 100 deltas, `parallel` at a time: replies per second and time to first delta. */
async function sseReplies (url: string, sessions: string[], parallel: number) {
  const words = Array.from({ length: 98 }, (_, i) => `word${i}`).join(' ')
  const firstDelta: number[] = []
  let replies = 0
  let deltas = 0
  const until = Date.now() + DURATION * 1000
  let next = 0
  const worker = async () => {
    while (Date.now() < until) {
      const reply = await postSseReply(url, sessions[next++ % sessions.length] as string, words)
      if (reply.deltas > 0) firstDelta.push(reply.firstDeltaMs)
      if (reply.done) {
        replies += 1
        deltas += reply.deltas
      }
    }
  }
  const started = Date.now()
  await Promise.all(Array.from({ length: parallel }, worker))
  firstDelta.sort((a, b) => a - b)
  return {
    repliesPerSecond: replies / ((Date.now() - started) / 1000),
    deltasPerReply: replies ? deltas / replies : 0,
    firstDeltaP50Ms: firstDelta[Math.floor(firstDelta.length * 0.5)] ?? 0,
    firstDeltaP99Ms: firstDelta[Math.floor(firstDelta.length * 0.99)] ?? 0
  }
}

const spread = (values: number[]) => (Math.max(...values) - Math.min(...values)) / median(values)
const fmt = (n: number, digits = 0) => n.toFixed(digits)

const database = await prepareDatabase(DATABASE_URL)
let server: BenchServer | undefined
try {
  server = await startBenchServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: POOL })
  const sessions = await createSessions(server.url, SESSIONS)
  const baselineSessions = await createSessions(server.url, SESSIONS)
  const posts: LoadResult[] = []
  const raws: LoadResult[] = []
  const serviceSql: LoadResult[] = []
  const raw = { ...load, poolSize: POOL }
  for (let run = 0; run < RUNS; run++) {
    // Alternate the order so that a noisy neighbour does not always hit the same side.
    if (run % 2 === 0) {
      posts.push(await postMessages(server.url, sessions, load))
      raws.push(await rawReplyLoad(database.url, baselineSessions, raw))
      serviceSql.push(await rawReplyLoad(database.url, baselineSessions, { ...raw, commit: commitReplyRowsAsService }))
    } else {
      serviceSql.push(await rawReplyLoad(database.url, baselineSessions, { ...raw, commit: commitReplyRowsAsService }))
      raws.push(await rawReplyLoad(database.url, baselineSessions, raw))
      posts.push(await postMessages(server.url, sessions, load))
    }
  }
  // History reads: warm the cache of one session with 60 messages, then read its first 50.
  const [reader] = await createSessions(server.url, 1)
  for (let i = 0; i < 30; i++) {
    await fetch(`${server.url}/v1/sessions/${reader}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: `message ${i}` }) })
  }
  const history: Awaited<ReturnType<typeof getLoad>>[] = []
  const roots: Awaited<ReturnType<typeof getLoad>>[] = []
  for (let run = 0; run < RUNS; run++) {
    history.push(await getLoad(`${server.url}/v1/sessions/${reader}/messages?limit=50`))
    roots.push(await getLoad(`${server.url}/`))
  }
  const sse = await sseReplies(server.url, await createSessions(server.url, 20), 10)

  const postRate = median(posts.map((p) => p.perSecond))
  const rawRate = median(raws.map((r) => r.perSecond))
  const serviceSqlRate = median(serviceSql.map((r) => r.perSecond))
  const historyRate = median(history.map((h) => h.perSecond))
  const rootRate = median(roots.map((r) => r.perSecond))
  const report = {
    date: new Date().toISOString(),
    command: 'npm run bench:conversations',
    database: database.description,
    settings: { durationSeconds: DURATION, runs: RUNS, connections: CONNECTIONS, sessions: SESSIONS, poolSize: POOL },
    messages: {
      servicePerSecond: posts.map((p) => p.perSecond),
      serviceP99Ms: median(posts.map((p) => p.p99)),
      serviceNon2xx: posts.map((p) => p.non2xx),
      rawPgPerSecond: raws.map((r) => r.perSecond),
      rawPgP99Ms: median(raws.map((r) => r.p99)),
      ratio: postRate / rawRate,
      target: 0.5,
      rawServiceSqlPerSecond: serviceSql.map((r) => r.perSecond),
      ratioToRawServiceSql: postRate / serviceSqlRate
    },
    history: { perSecond: history.map((h) => h.perSecond), p99Ms: median(history.map((h) => h.p99)), rootPerSecond: roots.map((r) => r.perSecond), ratio: historyRate / rootRate, target: 0.5 },
    sse: { parallel: 10, ...sse }
  }
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'conversations.json'), JSON.stringify(report, null, 2) + '\n')
  console.log(`
Conversation benchmarks (${DURATION} s x ${RUNS} runs, median; spread = (max - min) / median)
  POST messages (JSON, echo)  ${fmt(postRate)} msg/s  p99 ${fmt(report.messages.serviceP99Ms)} ms  spread ${fmt(spread(posts.map((p) => p.perSecond)) * 100)}%  non-2xx ${report.messages.serviceNon2xx.join('/')}
  raw pg, same rows           ${fmt(rawRate)} tx-pairs/s  p99 ${fmt(report.messages.rawPgP99Ms)} ms  spread ${fmt(spread(raws.map((r) => r.perSecond)) * 100)}%
  ratio                       ${fmt(report.messages.ratio, 2)} (target >= 0.5)
  raw pg, the service's SQL   ${fmt(serviceSqlRate)} pairs/s  spread ${fmt(spread(serviceSql.map((r) => r.perSecond)) * 100)}%  (service / this: ${fmt(report.messages.ratioToRawServiceSql, 2)})
  GET messages?limit=50       ${fmt(historyRate)} req/s  p99 ${fmt(report.history.p99Ms)} ms  spread ${fmt(spread(history.map((h) => h.perSecond)) * 100)}%  non-2xx ${history.map((h) => h.non2xx).join('/')}
  GET /                       ${fmt(rootRate)} req/s  spread ${fmt(spread(roots.map((r) => r.perSecond)) * 100)}%
  ratio                       ${fmt(report.history.ratio, 2)} (target >= 0.5)
  SSE, 100 deltas, 10 at once ${fmt(sse.repliesPerSecond, 1)} replies/s, ${fmt(sse.deltasPerReply)} deltas/reply, first delta p50 ${fmt(sse.firstDeltaP50Ms, 1)} ms p99 ${fmt(sse.firstDeltaP99Ms, 1)} ms
`)
} finally {
  server?.child.kill('SIGTERM')
  await sleep(500)
  await database.dispose()
}
