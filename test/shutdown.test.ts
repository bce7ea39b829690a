import { Agent, request } from 'node:http'
import { connect } from 'node:net'
import { once } from 'node:events'
import t from 'tap'
import { Lifecycle, type Clock } from '../src/lifecycle.js'
import { createTestDatabase, eventually } from './helper.js'
import { startServerProcess, type ServerProcess } from './support/server-process.js'

/** A clock whose time moves only when the test says so. */
class ManualClock implements Clock {
  private time = 0
  private readonly timers = new Map<number, { at: number; callback: () => void }>()
  private lastId = 0

  now (): number {
    return this.time
  }

  setTimeout (callback: () => void, ms: number): number {
    this.timers.set(++this.lastId, { at: this.time + ms, callback })
    return this.lastId
  }

  clearTimeout (timer: unknown): void {
    this.timers.delete(timer as number)
  }

  advance (ms: number): void {
    this.time += ms
    for (const [id, timer] of [...this.timers].sort(([, a], [, b]) => a.at - b.at)) {
      if (timer.at > this.time) continue
      this.timers.delete(id)
      timer.callback()
    }
  }
}

/** A drain whose api closes when the test says so; what happened, in order. */
function drainOn (lifecycle: Lifecycle, timeoutMs: number) {
  const events: string[] = []
  let closeApi: () => void = () => undefined
  const apiClosed = new Promise<void>((resolve) => (closeApi = resolve))
  lifecycle.beginShutdown()
  lifecycle.replySignal.addEventListener('abort', () => events.push('replies ended'))
  const drained = lifecycle.drain({
    timeoutMs,
    closeApi: async () => {
      events.push('api closing')
      await apiClosed
      events.push('api closed')
    },
    closeOps: async () => {
      events.push('ops closed')
    },
    log: { warn: (message) => events.push(`warn: ${message}`) }
  })
  return { events, closeApi, drained }
}

t.test('drain: the replies still running near the deadline are ended, then the api and ops close', async (t) => {
  const clock = new ManualClock()
  const lifecycle = new Lifecycle(clock)
  const { events, closeApi, drained } = drainOn(lifecycle, 10_000)
  t.equal(lifecycle.phase, 'stopping')
  clock.advance(8_999)
  t.same(events, ['api closing'], 'nothing ended before the deadline less its margin (1 s)')
  t.equal(lifecycle.shutdownSeconds(), 8.999, 'the drain has run 9 s, by the clock')
  clock.advance(1)
  t.same(events, ['api closing', 'warn: shutdown deadline is near: ending the replies still running', 'replies ended'])
  t.ok(lifecycle.replySignal.aborted)
  closeApi()
  await drained
  t.same(events.slice(-2), ['api closed', 'ops closed'], 'the ops instance closes last')
})

t.test('drain: a short deadline keeps a fifth of it as the margin', async (t) => {
  const clock = new ManualClock()
  const lifecycle = new Lifecycle(clock)
  const { events, closeApi, drained } = drainOn(lifecycle, 700)
  clock.advance(559)
  t.notOk(lifecycle.replySignal.aborted)
  clock.advance(1)
  t.ok(lifecycle.replySignal.aborted, 'ended at 560 ms of 700')
  closeApi()
  await drained
  t.equal(events.at(-1), 'ops closed')
})

t.test('drain: an api that closes in time ends no reply, and no timer is left behind', async (t) => {
  const clock = new ManualClock()
  const lifecycle = new Lifecycle(clock)
  const { events, closeApi, drained } = drainOn(lifecycle, 10_000)
  clock.advance(5_000)
  closeApi()
  await drained
  clock.advance(60_000)
  t.same(events, ['api closing', 'api closed', 'ops closed'])
  t.notOk(lifecycle.replySignal.aborted)
})

interface SlowUpload {
  /** Resolves once the server has read the request's headers and started on it (its 100 Continue). */
  accepted: Promise<void>
  finish(): void
  response: Promise<{ status: number; body: string }>
}

/** A request that stays in flight for as long as the test likes: the body is sent in two parts. */
function slowUpload (baseUrl: string, agent?: Agent): SlowUpload {
  const body = JSON.stringify({ content: 'x'.repeat(64) })
  const req = request(`${baseUrl}/`, {
    method: 'POST',
    agent,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), expect: '100-continue' }
  })
  const accepted = once(req, 'continue').then(() => {
    req.write(body.slice(0, 10))
  })
  const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let text = ''
      res.on('data', (chunk) => (text += chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
  })
  req.flushHeaders()
  return { accepted, finish: () => req.end(body.slice(10)), response }
}

/** Resolves when the server has logged a line matching `pattern` (at once if it already has). */
function logged (server: ServerProcess, pattern: RegExp): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (!pattern.test(server.output())) return
      server.child.stdout?.off('data', check)
      resolve()
    }
    server.child.stdout?.on('data', check)
    check()
  })
}

const readyStatus = (opsUrl: string) => fetch(`${opsUrl}/ready`).then((res) => res.status, () => 'refused' as const)
const SHUTTING_DOWN = /shutting down: readiness is now 503/

t.test('SIGTERM: readiness turns 503 at once, the in-flight request completes, exit code 0', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), LOG_LEVEL: 'info' })
  t.teardown(() => server.child.kill('SIGKILL'))
  t.equal(await readyStatus(server.opsUrl), 200)

  const upload = slowUpload(server.apiUrl)
  await upload.accepted
  server.child.kill('SIGTERM')
  await logged(server, SHUTTING_DOWN)

  t.equal(await readyStatus(server.opsUrl), 503, 'readiness is 503 from the first moment of the drain')
  t.equal((await fetch(`${server.opsUrl}/healthz`)).status, 200, 'liveness still answers while draining')
  const refused = () => fetch(`${server.apiUrl}/`).then(() => false, () => true)
  t.ok(await eventually(refused), 'the api port stops accepting connections')

  upload.finish()
  const answer = await upload.response
  t.equal(answer.status, 404, 'the in-flight request got its complete answer (POST / has no route)')
  t.match(JSON.parse(answer.body), { statusCode: 404, message: 'Route POST / not found' })

  t.equal(await server.exited, 0, 'clean exit')
  t.match(server.output(), /shutdown complete/)
})

t.test('SIGTERM: open connections without a request in flight do not hold the drain', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), SHUTDOWN_TIMEOUT_MS: '30000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  // A client's pre-connect (no request yet) on each port, which Node never counts as idle...
  const sockets = await Promise.all(
    [server.apiUrl, server.opsUrl].map(async (url) => {
      const socket = connect(Number(new URL(url).port), '127.0.0.1')
      await once(socket, 'connect')
      socket.on('error', () => undefined)
      return socket
    })
  )
  // ...and a keep-alive connection whose request is answered during the drain.
  const agent = new Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const upload = slowUpload(server.apiUrl, agent)
  await upload.accepted
  server.child.kill('SIGTERM')
  await once(sockets[0]!, 'close')
  t.pass('the api closed its idle pre-connected socket while a request was still in flight')
  upload.finish()
  t.equal((await upload.response).status, 404, 'the in-flight request got its answer')
  // Anything still holding the api or ops server open would last until the 30 s deadline: exit 1.
  t.equal(await server.exited, 0, 'the drain ended with the last request: a clean exit, not the forced one')
  t.match(server.output(), /shutdown complete/)
})

t.test('a shutdown that outlives SHUTDOWN_TIMEOUT_MS is forced, with exit code 1', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), SHUTDOWN_TIMEOUT_MS: '700' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const upload = slowUpload(server.apiUrl)
  upload.response.catch(() => undefined)
  await upload.accepted
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 1)
  t.match(server.output(), /graceful shutdown timed out/)
  t.notMatch(server.output(), /shutdown complete/, 'the request never finished, so the drain did not either')
})

t.test('a second signal exits at once', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), SHUTDOWN_TIMEOUT_MS: '30000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const upload = slowUpload(server.apiUrl)
  upload.response.catch(() => undefined)
  await upload.accepted
  server.child.kill('SIGTERM')
  await logged(server, SHUTTING_DOWN)
  t.equal(server.child.exitCode, null, 'still draining after the first signal (the request is in flight)')
  server.child.kill('SIGINT')
  t.equal(await server.exited, 1)
  t.match(server.output(), /second signal: exiting at once/)
  t.notMatch(server.output(), /shutdown complete|graceful shutdown timed out/, 'neither the drain nor its deadline ended it')
})

/** Posts a message over SSE and collects the raw stream until it ends. */
async function streamReply (apiUrl: string, content: string) {
  const session = await (await fetch(`${apiUrl}/v1/sessions`, { method: 'POST' })).json()
  const response = await fetch(`${apiUrl}/v1/sessions/${session.id}/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ content })
  })
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let text = ''
  let firstDelta: () => void = () => undefined
  const started = new Promise<void>((resolve) => (firstDelta = resolve))
  const done = (async () => {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return text
      text += decoder.decode(value, { stream: true })
      if (text.includes('event: delta')) firstDelta()
    }
  })()
  return { session, started, done }
}

t.test('SIGTERM during an SSE reply that finishes within the drain: it completes with done', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), ECHO_TOKEN_DELAY_MS: '50', SHUTDOWN_TIMEOUT_MS: '10000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const reply = await streamReply(server.apiUrl, 'one two three four five six seven eight nine ten')
  await reply.started
  server.child.kill('SIGTERM')
  const text = await reply.done
  t.match(text, /event: done/)
  t.notMatch(text, /event: error/)
  t.equal(await server.exited, 0, server.output())
})

t.test('SIGTERM during an SSE reply that outlives the drain: it ends with an error event, exit 0', async (t) => {
  const database = await createTestDatabase(t)
  const server = await startServerProcess({ DATABASE_URL: database, ECHO_TOKEN_DELAY_MS: '200', SHUTDOWN_TIMEOUT_MS: '2000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const words = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ')
  const reply = await streamReply(server.apiUrl, words)
  await reply.started
  server.child.kill('SIGTERM')
  const text = await reply.done
  t.match(text, /event: error\ndata: \{[^\n]*"code":"SHUTTING_DOWN"/)
  t.notMatch(text, /event: done/)
  t.equal(await server.exited, 0, 'ended before the forced exit (which exits 1): nothing acknowledged was lost')

  const { default: pg } = await import('pg')
  const client = new pg.Client({ connectionString: database })
  await client.connect()
  t.teardown(() => client.end())
  const { rows } = await client.query('SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY seq', [reply.session.id])
  t.same(rows, [{ role: 'user', content: words }], 'the user message is stored; no partial reply is')
  const { rows: events } = await client.query("SELECT data FROM event_logs WHERE session_id = $1 AND type = 'agent.failed'", [reply.session.id])
  t.match(events, [{ data: { code: 'SHUTTING_DOWN' } }])
})
