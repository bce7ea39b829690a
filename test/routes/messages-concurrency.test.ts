import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Registry } from 'prom-client'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildService, buildTestApp, eventually, redisUnavailable, testEnv } from '../helper.js'

// Races on the message path: many posts to one session (one reply at a time, seq gap-free), on one
// replica and on two sharing PostgreSQL and Redis; concurrent retries with one Idempotency-Key.

const echo = (content: string, model = 'gpt-4o-mini') => `Echo (${model}): ${content}`

interface Message {
  id: string
  seq: number
  role: 'user' | 'assistant'
  content: string
  agent?: string
}

function post (app: FastifyInstance, id: string, body: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, headers, payload: body as Record<string, unknown> })
}

async function createSession (app: FastifyInstance, headers: Record<string, string> = {}): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers, payload: { agents: ['assistant'] } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

async function messages (app: FastifyInstance, id: string, headers: Record<string, string> = {}): Promise<Message[]> {
  const all: Message[] = []
  let after = 0
  for (let page = 0; page < 20; page++) {
    const res = await app.inject({ url: `/v1/sessions/${id}/messages?after=${after}&limit=200`, headers })
    if (res.statusCode !== 200) throw new Error(`history: ${res.statusCode} ${res.body}`)
    const body = res.json() as { messages: Message[]; nextCursor: number | null }
    all.push(...body.messages)
    if (body.nextCursor === null) return all
    after = body.nextCursor
  }
  throw new Error('history: too many pages')
}

async function counter (registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const metric = registry.getSingleMetric(name)
  if (!metric) throw new Error(`no metric ${name}`)
  const { values } = await metric.get()
  return values
    .filter((v) => Object.entries(labels).every(([k, value]) => (v.labels as Record<string, unknown>)[k] === value))
    .reduce((sum, v) => sum + v.value, 0)
}

/**
 * Waits (bounded) until the apps stop shedding load. @fastify/under-pressure, as src/app.ts registers
 * it, measures event-loop utilisation cumulatively since start-up, so right after booting two apps
 * in one process every request can be a 503 OVERLOADED for a moment (reported as a bug).
 */
async function settle (t: Test, ...apps: FastifyInstance[]): Promise<void> {
  const pressured = () => apps.some((app) => (app as unknown as { isUnderPressure(): boolean }).isUnderPressure())
  await sleep(1100) // the first sample is taken one second (sampleInterval) after start-up
  t.ok(await eventually(() => !pressured(), 10_000, 50), 'the apps are not shedding load')
}

/** Checks the stored history of a session that received `k` answered posts: seqs 1..2k, user/assistant pairs. */
function assertPairs (t: Test, stored: Message[], answered: Array<{ message: Message; reply: Message }>): void {
  const k = answered.length
  t.same(stored.map((m) => m.seq), Array.from({ length: 2 * k }, (_, i) => i + 1), `seqs are exactly 1..${2 * k}: no gap, no duplicate`)
  t.ok(stored.every((m, i) => m.role === (i % 2 === 0 ? 'user' : 'assistant')), 'user and assistant alternate, in pairs')
  t.ok(
    stored.every((m, i) => m.role === 'user' || m.content === echo((stored[i - 1] as Message).content)),
    'each reply answers the user message just before it'
  )
  const byId = new Map(stored.map((m) => [m.id, m]))
  t.ok(
    answered.every(({ message, reply }) => byId.get(message.id)?.seq === message.seq && byId.get(reply.id)?.seq === reply.seq && reply.seq === message.seq + 1),
    'every 201 names rows that are stored, reply right after its message'
  )
}

t.test('N concurrent posts to one session: 201 or 409, seqs gap-free and paired, counts consistent', async (t) => {
  const { app, registry } = await buildService(t, await testEnv(t, { REDIS_URL }))
  await settle(t, app)
  const id = await createSession(app)

  const answered: Array<{ message: Message; reply: Message }> = []
  let refused = 0
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => post(app, id, { content: `round ${round} post ${i}` })))
    for (const res of results) {
      if (res.statusCode === 201) answered.push(res.json())
      else {
        t.equal(res.statusCode, 409, `201 or 409, got ${res.statusCode}: ${res.body.slice(0, 200)}`)
        t.equal(res.json().code, 'SESSION_BUSY')
        t.ok(Number(res.headers['retry-after']) >= 1, 'Retry-After')
        refused++
      }
    }
    t.ok(results.some((r) => r.statusCode === 201), `round ${round}: one post got through`)
  }
  t.equal(answered.length + refused, 36)

  const stored = await messages(app, id)
  assertPairs(t, stored, answered)
  const k = answered.length
  t.equal((await app.inject(`/v1/sessions/${id}`)).json().messageCount, 2 * k, 'messageCount = 2k')
  t.equal(await counter(registry, 'smalltalk_messages_total', { role: 'user' }), k, 'user messages counted once each')
  t.equal(await counter(registry, 'smalltalk_messages_total', { role: 'assistant' }), k)
  t.equal(await counter(registry, 'smalltalk_conflicts_total', { kind: 'busy' }), refused, 'every 409 counted as busy')
  const { rows } = await app.pg.pool.query<{ n: number; lease: Date | null }>(
    'SELECT (SELECT count(*)::int FROM chat_messages WHERE session_id = $1) AS n, (SELECT reply_lease_until FROM sessions WHERE id = $1) AS lease',
    [id]
  )
  t.equal(rows[0]?.n, 2 * k, 'no orphan rows')
  t.equal(rows[0]?.lease, null, 'no lease left behind')
})

/**
 * Workers that post to one session until each got `perWorker` replies, backing off on 409: replies
 * follow each other as closely as possible, the hardest case for the lease and the cache.
 */
async function hammer (t: Test, apps: FastifyInstance[], id: string, workers: number, perWorker: number, deadlineMs: number) {
  const answered: Array<{ message: Message; reply: Message }> = []
  let refused = 0
  const unexpected: string[] = []
  const deadline = Date.now() + deadlineMs
  await Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      let done = 0
      for (let attempt = 0; done < perWorker && Date.now() < deadline; attempt++) {
        const app = apps[(w + attempt) % apps.length] as FastifyInstance
        const res = await post(app, id, { content: `worker ${w} message ${done} attempt ${attempt}` })
        if (res.statusCode === 201) {
          answered.push(res.json())
          done++
        } else if (res.statusCode === 409 && res.json().code === 'SESSION_BUSY') {
          refused++
          await sleep(1 + Math.floor(Math.random() * 8))
        } else {
          unexpected.push(`${res.statusCode} ${res.body.slice(0, 200)}`)
          return
        }
      }
    })
  )
  t.same(unexpected, [], 'only 201 and 409 SESSION_BUSY')
  t.equal(answered.length, workers * perWorker, `every worker got its ${perWorker} replies before the deadline (${refused} refusals on the way)`)
  return { answered, refused }
}

t.test('posts that follow each other as fast as they can: seqs gap-free, history and count never stale', async (t) => {
  const { app, registry } = await buildService(t, await testEnv(t, { REDIS_URL }))
  await settle(t, app)
  const id = await createSession(app)
  const { answered, refused } = await hammer(t, [app], id, 8, 4, 40_000)
  const stored = await messages(app, id)
  assertPairs(t, stored, answered)
  const k = answered.length
  t.equal((await app.inject(`/v1/sessions/${id}`)).json().messageCount, 2 * k, 'messageCount = 2k (the cached record is current)')
  t.equal(await counter(registry, 'smalltalk_messages_total', { role: 'user' }), k)
  t.equal(await counter(registry, 'smalltalk_messages_total', { role: 'assistant' }), k)
  t.equal(await counter(registry, 'smalltalk_conflicts_total', { kind: 'busy' }), refused)
  // The next reply's context is the real history (the echo answers the newest user message).
  const last = await post(app, id, { content: 'the very last one' })
  t.equal(last.statusCode, 201)
  t.match(last.json(), { message: { seq: 2 * k + 1 }, reply: { seq: 2 * k + 2, content: echo('the very last one') } })
})

t.test('two replicas sharing PostgreSQL and Redis: one reply at a time per session, across both', { skip: redisUnavailable() }, async (t) => {
  const env: Environment = await testEnv(t, { REDIS_URL })
  const first = await buildTestApp(t, env)
  const second = await buildTestApp(t, env)
  await Promise.all([first.ready(), second.ready()])
  await settle(t, first, second)
  const id = await createSession(first)

  const { answered } = await hammer(t, [first, second], id, 8, 3, 40_000)
  const k = answered.length
  for (const [name, app] of [['first', first], ['second', second]] as const) {
    const stored = await messages(app, id)
    t.equal(stored.length, 2 * k, `${name} replica reads the whole history`)
    assertPairs(t, stored, answered)
    t.equal((await app.inject(`/v1/sessions/${id}`)).json().messageCount, 2 * k, `${name} replica: messageCount = 2k`)
  }
})

t.test('concurrent identical posts with one Idempotency-Key: one reply, stored once, every caller gets it', async (t) => {
  const { app, registry } = await buildService(t, await testEnv(t, { REDIS_URL, ECHO_TOKEN_DELAY_MS: '20' }))
  const id = await createSession(app)
  const body = { content: 'one two three four five six seven eight nine ten', metadata: { attempt: 'same' } }
  const headers = { 'idempotency-key': 'race-1' }

  const results = await Promise.all(Array.from({ length: 8 }, () => post(app, id, body, headers)))
  t.same(results.map((r) => r.statusCode), Array(8).fill(201), 'every caller gets the 201')
  const first = results[0]?.json()
  t.ok(results.every((r) => JSON.stringify(r.json()) === JSON.stringify(first)), 'the same message and reply ids for all')
  t.equal(results.filter((r) => r.headers['idempotent-replayed'] === 'true').length, 7, 'all but one are replays')
  t.equal(first.reply.content, echo(body.content))

  const stored = await messages(app, id)
  t.same(stored.map((m) => [m.seq, m.role, m.id]), [[1, 'user', first.message.id], [2, 'assistant', first.reply.id]], 'one user and one assistant message')
  t.equal((await app.inject(`/v1/sessions/${id}`)).json().messageCount, 2)
  t.equal(await counter(registry, 'smalltalk_idempotent_replays_total'), 7)
  t.equal(await counter(registry, 'smalltalk_messages_total', { role: 'user' }), 1)
  t.equal(await counter(registry, 'smalltalk_conflicts_total', { kind: 'busy' }), 0, 'the retries waited for the outcome, they were not refused as busy')

  // A retry once it is all done: the first result, marked as replayed.
  const retry = await post(app, id, body, headers)
  t.equal(retry.statusCode, 201)
  t.equal(retry.headers['idempotent-replayed'], 'true')
  t.same(retry.json(), first)
  t.equal((await messages(app, id)).length, 2, 'still stored once')
})

t.test('the same Idempotency-Key with another request is a 409 IDEMPOTENCY_KEY_REUSED', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL, ECHO_TOKEN_DELAY_MS: '20' }))
  const id = await createSession(app)
  const other = await createSession(app)
  const headers = { 'idempotency-key': 'reused-1' }
  const words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa'

  // While the first request is still producing its reply...
  const running = post(app, id, { content: words }, headers)
  await sleep(60)
  const during = await post(app, id, { content: 'something else' }, headers)
  t.equal(during.statusCode, 409, during.body)
  t.equal(during.json().code, 'IDEMPOTENCY_KEY_REUSED')
  const firstRes = await running
  t.equal(firstRes.statusCode, 201)

  // ...and after it: another content, another agent, other metadata, another session.
  const variants: Array<[string, string, Record<string, unknown>]> = [
    ['another content', id, { content: 'something else' }],
    ['an agent named', id, { content: words, agent: 'assistant' }],
    ['metadata added', id, { content: words, metadata: { a: 1 } }],
    ['another session', other, { content: words }]
  ]
  for (const [name, session, body] of variants) {
    const res = await post(app, session, body, headers)
    t.equal(res.statusCode, 409, `${name}: 409`)
    t.match(res.json(), { statusCode: 409, error: 'Conflict', code: 'IDEMPOTENCY_KEY_REUSED' })
  }
  t.equal((await messages(app, id)).length, 2, 'the refused requests stored nothing')
  t.equal((await messages(app, other)).length, 0)

  const same = await post(app, id, { content: words }, headers)
  t.equal(same.statusCode, 201)
  t.equal(same.headers['idempotent-replayed'], 'true')
  t.same(same.json(), firstRes.json(), 'the original request still replays its first result')
})

t.test('Idempotency-Keys belong to a tenant: the same key in two tenants are two requests', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL, API_KEYS: 'key-alpha:alpha,key-beta:beta' }))
  const alpha = { authorization: 'Bearer key-alpha' }
  const beta = { authorization: 'Bearer key-beta' }
  const alphaSession = await createSession(app, alpha)
  const betaSession = await createSession(app, beta)
  const body = { content: 'same words, same key' }

  const a = await post(app, alphaSession, body, { ...alpha, 'idempotency-key': 'shared' })
  const b = await post(app, betaSession, body, { ...beta, 'idempotency-key': 'shared' })
  t.equal(a.statusCode, 201)
  t.equal(b.statusCode, 201, b.body)
  t.equal(b.headers['idempotent-replayed'], undefined, 'not a replay of the other tenant\'s request')
  t.not(a.json().message.id, b.json().message.id)
  t.equal((await messages(app, betaSession, beta)).length, 2)

  // Another tenant's session is not found, whatever the key.
  const cross = await post(app, alphaSession, body, { ...beta, 'idempotency-key': 'shared' })
  t.equal(cross.statusCode, 404)
})

/** A loopback TCP proxy that delays everything sent to the server: a replica with a slow path to Redis. */
async function delayingProxy (t: Test, target: string, delayMs: number): Promise<string> {
  const { createServer, connect } = await import('node:net')
  const parsed = new URL(target)
  const [host, port] = [parsed.hostname, Number(parsed.port)]
  const sockets = new Set<import('node:net').Socket>()
  const server = createServer((client) => {
    const upstream = connect(port, host)
    sockets.add(client).add(upstream)
    client.on('data', (chunk) => setTimeout(() => upstream.writable && upstream.write(chunk), delayMs))
    upstream.on('data', (chunk) => client.writable && client.write(chunk))
    for (const socket of [client, upstream]) {
      socket.on('error', () => socket.destroy())
      socket.on('close', () => {
        client.destroy()
        upstream.destroy()
        sockets.delete(socket)
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  const address = server.address() as import('node:net').AddressInfo
  parsed.hostname = '127.0.0.1'
  parsed.port = String(address.port)
  return parsed.toString()
}

t.test('a replica whose cache write lands late never leaves a stale session record behind', { skip: redisUnavailable() }, async (t) => {
  // Replica "slow" reaches Redis through a 300 ms delay (a slow network path, or a GC pause between
  // the commit and the cache write); replica "fast" directly. Both share the database and the keys.
  const env = await testEnv(t, { REDIS_URL })
  const slow = await buildTestApp(t, { ...env, REDIS_URL: await delayingProxy(t, REDIS_URL as string, 300), REDIS_COMMAND_TIMEOUT_MS: '2000', REDIS_CONNECT_TIMEOUT_MS: '5000' })
  const fast = await buildTestApp(t, env)
  await Promise.all([slow.ready(), fast.ready()])
  t.ok(await eventually(() => slow.cache.state() === 'ok' && fast.cache.state() === 'ok', 10_000), 'both replicas reach Redis')
  await settle(t, slow, fast)
  const id = await createSession(fast)

  // The slow replica answers a message; the moment its reply is committed, the fast replica answers the next.
  const slowPost = post(slow, id, { content: 'first, through the slow replica' })
  const committed = await (async () => {
    const deadline = Date.now() + 15_000
    while (Date.now() < deadline) {
      const { rows } = await fast.pg.pool.query('SELECT 1 FROM chat_messages WHERE session_id = $1 AND seq = 2', [id])
      if (rows.length > 0) return true
      await sleep(2)
    }
    return false
  })()
  t.ok(committed, 'the slow replica committed its reply')
  const fastPost = await post(fast, id, { content: 'second, through the fast replica' })
  t.equal(fastPost.statusCode, 201, fastPost.body)
  t.equal((await slowPost).statusCode, 201)
  await sleep(700) // every late write of the slow replica has landed

  const truth = 4
  for (const [name, app] of [['fast', fast], ['slow', slow]] as const) {
    const got = await app.inject(`/v1/sessions/${id}`)
    t.equal(got.statusCode, 200, got.body)
    t.equal(got.json().messageCount, truth, `${name} replica: messageCount is ${truth}`)
    const firstPage = (await app.inject(`/v1/sessions/${id}/messages?limit=2`)).json()
    t.same(firstPage.messages.map((m: Message) => m.seq), [1, 2])
    t.equal(firstPage.nextCursor, 2, `${name} replica: the first page of two says there is more`)
    t.same((await messages(app, id)).map((m) => m.seq), [1, 2, 3, 4], `${name} replica: the whole history`)
  }
})
