// What the conversation and provider benchmarks share: the production server in its own process,
// sessions, the POST messages load, and the raw `pg` baseline that commits the same rows.
import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import pg from 'pg'
import { PROJECT_ROOT } from '../src/paths.js'
import { commitReplyRows } from './raw-pg.js'
import { freePort, npmStartNodeFlags, SERVER_SCRIPT } from './startup.js'

export interface BenchServer {
  child: ChildProcess
  url: string
  /** The ops instance (/metrics, /ready). */
  opsUrl: string
}

export interface BenchServerOptions {
  databaseUrl: string
  redisUrl: string
  poolSize: number
  /** More environment (AGENTS_FILE, provider keys and base URLs...). */
  env?: Record<string, string>
  /** More node flags, after `npm start`'s (an --import of a benchmark hook). */
  nodeFlags?: string[]
}

/** `node dist/src/server.js` with `npm start`'s node flags, on loopback ports, ready (GET /ready 200). */
export async function startBenchServer (options: BenchServerOptions): Promise<BenchServer> {
  const [port, healthPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, [...npmStartNodeFlags(), ...(options.nodeFlags ?? []), SERVER_SCRIPT], {
    cwd: PROJECT_ROOT,
    env: {
      PATH: process.env.PATH,
      NODE_ENV: 'production',
      HOST: '127.0.0.1',
      PORT: String(port),
      HEALTH_PORT: String(healthPort),
      DATABASE_URL: options.databaseUrl,
      REDIS_URL: options.redisUrl,
      REDIS_KEY_PREFIX: `bench:${port}:`,
      DB_POOL_MAX: String(options.poolSize),
      // The monitor's probes would be extra provider calls in the middle of a measurement.
      AGENT_HEALTH_CHECK_INTERVAL: '3600',
      LOG_LEVEL: 'info',
      ...options.env
    },
    // The access log is written (production configuration) and thrown away.
    stdio: ['ignore', 'ignore', 'inherit']
  })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; i < 300; i++) {
    if ((await fetch(`http://127.0.0.1:${healthPort}/ready`).then((r) => r.status, () => 0)) === 200) return { child, url, opsUrl: `http://127.0.0.1:${healthPort}` }
    await sleep(100)
  }
  child.kill('SIGKILL')
  throw new Error('server did not become ready')
}

export async function createSessions (url: string, count: number): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < count; i++) ids.push((await (await fetch(`${url}/v1/sessions`, { method: 'POST' })).json()).id)
  return ids
}

export interface LoadOptions {
  connections: number
  durationSeconds: number
}

export interface LoadResult {
  perSecond: number
  p50: number
  p99: number
  non2xx: number
}

export interface SseReply {
  /** Whether the stream ended with its `done` event. */
  done: boolean
  /** From the request to the first `delta` event (0 when there was none). */
  firstDeltaMs: number
  totalMs: number
  deltas: number
  /** The end of the stream, for an error message. */
  tail: string
}

/** One POST .../messages with Accept: text/event-stream, read to its end. */
export async function postSseReply (url: string, session: string, content: string): Promise<SseReply> {
  const started = performance.now()
  const response = await fetch(`${url}/v1/sessions/${session}/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ content })
  })
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let text = ''
  let firstDeltaMs = 0
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    text += decoder.decode(value, { stream: true })
    if (firstDeltaMs === 0 && text.includes('event: delta')) firstDeltaMs = performance.now() - started
  }
  return { done: text.includes('event: done'), firstDeltaMs, totalMs: performance.now() - started, deltas: text.split('event: delta').length - 1, tail: text.slice(-300) }
}

/** POST .../messages (JSON) at `connections`, round-robin over the sessions: a session comes back only after every other one. */
export async function postMessages (url: string, sessions: string[], options: LoadOptions): Promise<LoadResult> {
  let next = 0
  const body = JSON.stringify({ content: 'How do I make this query faster? It scans the whole table.' })
  const result = await autocannon({
    url,
    connections: options.connections,
    duration: options.durationSeconds,
    requests: [
      {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, path: `/v1/sessions/${sessions[next++ % sessions.length]}/messages`, body })
      }
    ]
  })
  return { perSecond: result['2xx'] / result.duration, p50: result.latency.p50, p99: result.latency.p99, non2xx: result.non2xx }
}

/**
 * The raw `pg` baseline: `connections` workers committing the rows of one reply each, round-robin
 * over the sessions, through a pool of `poolSize`, for `durationSeconds`.
 */
export async function rawReplyLoad (
  databaseUrl: string,
  sessions: string[],
  options: LoadOptions & { poolSize: number; commit?: (client: pg.PoolClient, sessionId: string) => Promise<void> }
): Promise<LoadResult> {
  const commit = options.commit ?? commitReplyRows
  const pool = new pg.Pool({ connectionString: databaseUrl, max: options.poolSize })
  let done = 0
  let next = 0
  const until = Date.now() + options.durationSeconds * 1000
  const latencies: number[] = []
  const worker = async () => {
    while (Date.now() < until) {
      const id = sessions[next++ % sessions.length] as string
      const started = performance.now()
      const client = await pool.connect()
      try {
        await commit(client, id)
        done += 1
        latencies.push(performance.now() - started)
      } finally {
        client.release()
      }
    }
  }
  const started = Date.now()
  await Promise.all(Array.from({ length: options.connections }, worker))
  await pool.end()
  latencies.sort((a, b) => a - b)
  const at = (p: number) => latencies[Math.floor(latencies.length * p)] ?? 0
  return { perSecond: done / ((Date.now() - started) / 1000), p50: at(0.5), p99: at(0.99), non2xx: 0 }
}
