// The limiter's cost (issue 13): the production build (dist/) on a real PostgreSQL and Redis, twice
// in the same run, limits off (the defaults) and limits on (all four per-tenant limits set, high
// enough that nothing is refused, so every request pays the checks: the request rate's Redis script
// on /v1, the message rate's and the token budget's query on message posts). Runs alternate off/on,
// BENCH_RUNS rounds, and the median of the rounds' ratios on/off is the figure (target: within 10 %):
//   GET /                      outside /v1: no limiter at all, the control
//   GET /v1/agents             the request rate (one Redis script per request)
//   POST .../messages (JSON)   request rate + message rate + today's tokens from PostgreSQL
// Usage: npx tsx bench/limits.ts (part of npm run bench; DATABASE_URL and REDIS_URL default to the local servers).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { PROJECT_ROOT } from '../src/paths.js'
import { createSessions, postMessages, startBenchServer, type BenchServer } from './conversation-load.js'
import { prepareDatabase } from './database.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DURATION = Number(process.env.BENCH_DURATION ?? 5)
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const CONNECTIONS = 50
const SESSIONS = 100
const TARGET = 0.9
const LIMITS_ON = {
  RATE_LIMIT_PER_MINUTE: '1000000000',
  MESSAGE_RATE_PER_MINUTE: '1000000000',
  MAX_STREAMS_PER_TENANT: '1000000',
  TOKEN_BUDGET_PER_DAY: '1000000000000'
}

async function getLoad (url: string): Promise<{ perSecond: number; non2xx: number }> {
  const result = await autocannon({ url, connections: CONNECTIONS, duration: DURATION })
  return { perSecond: result['2xx'] / result.duration, non2xx: result.non2xx }
}

/** What the limits-on server refused: nothing should be (all four limits are far above the load). */
async function refusalsOf (server: BenchServer): Promise<string> {
  const metrics = await (await fetch(`${server.opsUrl}/metrics`)).text()
  return [...metrics.matchAll(/^smalltalk_limit_refusals_total\{limit="(\w+)"\} (\d+)/gm)].map((m) => `${m[1]} ${m[2]}`).join(', ')
}

const database = await prepareDatabase(DATABASE_URL)
const servers: BenchServer[] = []
try {
  const off = await startBenchServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: 10 })
  servers.push(off)
  const on = await startBenchServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: 10, env: LIMITS_ON })
  servers.push(on)
  const sessions = { off: await createSessions(off.url, SESSIONS), on: await createSessions(on.url, SESSIONS) }
  const cases = [
    { name: 'GET /', run: (server: BenchServer) => getLoad(`${server.url}/`) },
    { name: 'GET /v1/agents', run: (server: BenchServer) => getLoad(`${server.url}/v1/agents`) },
    {
      name: 'POST messages (JSON)',
      run: (server: BenchServer) => postMessages(server.url, server === off ? sessions.off : sessions.on, { connections: CONNECTIONS, durationSeconds: DURATION })
    }
  ]
  const results = []
  for (const { name, run } of cases) {
    // Warm-up of both, then alternating runs (off first, then on first), so that a drift of the machine touches both alike.
    await run(off)
    await run(on)
    const rates = { off: [] as number[], on: [] as number[] }
    let non2xx = 0
    for (let i = 0; i < RUNS; i++) {
      // Which goes first alternates too: a run pays for what the previous one left (autovacuum, a checkpoint).
      const order = i % 2 === 0 ? [['off', off], ['on', on]] as const : [['on', on], ['off', off]] as const
      for (const [label, server] of order) {
        const load = await run(server)
        rates[label].push(load.perSecond)
        non2xx += load.non2xx
      }
    }
    // The figure is the median of the rounds' own ratios: the machine drifts over a case's rounds
    // (other sessions, the database growing), and a round's two runs are seconds apart.
    const ratios = rates.on.map((rate, i) => rate / (rates.off[i] ?? rate))
    results.push({ name, off: median(rates.off), on: median(rates.on), ratio: median(ratios), ratios, ratioOfMedians: median(rates.on) / median(rates.off), runs: rates, non2xx })
  }
  const refused = await refusalsOf(on)
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'limits.json'), JSON.stringify({ durationSeconds: DURATION, runs: RUNS, connections: CONNECTIONS, target: TARGET, results, refused }, null, 2) + '\n')
  console.log(`\nLimiter cost (${DURATION} s x ${RUNS} rounds of off and on, alternating; ratio: median of the rounds' on/off; limits on = all four set, none reached)`)
  for (const r of results) {
    const verdict = r.ratio >= TARGET ? 'ok' : 'OVER 10%'
    console.log(`  ${r.name.padEnd(22)} off ${r.off.toFixed(0).padStart(6)} req/s  on ${r.on.toFixed(0).padStart(6)} req/s  ratio ${r.ratio.toFixed(3)} (rounds ${r.ratios.map((x) => x.toFixed(2)).join(' ')})  ${verdict}  non-2xx ${r.non2xx}`)
  }
  console.log(`  refused by the limits-on server: ${refused}`)
} finally {
  for (const server of servers) server.child.kill('SIGTERM')
  await sleep(500)
  await database.dispose()
}
