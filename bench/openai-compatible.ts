// The OpenAI-compatible API's figure of issue 12, against the production build (dist/) on a real
// PostgreSQL and Redis, its agent on the OpenAI SDK talking to a zero-latency stub of the OpenAI wire
// format on loopback (test/support/llm-stub.ts), each figure beside its baseline from the same run:
//   1. Overhead per call, one connection (no queueing): the latency of POST /v1/chat/completions
//      (JSON, stateless) minus the latency of the same chat completion called directly with the same
//      SDK (the very messages the service sent the stub), against the same overhead of the native
//      JSON reply (POST /v1/sessions/:id/messages minus its direct call). Target: within 1.2 times.
//      The two sides are interleaved in small batches, so that a noisy neighbour hits both alike.
//   2. Replies per second at 50 connections: stateless completions, beside native JSON replies
//      (50 connections over 100 sessions), interleaved runs.
// Usage: npm run bench:openai (DATABASE_URL and REDIS_URL default to the local servers).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import type OpenAI from 'openai'
import { PROJECT_ROOT } from '../src/paths.js'
import { LlmStub } from '../test/support/llm-stub.js'
import { createSessions, postMessages, type BenchServer, type LoadResult } from './conversation-load.js'
import { MODEL, QUESTION, directWholeCall, lastServiceMessages, startStubServer, type ChatMessages } from './openai-stub.js'
import { prepareDatabase } from './database.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const DURATION = Number(process.env.BENCH_DURATION ?? 8)
const REPLIES = Number(process.env.BENCH_REPLIES ?? 400)
const POOL = 10
const WARMUP = 50
const BATCH = 20
const COMPLETION = JSON.stringify({ model: 'assistant', messages: [{ role: 'user', content: QUESTION }] })

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

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0
}

/** The stub called directly, as the service calls it for a JSON answer (the whole answer, the same messages). */
async function directCalls (client: OpenAI, messages: ChatMessages, count: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) latencies.push(await directWholeCall(client, messages))
  return latencies
}

/** One connection, one request at a time: the latency of each answer. */
async function timed (count: number, request: (i: number) => Promise<Response>, status: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const response = await request(i)
    await response.arrayBuffer()
    if (response.status !== status) throw new Error(`${response.url} answered ${response.status}`)
    latencies.push(performance.now() - started)
  }
  return latencies
}

const json = { 'content-type': 'application/json' }
const completions = (url: string, count: number) =>
  timed(count, () => fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: json, body: COMPLETION }), 200)
const nativeReplies = (url: string, sessions: string[], count: number) =>
  timed(count, (i) => fetch(`${url}/v1/sessions/${sessions[i % sessions.length]}/messages`, { method: 'POST', headers: json, body: JSON.stringify({ content: QUESTION }) }), 201)

/** Stateless completions (JSON) at `connections` for `durationSeconds`. */
async function completionLoad (url: string, connections: number, durationSeconds: number): Promise<LoadResult> {
  const result = await autocannon({
    url: `${url}/v1/chat/completions`,
    method: 'POST',
    headers: json,
    body: COMPLETION,
    connections,
    duration: durationSeconds
  })
  return { perSecond: result['2xx'] / result.duration, p50: result.latency.p50, p99: result.latency.p99, non2xx: result.non2xx }
}

const fmt = (n: number, digits = 2) => n.toFixed(digits)

const database = await prepareDatabase(DATABASE_URL)
const stub = await LlmStub.start()
let server: BenchServer | undefined
try {
  const started = await startStubServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: POOL, stub, manifest: MANIFEST })
  server = started.server
  const { client } = started
  stub.setDefault({ text: 'The stub answers at once with a short reply of a dozen words or so.' })
  const sessions = await createSessions(server.url, 20)

  // 1. One connection: each side's latency against its own direct call, interleaved in batches.
  await nativeReplies(server.url, sessions, WARMUP)
  await directCalls(client, lastServiceMessages(stub), WARMUP)
  await completions(server.url, WARMUP)
  await directCalls(client, lastServiceMessages(stub), WARMUP)
  const rounds: Array<{ openai: number[]; openaiDirect: number[]; native: number[]; nativeDirect: number[] }> = []
  for (let run = 0; run < RUNS; run++) {
    const round = { openai: [] as number[], openaiDirect: [] as number[], native: [] as number[], nativeDirect: [] as number[] }
    for (let batch = 0; batch < REPLIES / BATCH; batch++) {
      round.native.push(...(await nativeReplies(server.url, sessions, BATCH)))
      round.nativeDirect.push(...(await directCalls(client, lastServiceMessages(stub), BATCH)))
      round.openai.push(...(await completions(server.url, BATCH)))
      round.openaiDirect.push(...(await directCalls(client, lastServiceMessages(stub), BATCH)))
    }
    rounds.push(round)
  }
  const overheads = rounds.map((r) => {
    const openaiP50 = percentile(r.openai, 0.5) - percentile(r.openaiDirect, 0.5)
    const nativeP50 = percentile(r.native, 0.5) - percentile(r.nativeDirect, 0.5)
    return {
      openaiP50Ms: percentile(r.openai, 0.5),
      openaiP99Ms: percentile(r.openai, 0.99),
      openaiDirectP50Ms: percentile(r.openaiDirect, 0.5),
      nativeP50Ms: percentile(r.native, 0.5),
      nativeP99Ms: percentile(r.native, 0.99),
      nativeDirectP50Ms: percentile(r.nativeDirect, 0.5),
      openaiOverheadP50Ms: openaiP50,
      nativeOverheadP50Ms: nativeP50,
      ratio: openaiP50 / nativeP50
    }
  })

  // 2. 50 connections: stateless completions beside native JSON replies, interleaved runs.
  const loadSessions = await createSessions(server.url, 100)
  const load = { connections: 50, durationSeconds: DURATION }
  const openaiLoads: LoadResult[] = []
  const nativeLoads: LoadResult[] = []
  for (let run = 0; run < RUNS; run++) {
    const order = run % 2 === 0 ? ['openai', 'native'] : ['native', 'openai']
    for (const side of order) {
      if (side === 'openai') openaiLoads.push(await completionLoad(server.url, load.connections, load.durationSeconds))
      else nativeLoads.push(await postMessages(server.url, loadSessions, load))
      stub.requests.length = 0
    }
  }

  const pick = (key: keyof (typeof overheads)[number]) => median(overheads.map((o) => o[key]))
  const report = {
    date: new Date().toISOString(),
    command: 'npm run bench:openai',
    database: database.description,
    settings: { runs: RUNS, repliesPerRun: REPLIES, durationSeconds: DURATION, poolSize: POOL, provider: 'openai SDK -> loopback stub (zero latency)' },
    overhead: {
      rounds: overheads,
      openaiOverheadP50Ms: pick('openaiOverheadP50Ms'),
      nativeOverheadP50Ms: pick('nativeOverheadP50Ms'),
      ratio: pick('ratio'),
      target: { ratioAtMost: 1.2 }
    },
    throughput: {
      connections: 50,
      openaiPerSecond: openaiLoads.map((l) => l.perSecond),
      openaiP99Ms: median(openaiLoads.map((l) => l.p99)),
      openaiNon2xx: openaiLoads.map((l) => l.non2xx),
      nativePerSecond: nativeLoads.map((l) => l.perSecond),
      nativeP99Ms: median(nativeLoads.map((l) => l.p99)),
      nativeNon2xx: nativeLoads.map((l) => l.non2xx)
    }
  }
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'openai-compatible.json'), JSON.stringify(report, null, 2) + '\n')
  const spread = (key: keyof (typeof overheads)[number]) => overheads.map((o) => fmt(o[key])).join(' / ')
  console.log(`
OpenAI-compatible API (OpenAI SDK against a zero-latency loopback stub; ${RUNS} rounds, median of the rounds; rounds shown as a / b / c)
  chat/completions, 1 conn.   p50 ${fmt(pick('openaiP50Ms'))} ms p99 ${fmt(pick('openaiP99Ms'))} ms; its direct SDK call p50 ${fmt(pick('openaiDirectP50Ms'))} ms
  native JSON reply, 1 conn.  p50 ${fmt(pick('nativeP50Ms'))} ms p99 ${fmt(pick('nativeP99Ms'))} ms; its direct SDK call p50 ${fmt(pick('nativeDirectP50Ms'))} ms
  overhead p50                chat/completions ${fmt(report.overhead.openaiOverheadP50Ms)} ms (${spread('openaiOverheadP50Ms')}), native ${fmt(report.overhead.nativeOverheadP50Ms)} ms (${spread('nativeOverheadP50Ms')})
  ratio                       ${fmt(report.overhead.ratio)} (${spread('ratio')}; target <= 1.2)
  50 connections              chat/completions ${fmt(median(report.throughput.openaiPerSecond), 0)} replies/s (${openaiLoads.map((l) => fmt(l.perSecond, 0)).join(' / ')}), p99 ${fmt(report.throughput.openaiP99Ms, 0)} ms, non-2xx ${report.throughput.openaiNon2xx.join('/')}
                              native JSON ${fmt(median(report.throughput.nativePerSecond), 0)} replies/s (${nativeLoads.map((l) => fmt(l.perSecond, 0)).join(' / ')}), p99 ${fmt(report.throughput.nativeP99Ms, 0)} ms, non-2xx ${report.throughput.nativeNon2xx.join('/')}
`)
} finally {
  server?.child.kill('SIGTERM')
  await sleep(500)
  await stub.close()
  await database.dispose()
}
