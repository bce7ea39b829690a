// The provider benchmarks of issue 5, against the production build (dist/) on a real PostgreSQL and
// Redis, with the agents on the OpenAI SDK talking to a zero-latency stub of the OpenAI wire format
// on loopback (test/support/llm-stub.ts). Each figure sits beside a baseline from the same run:
//   1. The service's own overhead per JSON reply, one connection (no queueing): POST .../messages
//      latency minus the latency of the same chat completion called directly with the same SDK (as
//      the service calls it for a JSON reply: the whole answer in one response, `stream: false`, and
//      the very messages the service sent: system prompt and the session's context);
//      beside it, the latency of a plain `pg` script committing the same rows (the floor that the
//      two durable commits set on this disk), and the floor of the critical path: a round trip to
//      bare Fastify (GET / of the `bare` variant of bench/run.ts, in its own process) plus the one
//      commit a JSON reply waits for (its step 3: step 1 commits while the model is asked).
//   2. 50 connections over 100 sessions: replies per second against the raw `pg` baseline of the
//      conversation benchmarks (bench/raw-pg.ts), interleaved runs.
//   3. Streaming 100 tokens over SSE: time to first delta through the service minus the SDK's own
//      time to first token against the stub, and deltas per second.
// Usage: npm run bench:providers (DATABASE_URL and REDIS_URL default to the local servers).
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type OpenAI from 'openai'
import pg from 'pg'
import { PROJECT_ROOT } from '../src/paths.js'
import { LlmStub } from '../test/support/llm-stub.js'
import { createSessions, postMessages, postSseReply, rawReplyLoad, type BenchServer, type LoadResult } from './conversation-load.js'
import { MODEL, QUESTION, directWholeCall, lastServiceMessages, startStubServer, type ChatMessages } from './openai-stub.js'
import { prepareDatabase } from './database.js'
import { commitReplyRows, commitReplyRowsAsService, storeReplyAsService, takeLeaseAsService } from './raw-pg.js'
import { startServer, stopServer, type RunningServer } from './throughput.js'
import { VARIANTS } from './variants.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const DURATION = Number(process.env.BENCH_DURATION ?? 8)
const POOL = 10
const REPLIES = Number(process.env.BENCH_REPLIES ?? 400)
const STREAMS = Number(process.env.BENCH_STREAMS ?? 400)
const WARMUP = 50
const TOKENS_100 = Array.from({ length: 100 }, (_, i) => (i === 0 ? 'token0' : ` token${i}`))

const MANIFEST = `agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: ${MODEL}
    systemPrompt: You are a helpful assistant.
    temperature: 0.7
    maxTokens: 256
`

const percentile = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
const sortedCopy = (values: number[]) => [...values].sort((a, b) => a - b)

/** The same, streamed, as for an SSE reply: total time and time to the first token. */
async function directCall (client: OpenAI, messages: ChatMessages): Promise<{ totalMs: number; firstTokenMs: number }> {
  const started = performance.now()
  let firstTokenMs = 0
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages,
    temperature: 0.7,
    max_completion_tokens: 256,
    stream: true,
    stream_options: { include_usage: true }
  })
  for await (const chunk of stream) {
    if (firstTokenMs === 0 && chunk.choices[0]?.delta?.content) firstTokenMs = performance.now() - started
  }
  return { totalMs: performance.now() - started, firstTokenMs }
}

/** One connection, one request at a time: the latency of each JSON reply. */
async function serviceReplies (url: string, sessions: string[], count: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const response = await fetch(`${url}/v1/sessions/${sessions[i % sessions.length]}/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ content: QUESTION })
    })
    await response.arrayBuffer()
    if (response.status !== 201) throw new Error(`POST messages answered ${response.status}`)
    latencies.push(performance.now() - started)
  }
  return latencies
}

/** One SSE reply of 100 deltas: time to the first delta event and to the end. */
async function serviceStream (url: string, session: string): Promise<{ firstDeltaMs: number; totalMs: number; deltas: number }> {
  const reply = await postSseReply(url, session, QUESTION)
  if (!reply.done) throw new Error(`SSE reply did not finish: ${reply.tail}`)
  return reply
}

/** The same rows committed by a plain script on one connection, one reply at a time. */
async function rawCommits (pgClient: pg.Client, sessions: string[], count: number, commit = commitReplyRows): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    await commit(pgClient, sessions[i % sessions.length]!)
    latencies.push(performance.now() - started)
  }
  return latencies
}

/** Round trips to bare Fastify, one at a time, with the same client as serviceReplies. */
async function bareRoundTrips (url: string, count: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const response = await fetch(url)
    await response.arrayBuffer()
    latencies.push(performance.now() - started)
  }
  return latencies
}

/**
 * A reply's two commits, in series as the service makes them (the lease and the user message, then
 * the reply): both are on the critical path, since the model is asked only under the lease.
 */
async function replyCommits (pgClient: pg.Client, sessions: string[], count: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const session = sessions[i % sessions.length]!
    const started = performance.now()
    const token = await takeLeaseAsService(pgClient, session)
    await storeReplyAsService(pgClient, session, token)
    latencies.push(performance.now() - started)
  }
  return latencies
}

const fmt = (n: number, digits = 1) => n.toFixed(digits)

const database = await prepareDatabase(DATABASE_URL)
const stub = await LlmStub.start()
let server: BenchServer | undefined
let bare: RunningServer | undefined
try {
  const dir = mkdtempSync(join(tmpdir(), 'smalltalk-bench-'))
  bare = await startServer(VARIANTS.find((variant) => variant.name === 'bare')!, {}, dir)
  const bareUrl = `http://127.0.0.1:${bare.port}/`
  const started = await startStubServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: POOL, stub, manifest: MANIFEST })
  server = started.server
  const { client } = started
  const sessions = await createSessions(server.url, 20)
  const rawSessions = await createSessions(server.url, 20)
  const pgClient = new pg.Client({ connectionString: database.url })
  await pgClient.connect()

  // 1. JSON replies, one at a time: the service against the same call made directly.
  stub.setDefault({ text: 'The stub answers at once with a short reply of a dozen words or so.' })
  await serviceReplies(server.url, sessions, WARMUP)
  const warmupMessages = lastServiceMessages(stub)
  for (let i = 0; i < WARMUP; i++) await directWholeCall(client, warmupMessages)
  await rawCommits(pgClient, rawSessions, WARMUP)
  await rawCommits(pgClient, rawSessions, WARMUP, commitReplyRowsAsService)
  await bareRoundTrips(bareUrl, WARMUP)
  const replyRounds: Array<{ service: number[]; direct: number[]; raw: number[]; rawService: number[]; bare: number[]; replyCommit: number[] }> = []
  for (let run = 0; run < RUNS; run++) {
    // Interleaved in small batches, so that a noisy neighbour hits every side alike.
    const service: number[] = []
    const direct: number[] = []
    const raw: number[] = []
    const rawService: number[] = []
    const bareTrips: number[] = []
    const replyCommit: number[] = []
    for (let batch = 0; batch < REPLIES / 20; batch++) {
      service.push(...(await serviceReplies(server.url, sessions, 20)))
      const messages = lastServiceMessages(stub)
      for (let i = 0; i < 20; i++) direct.push(await directWholeCall(client, messages))
      raw.push(...(await rawCommits(pgClient, rawSessions, 20)))
      rawService.push(...(await rawCommits(pgClient, rawSessions, 20, commitReplyRowsAsService)))
      bareTrips.push(...(await bareRoundTrips(bareUrl, 20)))
      replyCommit.push(...(await replyCommits(pgClient, rawSessions, 20)))
    }
    replyRounds.push({ service, direct, raw, rawService, bare: bareTrips, replyCommit })
  }
  await pgClient.end()

  // 2. Throughput at 50 connections over 100 sessions, against the raw pg baseline.
  const loadSessions = await createSessions(server.url, 100)
  const baselineSessions = await createSessions(server.url, 100)
  const load = { connections: 50, durationSeconds: DURATION }
  const posts: LoadResult[] = []
  const raws: LoadResult[] = []
  for (let run = 0; run < RUNS; run++) {
    if (run % 2 === 0) {
      posts.push(await postMessages(server.url, loadSessions, load))
      stub.requests.length = 0
      raws.push(await rawReplyLoad(database.url, baselineSessions, { ...load, poolSize: POOL }))
    } else {
      raws.push(await rawReplyLoad(database.url, baselineSessions, { ...load, poolSize: POOL }))
      posts.push(await postMessages(server.url, loadSessions, load))
      stub.requests.length = 0
    }
  }

  // 3. SSE replies of 100 tokens: time to first delta through the service against the SDK's own.
  stub.setDefault({ text: TOKENS_100 })
  const streamSessions = await createSessions(server.url, 10)
  for (let i = 0; i < 20; i++) await serviceStream(server.url, streamSessions[i % 10]!)
  const streamRounds: Array<{ service: Array<{ firstDeltaMs: number; totalMs: number; deltas: number }>; direct: Array<{ totalMs: number; firstTokenMs: number }> }> = []
  for (let run = 0; run < RUNS; run++) {
    const service: Array<{ firstDeltaMs: number; totalMs: number; deltas: number }> = []
    const direct: Array<{ totalMs: number; firstTokenMs: number }> = []
    for (let i = 0; i < STREAMS; i++) {
      service.push(await serviceStream(server.url, streamSessions[i % 10]!))
      direct.push(await directCall(client, lastServiceMessages(stub)))
    }
    streamRounds.push({ service, direct })
  }

  const replies = replyRounds.map(({ service, direct, raw, rawService, bare, replyCommit }) => {
    const s = sortedCopy(service)
    const d = sortedCopy(direct)
    const r = sortedCopy(raw)
    const rs = sortedCopy(rawService)
    const b = sortedCopy(bare)
    const c = sortedCopy(replyCommit)
    return {
      bareRoundTripP50Ms: percentile(b, 0.5),
      bareRoundTripP99Ms: percentile(b, 0.99),
      replyCommitP50Ms: percentile(c, 0.5),
      replyCommitP99Ms: percentile(c, 0.99),
      floorP50Ms: percentile(b, 0.5) + percentile(c, 0.5),
      rawServiceSqlP50Ms: percentile(rs, 0.5),
      rawServiceSqlP99Ms: percentile(rs, 0.99),
      rawCommitsP50Ms: percentile(r, 0.5),
      rawCommitsP99Ms: percentile(r, 0.99),
      serviceP50Ms: percentile(s, 0.5),
      serviceP99Ms: percentile(s, 0.99),
      directP50Ms: percentile(d, 0.5),
      directP99Ms: percentile(d, 0.99),
      overheadP50Ms: percentile(s, 0.5) - percentile(d, 0.5),
      overheadP99Ms: percentile(s, 0.99) - percentile(d, 0.99)
    }
  })
  const streams = streamRounds.map(({ service, direct }) => {
    const first = sortedCopy(service.map((r) => r.firstDeltaMs))
    const directFirst = sortedCopy(direct.map((r) => r.firstTokenMs))
    const deltasPerSecond = service.map((r) => r.deltas / ((r.totalMs - r.firstDeltaMs) / 1000))
    return {
      firstDeltaP50Ms: percentile(first, 0.5),
      firstDeltaP99Ms: percentile(first, 0.99),
      sdkFirstTokenP50Ms: percentile(directFirst, 0.5),
      sdkFirstTokenP99Ms: percentile(directFirst, 0.99),
      overheadP50Ms: percentile(first, 0.5) - percentile(directFirst, 0.5),
      overheadP99Ms: percentile(first, 0.99) - percentile(directFirst, 0.99),
      deltasPerReply: median(service.map((r) => r.deltas)),
      deltasPerSecondPerStream: median(deltasPerSecond)
    }
  })
  const pick = <T>(rounds: T[], key: keyof T) => median(rounds.map((r) => r[key] as number))
  const postRate = median(posts.map((p) => p.perSecond))
  const rawRate = median(raws.map((r) => r.perSecond))
  const report = {
    date: new Date().toISOString(),
    command: 'npm run bench:providers',
    database: database.description,
    settings: { runs: RUNS, repliesPerRun: REPLIES, streamsPerRun: STREAMS, durationSeconds: DURATION, poolSize: POOL, provider: 'openai SDK -> loopback stub (zero latency)' },
    replies: {
      rounds: replies,
      overheadP50Ms: pick(replies, 'overheadP50Ms'),
      overheadP99Ms: pick(replies, 'overheadP99Ms'),
      criticalPathFloorP50Ms: pick(replies, 'floorP50Ms'),
      targets: { p50Ms: 2, p99Ms: 10 }
    },
    throughput: {
      connections: 50,
      sessions: 100,
      servicePerSecond: posts.map((p) => p.perSecond),
      serviceP99Ms: median(posts.map((p) => p.p99)),
      serviceNon2xx: posts.map((p) => p.non2xx),
      rawPgPerSecond: raws.map((r) => r.perSecond),
      ratio: postRate / rawRate,
      target: 0.5
    },
    streaming: { rounds: streams, overheadP99Ms: pick(streams, 'overheadP99Ms'), target: { p99Ms: 5 } }
  }
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'providers.json'), JSON.stringify(report, null, 2) + '\n')
  const spread = (rounds: Array<Record<string, number>>, key: string) => rounds.map((r) => fmt(r[key] as number, 2)).join(' / ')
  console.log(`
Provider benchmarks (OpenAI SDK against a zero-latency loopback stub; ${RUNS} rounds, median of the rounds; rounds shown as a / b / c)
  JSON reply, 1 connection    service p50 ${fmt(pick(replies, 'serviceP50Ms'), 2)} ms p99 ${fmt(pick(replies, 'serviceP99Ms'), 2)} ms; direct SDK call (whole answer) p50 ${fmt(pick(replies, 'directP50Ms'), 2)} ms p99 ${fmt(pick(replies, 'directP99Ms'), 2)} ms
  raw pg, same rows           p50 ${fmt(pick(replies, 'rawCommitsP50Ms'), 2)} ms p99 ${fmt(pick(replies, 'rawCommitsP99Ms'), 2)} ms (11 statements, 2 commits)
  raw pg, the service's SQL   p50 ${fmt(pick(replies, 'rawServiceSqlP50Ms'), 2)} ms p99 ${fmt(pick(replies, 'rawServiceSqlP99Ms'), 2)} ms (its 2 statements, 2 durable commits)
  critical-path floor         p50 ${fmt(pick(replies, 'floorP50Ms'), 2)} ms = bare Fastify round trip ${fmt(pick(replies, 'bareRoundTripP50Ms'), 2)} ms + the reply's commit (step 3 alone) ${fmt(pick(replies, 'replyCommitP50Ms'), 2)} ms
  overhead                    p50 ${fmt(report.replies.overheadP50Ms, 2)} ms (${spread(replies, 'overheadP50Ms')}; target < 2)  p99 ${fmt(report.replies.overheadP99Ms, 2)} ms (${spread(replies, 'overheadP99Ms')}; target < 10)
  50 connections, JSON        ${fmt(postRate, 0)} replies/s (${posts.map((p) => fmt(p.perSecond, 0)).join(' / ')}), p99 ${fmt(report.throughput.serviceP99Ms, 0)} ms, non-2xx ${posts.map((p) => p.non2xx).join('/')}
  raw pg, same rows           ${fmt(rawRate, 0)} pairs/s (${raws.map((r) => fmt(r.perSecond, 0)).join(' / ')})
  ratio                       ${fmt(report.throughput.ratio, 2)} (target >= 0.5)
  SSE, 100 tokens             first delta p50 ${fmt(pick(streams, 'firstDeltaP50Ms'), 2)} ms p99 ${fmt(pick(streams, 'firstDeltaP99Ms'), 2)} ms; SDK first token p50 ${fmt(pick(streams, 'sdkFirstTokenP50Ms'), 2)} ms p99 ${fmt(pick(streams, 'sdkFirstTokenP99Ms'), 2)} ms
  first-delta overhead        p50 ${fmt(pick(streams, 'overheadP50Ms'), 2)} ms  p99 ${fmt(report.streaming.overheadP99Ms, 2)} ms (${spread(streams, 'overheadP99Ms')}; target < 5)
  delta throughput            ${fmt(pick(streams, 'deltasPerSecondPerStream'), 0)} deltas/s per stream, ${fmt(pick(streams, 'deltasPerReply'), 0)} deltas per reply
`)
} finally {
  server?.child.kill('SIGTERM')
  if (bare) await stopServer(bare)
  await sleep(500)
  await stub.close()
  await database.dispose()
}
