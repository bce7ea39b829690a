import t, { type Test } from 'tap'
import pg from 'pg'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildTestApp, eventually, redisUnavailable, testEnv, withDatabase } from '../helper.js'
import { freezableProxy } from '../support/freezable-proxy.js'
import { TcpProxy } from '../support/tcp-proxy.js'
import { data, sse } from '../support/sse.js'

// The message path while a dependency is away: Redis cut, blackholed or hung (the chat path keeps
// working from PostgreSQL, and nothing stale is read once Redis is back), and PostgreSQL refusing
// connections (503 DATABASE_UNAVAILABLE quickly, never a 500, and back to normal afterwards).

const echo = (content: string) => `Echo (gpt-4o-mini): ${content}`

interface Message {
  id: string
  seq: number
  role: 'user' | 'assistant'
  content: string
}

async function startListening (t: Test, env: Environment): Promise<{ app: FastifyInstance; base: string }> {
  const app = await buildTestApp(t, env)
  // Node's fetch may leave a spare connection open; drop every connection when the app closes.
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, base }
}

async function createSession (app: FastifyInstance): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['assistant'] } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

function post (app: FastifyInstance, id: string, content: string): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: { content } })
}

async function history (app: FastifyInstance, id: string, query = 'limit=200'): Promise<Message[]> {
  const res = await app.inject(`/v1/sessions/${id}/messages?${query}`)
  if (res.statusCode !== 200) throw new Error(`history: ${res.statusCode} ${res.body}`)
  return res.json().messages
}

async function messageCount (app: FastifyInstance, id: string): Promise<number> {
  return (await app.inject(`/v1/sessions/${id}`)).json().messageCount
}

/** What the session's history must be after these user messages (each answered by the echo). */
function conversation (...contents: string[]): Array<[number, string, string]> {
  return contents.flatMap((content, i) => [
    [2 * i + 1, 'user', content],
    [2 * i + 2, 'assistant', echo(content)]
  ] as Array<[number, string, string]>)
}

const shape = (messages: Message[]) => messages.map((m) => [m.seq, m.role, m.content])

async function timed<T> (work: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const started = performance.now()
  const value = await work()
  return { value, ms: Math.round(performance.now() - started) }
}

t.test('Redis cut at run time: the chat path works from PostgreSQL, and nothing stale is read once it is back', { skip: redisUnavailable() }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const { app, base } = await startListening(t, await testEnv(t, { REDIS_URL: proxy.rewrite(REDIS_URL as string), REDIS_COMMAND_TIMEOUT_MS: '200' }))
  t.ok(await eventually(() => app.cache.state() === 'ok', 5000), 'Redis reachable at first')
  const id = await createSession(app)

  t.equal((await post(app, id, 'before the outage')).statusCode, 201)
  t.same(shape(await history(app, id)), conversation('before the outage'), 'history read (and cached)')
  t.equal(await messageCount(app, id), 2)

  await proxy.cut()
  t.ok(await eventually(() => app.cache.state() === 'degraded', 5000), 'the cache notices the loss')

  const during = await timed(() => post(app, id, 'during the outage'))
  t.equal(during.value.statusCode, 201, during.value.body)
  t.ok(during.ms < 2000, `a post without Redis is not held up (${during.ms} ms)`)
  t.match(during.value.json(), { message: { seq: 3 }, reply: { seq: 4, content: echo('during the outage') } })

  const streamed = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'streamed during the outage' })
  t.equal(streamed.status, 200)
  t.same(streamed.events.map((e) => e.event).filter((n) => n !== 'delta'), ['message', 'agent', 'done'])
  t.match(data(streamed.events.at(-1)), { seq: 6, content: echo('streamed during the outage') })

  const expectedDuring = conversation('before the outage', 'during the outage', 'streamed during the outage')
  t.same(shape(await history(app, id)), expectedDuring, 'history from PostgreSQL while Redis is away')
  t.same(shape(await history(app, id, 'after=2&limit=2')), expectedDuring.slice(2, 4), 'pagination too')
  t.equal(await messageCount(app, id), 6)

  await proxy.restore()
  t.ok(await eventually(() => app.cache.state() === 'ok', 10_000), 'the cache reconnects by itself')
  // The entries cached before the outage (2 messages) must not come back.
  t.same(shape(await history(app, id)), expectedDuring, 'after the restore: the messages posted during the outage are there')
  t.equal(await messageCount(app, id), 6, 'after the restore: the session record is current')
  const page = (await app.inject(`/v1/sessions/${id}/messages?limit=2`)).json()
  t.equal(page.nextCursor, 2, 'after the restore: pagination knows there is more')

  const after = await post(app, id, 'after the outage')
  t.equal(after.statusCode, 201)
  t.match(after.json(), { message: { seq: 7 }, reply: { seq: 8 } })
  const expectedAfter = conversation('before the outage', 'during the outage', 'streamed during the outage', 'after the outage')
  t.same(shape(await history(app, id)), expectedAfter)
  t.same(shape(await history(app, id)), expectedAfter, 'read twice (from the cache the second time): the same')
  t.equal(await messageCount(app, id), 8)
})

t.test('Redis blackholed: posts complete quickly (command timeout) and reads stay correct', { skip: redisUnavailable() }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL: proxy.rewrite(REDIS_URL as string), REDIS_COMMAND_TIMEOUT_MS: '200', REDIS_CONNECT_TIMEOUT_MS: '500' }))
  await app.ready()
  t.ok(await eventually(() => app.cache.state() === 'ok', 5000))
  const id = await createSession(app)
  t.equal((await post(app, id, 'one')).statusCode, 201)
  t.same(shape(await history(app, id)), conversation('one'))

  await proxy.blackhole()
  for (const content of ['two', 'three']) {
    const res = await timed(() => post(app, id, content))
    t.equal(res.value.statusCode, 201, res.value.body)
    t.ok(res.ms < 1500, `a post with Redis blackholed takes ${res.ms} ms`)
  }
  const read = await timed(() => history(app, id))
  t.same(shape(read.value), conversation('one', 'two', 'three'))
  t.ok(read.ms < 1000, `a history read takes ${read.ms} ms`)
  t.equal(await messageCount(app, id), 6)

  await proxy.restore()
  t.ok(await eventually(() => app.cache.state() === 'ok', 10_000), 'back')
  t.same(shape(await history(app, id)), conversation('one', 'two', 'three'), 'not stale after the restore')
  t.equal(await messageCount(app, id), 6)
  t.equal((await post(app, id, 'four')).statusCode, 201)
  t.same(shape(await history(app, id)), conversation('one', 'two', 'three', 'four'))
})

t.test('Redis hung on a live connection: posts still complete within a bounded time', { skip: redisUnavailable() }, async (t) => {
  const proxy = await freezableProxy(t, REDIS_URL as string)
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL: proxy.url, REDIS_COMMAND_TIMEOUT_MS: '200' }))
  await app.ready()
  t.ok(await eventually(() => app.cache.state() === 'ok', 5000))
  const id = await createSession(app)
  t.equal((await post(app, id, 'warm')).statusCode, 201)

  proxy.freeze()
  const res = await timed(() => post(app, id, 'while Redis hangs'))
  t.equal(res.value.statusCode, 201, res.value.body)
  // Every cache call of the path may pay the 200 ms command timeout, but none can hang the request.
  t.ok(res.ms < 3000, `a post with Redis hung takes ${res.ms} ms (REDIS_COMMAND_TIMEOUT_MS 200)`)
  const read = await timed(() => history(app, id))
  t.same(shape(read.value), conversation('warm', 'while Redis hangs'), 'the history is complete')
  t.ok(read.ms < 1500, `a history read takes ${read.ms} ms`)

  proxy.thaw()
  // Whatever the hung commands did once released, the reads are current.
  t.ok(await eventually(async () => (await history(app, id)).length === 4 && (await messageCount(app, id)) === 4, 5000), 'current after the thaw')
  t.equal((await post(app, id, 'after')).statusCode, 201)
  t.same(shape(await history(app, id)), conversation('warm', 'while Redis hangs', 'after'))
  t.equal(await messageCount(app, id), 6)
})

/** Makes the test's database refuse connections, as an unreachable PostgreSQL would, until `allow()`. */
async function databaseSwitch (t: Test, databaseUrl: string): Promise<{ refuse(): Promise<void>; allow(): Promise<void> }> {
  const name = new URL(databaseUrl).pathname.slice(1)
  if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`unexpected database name ${name}`)
  const admin = new pg.Client({ connectionString: withDatabase(databaseUrl, 'postgres') })
  await admin.connect()
  let refused = false
  const allow = async () => {
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`)
    refused = false
  }
  t.teardown(async () => {
    if (refused) await allow().catch(() => undefined)
    await admin.end()
  })
  return {
    async refuse () {
      refused = true
      await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`)
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name])
    },
    allow
  }
}

t.test('PostgreSQL unreachable: writes answer 503 DATABASE_UNAVAILABLE quickly, never 500, and work again after', async (t) => {
  const env = await testEnv(t, { REDIS_URL, DB_CONNECT_TIMEOUT_MS: '1000', DB_QUERY_TIMEOUT_MS: '2000' })
  const { app, base } = await startListening(t, env)
  const db = await databaseSwitch(t, env.DATABASE_URL as string)
  const id = await createSession(app)
  t.equal((await post(app, id, 'before')).statusCode, 201)

  await db.refuse()
  // Let the pool see its connections go first. (A request that takes one of them in the same instant
  // hits the crash that the test "a connection lost in the middle of a transaction" shows.)
  t.ok(await eventually(() => app.pg.pool.idleCount === 0, 5000, 20), 'the pool dropped its terminated connections')

  const assert503 = (name: string, res: LightMyRequestResponse, ms: number) => {
    t.equal(res.statusCode, 503, `${name}: 503 (${res.body.slice(0, 200)})`)
    t.match(res.json(), { statusCode: 503, error: 'Service Unavailable', code: 'DATABASE_UNAVAILABLE' }, `${name}: the error body`)
    t.ok(res.headers['retry-after'], `${name}: Retry-After`)
    t.notMatch(res.body, /SELECT|INSERT|UPDATE|ECONN|at .+\.js/, `${name}: no SQL, no internals`)
    t.ok(ms < 4000, `${name}: answered in ${ms} ms`)
  }
  const create = await timed(() => app.inject({ method: 'POST', url: '/v1/sessions', payload: {} }))
  assert503('POST /v1/sessions', create.value, create.ms)
  for (const content of ['during 1', 'during 2']) {
    const res = await timed(() => post(app, id, content))
    assert503(`POST messages "${content}"`, res.value, res.ms)
  }
  const streamed = await timed(() => sse(`${base}/v1/sessions/${id}/messages`, { content: 'during, streamed' }, { timeoutMs: 8000 }))
  t.equal(streamed.value.status, 503, 'SSE: the stream never opened, a plain 503')
  t.match(JSON.parse(streamed.value.text || '{}'), { code: 'DATABASE_UNAVAILABLE' })
  t.ok(streamed.ms < 4000, `SSE: answered in ${streamed.ms} ms`)

  // Reads may come from the cache or fail with a 503, never a 500 nor a wrong answer.
  const read = await timed(() => app.inject(`/v1/sessions/${id}/messages`))
  t.ok(read.value.statusCode === 200 || read.value.statusCode === 503, `GET messages: 200 or 503 (${read.value.statusCode})`)
  if (read.value.statusCode === 200) t.same(shape(read.value.json().messages), conversation('before'))
  t.ok(read.ms < 4000, `GET messages answered in ${read.ms} ms`)

  await db.allow()
  t.ok(await eventually(async () => (await app.inject({ method: 'POST', url: '/v1/sessions', payload: {} })).statusCode === 201, 10_000), 'sessions can be created again')
  const after = await post(app, id, 'after')
  t.equal(after.statusCode, 201, `the session is not left busy or broken: ${after.body.slice(0, 200)}`)
  t.match(after.json(), { message: { seq: 3, content: 'after' }, reply: { seq: 4 } })
  t.same(shape(await history(app, id)), conversation('before', 'after'), 'nothing of the refused posts was stored')
  t.equal(await messageCount(app, id), 4)
})

t.test('PostgreSQL lost in the middle of a reply: a clear 5xx or error event, and the session recovers', async (t) => {
  const env = await testEnv(t, { REDIS_URL, DB_CONNECT_TIMEOUT_MS: '1000', DB_QUERY_TIMEOUT_MS: '2000', ECHO_TOKEN_DELAY_MS: '40', LLM_TIMEOUT_MS: '5000' })
  const { app, base } = await startListening(t, env)
  const db = await databaseSwitch(t, env.DATABASE_URL as string)
  const id = await createSession(app)
  const content = Array.from({ length: 20 }, (_, i) => `w${i}`).join(' ')

  // The reply is streaming (its user message is stored) when the database goes away.
  let refusing: Promise<void> | undefined
  const streamed = await sse(`${base}/v1/sessions/${id}/messages`, { content }, {
    timeoutMs: 15_000,
    onEvent: (event) => {
      if (event.event === 'delta' && !refusing) refusing = db.refuse()
    }
  })
  await refusing
  t.equal(streamed.status, 200)
  const last = streamed.events.at(-1)
  t.equal(last?.event, 'error', 'the stream ends with an error event, not a done')
  t.match(data(last), { statusCode: 503, code: 'DATABASE_UNAVAILABLE' }, 'the error event says the database is unavailable')
  t.notOk(streamed.events.some((e) => e.event === 'done'), 'no done for a reply that was not stored')

  await db.allow()
  t.ok(await eventually(async () => (await app.inject(`/v1/sessions/${id}`)).statusCode === 200, 10_000), 'the database is back')
  // The user message was stored before the outage; the session must take new messages again, at
  // the latest once the reply's lease has run out (LLM_TIMEOUT_MS + 5 s).
  let res: LightMyRequestResponse | undefined
  t.ok(
    await eventually(async () => {
      res = await post(app, id, 'after the outage')
      return res.statusCode === 201
    }, 15_000, 250),
    `the session takes messages again (last answer ${res?.statusCode})`
  )
  const stored = await history(app, id)
  t.same(stored.map((m) => m.seq), Array.from({ length: stored.length }, (_, i) => i + 1), 'seqs stay gap-free')
  t.equal(stored[0]?.content, content, 'the user message of the interrupted reply is kept')
  t.equal(stored.at(-1)?.content, echo('after the outage'))
})

t.test('an Idempotency-Key retry after a reply that could not be stored does not store the message twice', async (t) => {
  const env = await testEnv(t, { REDIS_URL, DB_CONNECT_TIMEOUT_MS: '1000', DB_QUERY_TIMEOUT_MS: '2000', ECHO_TOKEN_DELAY_MS: '30', LLM_TIMEOUT_MS: '2000' })
  const app = await buildTestApp(t, env)
  await app.ready()
  const db = await databaseSwitch(t, env.DATABASE_URL as string)
  const id = await createSession(app)
  const content = Array.from({ length: 40 }, (_, i) => `v${i}`).join(' ')
  const headers = { 'idempotency-key': 'outage-retry-1', 'content-type': 'application/json' }
  const send = () => app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, headers, payload: JSON.stringify({ content }) })

  // The user message is committed, the model is answering... and the database goes away before the
  // reply can be stored.
  const first = send()
  t.ok(await eventually(async () => (await history(app, id)).length === 1, 5000), 'the user message is stored')
  await db.refuse()
  const failed = await first
  t.equal(failed.statusCode, 503, `the post fails cleanly (${failed.body.slice(0, 200)})`)
  t.equal(failed.json().code, 'DATABASE_UNAVAILABLE')
  await db.allow()
  t.ok(await eventually(async () => (await app.inject(`/v1/sessions/${id}`)).statusCode === 200, 10_000), 'the database is back')

  // The client retries with the same key, as Idempotency-Key invites it to.
  const retry = await timed(send)
  t.ok([201, 409, 502, 503, 504].includes(retry.value.statusCode), `the retry answers (${retry.value.statusCode} after ${retry.ms} ms)`)
  // The first attempt has ended (it answered 503): nothing is left to wait for.
  t.ok(retry.ms < 5000, `the retry does not wait for the dead attempt's claim to age out (${retry.ms} ms; LLM_TIMEOUT_MS + 10 s = 12 s here, 70 s by default)`)
  const stored = await history(app, id)
  const copies = stored.filter((m) => m.role === 'user' && m.content === content)
  t.equal(copies.length, 1, `the user message is stored once, not once per attempt (${copies.length} copies)`)
  if (retry.value.statusCode === 201) {
    t.equal(retry.value.json().message.id, copies[0]?.id, 'the retry answers for the message stored by the first attempt')
  }
})

// Last in the file: were the bug back, the uncaught exception would end the test abruptly, and its
// aftermath would land in whatever test came next.
t.test('a database connection lost in the middle of a transaction fails that request, not the process', async (t) => {
  const env = await testEnv(t)
  const app = await buildTestApp(t, env)
  await app.ready()
  const name = new URL(env.DATABASE_URL as string).pathname.slice(1)
  const admin = new pg.Client({ connectionString: withDatabase(env.DATABASE_URL as string, 'postgres') })
  await admin.connect()
  t.teardown(() => admin.end())
  const uncaught: Error[] = []
  const onUncaught = (err: Error) => uncaught.push(err)
  process.on('uncaughtException', onUncaught)
  t.teardown(() => process.off('uncaughtException', onUncaught))

  // A transaction between two statements (a PostgreSQL restart, a failover or a proxy timeout would
  // cut it the same way): its connection is terminated under it.
  const client = await app.pg.pool.connect()
  await client.query('BEGIN')
  await client.query('SELECT 1')
  const { rows } = await admin.query(
    'SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE datname = $1 AND state = \'idle in transaction\'',
    [name]
  )
  t.ok(rows.length >= 1, 'the connection was killed in the middle of its transaction')
  await new Promise((resolve) => setTimeout(resolve, 300))
  await t.rejects(client.query('SELECT 2'), 'the next statement of that transaction fails')
  client.release(true)
  t.same(uncaught, [], 'no uncaught exception: the process lives on')

  t.equal((await app.inject('/')).statusCode, 200, 'the process is still serving')
  const id = await createSession(app)
  const after = await post(app, id, 'after')
  t.equal(after.statusCode, 201, 'and the pool has healthy connections again')
})
