import { Agent, request } from 'node:http'
import { connect } from 'node:net'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createTestDatabase } from './helper.js'
import { startServerProcess } from './support/server-process.js'

interface SlowUpload {
  finish(): void
  response: Promise<{ status: number; body: string }>
}

/** A request that stays in flight for as long as the test likes: the body is sent in two parts. */
function slowUpload (baseUrl: string, agent?: Agent): SlowUpload {
  const body = JSON.stringify({ content: 'x'.repeat(64) })
  const req = request(`${baseUrl}/`, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } })
  const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let text = ''
      res.on('data', (chunk) => (text += chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
  })
  req.write(body.slice(0, 10))
  return { finish: () => req.end(body.slice(10)), response }
}

const readyStatus = (opsUrl: string) => fetch(`${opsUrl}/ready`).then((res) => res.status, () => 'refused' as const)

t.test('SIGTERM: readiness turns 503 at once, the in-flight request completes, exit code 0', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), LOG_LEVEL: 'info' })
  t.teardown(() => server.child.kill('SIGKILL'))
  t.equal(await readyStatus(server.opsUrl), 200)

  const upload = slowUpload(server.apiUrl)
  await sleep(200)
  server.child.kill('SIGTERM')
  await sleep(200)

  t.equal(await readyStatus(server.opsUrl), 503, 'readiness is 503 while draining')
  t.equal((await fetch(`${server.opsUrl}/healthz`)).status, 200, 'liveness still answers while draining')
  const newConnection = await fetch(`${server.apiUrl}/`).then((res) => res.status, () => 'refused')
  t.equal(newConnection, 'refused', 'the api port accepts no new connections')

  upload.finish()
  const answer = await upload.response
  t.equal(answer.status, 404, 'the in-flight request got its complete answer (POST / has no route)')
  t.match(JSON.parse(answer.body), { statusCode: 404, message: 'Route POST / not found' })

  t.equal(await server.exited, 0, 'clean exit')
  t.match(server.output(), /shutting down: readiness is now 503/)
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
  await sleep(200)
  const started = Date.now()
  server.child.kill('SIGTERM')
  await sleep(200)
  upload.finish()
  t.equal((await upload.response).status, 404, 'the in-flight request got its answer')
  t.equal(await server.exited, 0, 'clean exit')
  const elapsed = Date.now() - started
  t.ok(elapsed < 5000, `the drain ended with the last request, not a connection timeout (${elapsed} ms)`)
  for (const socket of sockets) t.ok(socket.destroyed || socket.readableEnded, 'the idle connection was closed by the server')
})

t.test('a shutdown that outlives SHUTDOWN_TIMEOUT_MS is forced, with exit code 1', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), SHUTDOWN_TIMEOUT_MS: '700' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const upload = slowUpload(server.apiUrl)
  upload.response.catch(() => undefined)
  await sleep(200)
  const started = Date.now()
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 1)
  const elapsed = Date.now() - started
  t.ok(elapsed >= 600 && elapsed < 5000, `forced after the timeout (${elapsed} ms)`)
  t.match(server.output(), /graceful shutdown timed out/)
})

t.test('a second signal exits at once', async (t) => {
  const server = await startServerProcess({ DATABASE_URL: await createTestDatabase(t), SHUTDOWN_TIMEOUT_MS: '30000' })
  t.teardown(() => server.child.kill('SIGKILL'))
  const upload = slowUpload(server.apiUrl)
  upload.response.catch(() => undefined)
  await sleep(200)
  server.child.kill('SIGTERM')
  await sleep(300)
  t.equal(server.child.exitCode, null, 'still draining after the first signal')
  const started = Date.now()
  server.child.kill('SIGINT')
  t.equal(await server.exited, 1)
  t.ok(Date.now() - started < 2000, 'exited without waiting for the drain')
  t.match(server.output(), /second signal: exiting at once/)
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
  const started = Date.now()
  server.child.kill('SIGTERM')
  const text = await reply.done
  t.ok(Date.now() - started < 2000, 'ended before the forced-exit deadline')
  t.match(text, /event: error\ndata: \{[^\n]*"code":"SHUTTING_DOWN"/)
  t.notMatch(text, /event: done/)
  t.equal(await server.exited, 0, 'nothing acknowledged was lost')

  const { default: pg } = await import('pg')
  const client = new pg.Client({ connectionString: database })
  await client.connect()
  t.teardown(() => client.end())
  const { rows } = await client.query('SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY seq', [reply.session.id])
  t.same(rows, [{ role: 'user', content: words }], 'the user message is stored; no partial reply is')
  const { rows: events } = await client.query("SELECT data FROM event_logs WHERE session_id = $1 AND type = 'agent.failed'", [reply.session.id])
  t.match(events, [{ data: { code: 'SHUTTING_DOWN' } }])
})
