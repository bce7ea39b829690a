// The conversation benchmarks of issue 4, against the production build (dist/) on a real PostgreSQL
// and Redis, each figure beside a baseline measured in the same run:
//   1. POST /v1/sessions/:id/messages (JSON, echo provider), 50 connections over 100 sessions,
//      versus a raw `pg` script committing the same rows with the same pool size (and, for the
//      record, the same script announcing its events with pg_notify in the transaction, as the
//      service does for the event stream);
//   2. GET .../messages?limit=50 with the cache warm, versus GET / on the same server;
//   3. SSE replies of 100 deltas: replies per second and time to first delta.
// Usage: npm run bench:conversations (DATABASE_URL and REDIS_URL default to the local servers).
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import pg from 'pg'
import { PROJECT_ROOT } from '../src/paths.js'
import { prepareDatabase } from './database.js'
import { median } from './report.js'
import { freePort, SERVER_SCRIPT } from './startup.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const DURATION = Number(process.env.BENCH_DURATION ?? 8)
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const CONNECTIONS = 50
const SESSIONS = 100
const POOL = 10

interface Server {
  child: ChildProcess
  url: string
}

async function startServer(databaseUrl: string): Promise<Server> {
  const [port, healthPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, [SERVER_SCRIPT], {
    cwd: PROJECT_ROOT,
    env: {
      PATH: process.env.PATH,
      NODE_ENV: 'production',
      HOST: '127.0.0.1',
      PORT: String(port),
      HEALTH_PORT: String(healthPort),
      DATABASE_URL: databaseUrl,
      REDIS_URL,
      REDIS_KEY_PREFIX: `bench:${port}:`,
      DB_POOL_MAX: String(POOL),
      LOG_LEVEL: 'info'
    },
    // The access log is written (production configuration) and thrown away.
    stdio: ['ignore', 'ignore', 'inherit']
  })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 300; i++) {
    if ((await fetch(`http://127.0.0.1:${healthPort}/ready`).then((r) => r.status, () => 0)) === 200) return { child, url }
    await sleep(100)
  }
  child.kill('SIGKILL')
  throw new Error('server did not become ready')
}

async function createSessions(url: string, count: number): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < count; i++) ids.push((await (await fetch(`${url}/v1/sessions`, { method: 'POST' })).json()).id)
  return ids
}

/** Round-robin over the sessions: a session is used again only after every other one was. */
async function postMessages(url: string, sessions: string[]) {
  let next = 0
  const body = JSON.stringify({ content: 'How do I make this query faster? It scans the whole table.' })
  const result = await autocannon({
    url,
    connections: CONNECTIONS,
    duration: DURATION,
    requests: [
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, path: `/v1/sessions/${sessions[next++ % sessions.length]}/messages`, body })
      }
    ]
  })
  return { perSecond: result['2xx'] / result.duration, p50: result.latency.p50, p99: result.latency.p99, non2xx: result.non2xx, errors: result.errors }
}

/**
 * The same rows, committed by a plain script: lease + user message + 2 events; reply + agent state
 * + event. With `notify`, each transaction also announces its events with pg_notify, as the
 * service's do: PostgreSQL serialises the commits of notifying transactions, WAL flush included.
 */
async function rawBaseline(databaseUrl: string, sessions: string[], notify = false) {
  const announce = notify ? `SELECT pg_notify('smalltalk_bench', max(id)::text) FROM e` : 'SELECT count(*) FROM e'
  const pool = new pg.Pool({ connectionString: databaseUrl, max: POOL })
  let done = 0
  let next = 0
  const until = Date.now() + DURATION * 1000
  const latencies: number[] = []
  const worker = async () => {
    while (Date.now() < until) {
      const id = sessions[next++ % sessions.length] as string
      const started = performance.now()
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        const { rows } = await client.query(
          `UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = now() + interval '65 seconds'
            WHERE id = $1 AND status = 'active' RETURNING last_seq`,
          [id]
        )
        const seq = Number(rows[0].last_seq)
        await client.query(`INSERT INTO chat_messages (session_id, seq, role, content) VALUES ($1, $2, 'user', $3)`, [id, seq, 'How do I make this query faster?'])
        await client.query(
          `WITH e AS (INSERT INTO event_logs (type, tenant, session_id, data) SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[]) RETURNING id) ${announce}`,
          [['message.created', 'agent.selected'], ['default', 'default'], [id, id], ['{}', '{}']]
        )
        await client.query('COMMIT')
        await client.query('BEGIN')
        const { rows: r2 } = await client.query(
          `UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = NULL WHERE id = $1 RETURNING last_seq`,
          [id]
        )
        await client.query(
          `INSERT INTO chat_messages (session_id, seq, role, content, agent, provider, model, input_tokens, output_tokens, latency_ms)
           VALUES ($1, $2, 'assistant', $3, 'assistant', 'echo', 'gpt-4o-mini', 30, 12, 5)`,
          [id, Number(r2[0].last_seq), 'Echo (gpt-4o-mini): How do I make this query faster?']
        )
        await client.query(
          `INSERT INTO agent_states (session_id, agent_id, reply_count, input_tokens, output_tokens, last_used_at) VALUES ($1, 'assistant', 1, 30, 12, now())
           ON CONFLICT (session_id, agent_id) DO UPDATE SET reply_count = agent_states.reply_count + 1, last_used_at = now()`,
          [id]
        )
        await client.query(`WITH e AS (INSERT INTO event_logs (type, tenant, session_id, data) VALUES ('message.created', 'default', $1, '{}') RETURNING id) ${announce}`, [id])
        await client.query('COMMIT')
        done += 1
        latencies.push(performance.now() - started)
      } finally {
        client.release()
      }
    }
  }
  const started = Date.now()
  await Promise.all(Array.from({ length: CONNECTIONS }, worker))
  await pool.end()
  latencies.sort((a, b) => a - b)
  return { perSecond: done / ((Date.now() - started) / 1000), p99: latencies[Math.floor(latencies.length * 0.99)] ?? 0 }
}

async function getLoad(url: string) {
  const result = await autocannon({ url, connections: CONNECTIONS, duration: DURATION })
  return { perSecond: result['2xx'] / result.duration, p99: result.latency.p99, non2xx: result.non2xx }
}

/** SSE replies of 100 deltas, `parallel` at a time: replies per second and time to first delta. */
async function sseReplies(url: string, sessions: string[], parallel: number) {
  const words = Array.from({ length: 98 }, (_, i) => `word${i}`).join(' ')
  const firstDelta: number[] = []
  let replies = 0
  let deltas = 0
  const until = Date.now() + DURATION * 1000
  let next = 0
  const worker = async () => {
    while (Date.now() < until) {
      const id = sessions[next++ % sessions.length]
      const started = performance.now()
      const response = await fetch(`${url}/v1/sessions/${id}/messages`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ content: words })
      })
      const reader = (response.body as ReadableStream<Uint8Array>).getReader()
      const decoder = new TextDecoder()
      let text = ''
      let first = true
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        text += decoder.decode(value, { stream: true })
        if (first && text.includes('event: delta')) {
          firstDelta.push(performance.now() - started)
          first = false
        }
      }
      if (text.includes('event: done')) {
        replies += 1
        deltas += text.split('event: delta').length - 1
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
let server: Server | undefined
try {
  server = await startServer(database.url)
  const sessions = await createSessions(server.url, SESSIONS)
  const baselineSessions = await createSessions(server.url, SESSIONS)
  const posts: Awaited<ReturnType<typeof postMessages>>[] = []
  const raws: Awaited<ReturnType<typeof rawBaseline>>[] = []
  const notifying: Awaited<ReturnType<typeof rawBaseline>>[] = []
  for (let run = 0; run < RUNS; run++) {
    // Alternate the order so that a noisy neighbour does not always hit the same side.
    if (run % 2 === 0) {
      posts.push(await postMessages(server.url, sessions))
      raws.push(await rawBaseline(database.url, baselineSessions))
      notifying.push(await rawBaseline(database.url, baselineSessions, true))
    } else {
      notifying.push(await rawBaseline(database.url, baselineSessions, true))
      raws.push(await rawBaseline(database.url, baselineSessions))
      posts.push(await postMessages(server.url, sessions))
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
  const notifyingRate = median(notifying.map((r) => r.perSecond))
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
      rawPgWithNotifyPerSecond: notifying.map((r) => r.perSecond),
      ratioToRawPgWithNotify: postRate / notifyingRate
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
  raw pg + pg_notify in tx    ${fmt(notifyingRate)} tx-pairs/s  spread ${fmt(spread(notifying.map((r) => r.perSecond)) * 100)}%  (service / this: ${fmt(report.messages.ratioToRawPgWithNotify, 2)})
  GET messages?limit=50       ${fmt(historyRate)} req/s  p99 ${fmt(report.history.p99Ms)} ms  spread ${fmt(spread(history.map((h) => h.perSecond)) * 100)}%
  GET /                       ${fmt(rootRate)} req/s  spread ${fmt(spread(roots.map((r) => r.perSecond)) * 100)}%
  ratio                       ${fmt(report.history.ratio, 2)} (target >= 0.5)
  SSE, 100 deltas, 10 at once ${fmt(sse.repliesPerSecond, 1)} replies/s, ${fmt(sse.deltasPerReply)} deltas/reply, first delta p50 ${fmt(sse.firstDeltaP50Ms, 1)} ms p99 ${fmt(sse.firstDeltaP99Ms, 1)} ms
`)
} finally {
  server?.child.kill('SIGTERM')
  await sleep(500)
  await database.dispose()
}
