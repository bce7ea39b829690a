import { createServer, connect, type Socket } from 'node:net'
import t from 'tap'
import { createTestDatabase } from '../helper.js'
import { startServerProcess } from '../support/server-process.js'
import { readYaml, sampleValue, stopChild } from './support.js'

// SmallTalkPostgresDown can only fire if Prometheus still gets a scrape while PostgreSQL hangs: the
// real server runs on its database through a TCP proxy, the proxy stops answering (connections
// accepted, nothing forwarded, the pool's connections cut), and /metrics must still answer within
// the job's scrape_timeout, ready, with smalltalk_dependency_up{dependency="postgres"} at 0.

interface PrometheusConfig {
  global?: { scrape_timeout?: string }
  scrape_configs: Array<{ job_name: string; scrape_timeout?: string }>
}

const seconds = (duration: string) => {
  const match = /^(\d+)(ms|s|m)$/.exec(duration)
  if (!match) throw new Error(`unreadable duration: ${duration}`)
  return Number(match[1]) * { ms: 0.001, s: 1, m: 60 }[match[2] as 'ms' | 's' | 'm']
}

/** A TCP proxy to PostgreSQL that can be made to hang: new connections get no answer, open ones are cut. */
async function hangingProxy (target: URL) {
  let hanging = false
  const sockets = new Set<Socket>()
  const track = (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
  }
  const server = createServer((client) => {
    track(client)
    if (hanging) return
    const upstream = connect(Number(target.port || 5432), target.hostname)
    track(upstream)
    client.pipe(upstream).pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (typeof address !== 'object' || !address) throw new Error('proxy: no address')
  return {
    port: address.port,
    hang () {
      hanging = true
      for (const socket of sockets) socket.destroy()
    },
    close () {
      for (const socket of sockets) socket.destroy()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

t.test('PostgreSQL hangs: /metrics still answers in time, ready, with postgres at 0', async (t) => {
  const config = readYaml<PrometheusConfig>('monitoring', 'prometheus.yml')
  const job = config.scrape_configs.find((c) => c.job_name === 'smalltalk')
  const timeout = seconds(job?.scrape_timeout ?? config.global?.scrape_timeout ?? '10s')

  const database = new URL(await createTestDatabase(t))
  const proxy = await hangingProxy(database)
  t.teardown(() => proxy.close())
  const viaProxy = new URL(database)
  viaProxy.hostname = '127.0.0.1'
  viaProxy.port = String(proxy.port)
  const server = await startServerProcess({ DATABASE_URL: viaProxy.toString(), LOG_LEVEL: 'fatal', NODE_ENV: 'test' })
  t.teardown(() => stopChild({ ...server }, 5000))

  const scrape = async () => {
    const started = performance.now()
    const res = await fetch(`${server.opsUrl}/metrics`)
    const body = await res.text()
    return { status: res.status, body, seconds: (performance.now() - started) / 1000 }
  }
  const before = await scrape()
  const countedAt = Date.now() // the first scrape counted the active sessions in PostgreSQL
  t.equal(sampleValue(before.body, 'smalltalk_dependency_up', { dependency: 'postgres' }), 1, 'before: postgres is up')

  proxy.hang()
  // A scrape at once (the active-sessions count still cached), then one once that count must be
  // refreshed (at most every 15 s): the slowest case, which waits for the pool's connection timeout.
  const first = await scrape()
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, countedAt + 16_000 - Date.now())))
  const last = await scrape()
  const slowest = Math.max(first.seconds, last.seconds)
  t.equal(last.status, 200, '/metrics answers 200')
  t.ok(slowest < timeout, `every scrape finished within the job's scrape_timeout (slowest ${slowest.toFixed(1)} s, timeout ${timeout} s)`)
  t.equal(sampleValue(last.body, 'smalltalk_ready'), 1, 'the instance is still ready (its phase): SmallTalkNotReady stays quiet')
  t.equal(sampleValue(last.body, 'smalltalk_dependency_up', { dependency: 'postgres' }), 0, 'smalltalk_dependency_up{dependency="postgres"} is 0: SmallTalkPostgresDown matches')
  const ready = await fetch(`${server.opsUrl}/ready`)
  const readyBody = (await ready.json()) as { checks: Record<string, string> }
  t.equal(ready.status, 503, 'GET /ready answers 503, as the alert says')
  t.not(readyBody.checks.postgres, 'ok', `its postgres check fails (${readyBody.checks.postgres})`)
})
