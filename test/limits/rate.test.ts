import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { redisUnavailable, tempDir } from '../helper.js'
import { auth, createSession, limitsEnv, post, redisClient, refusals, replica, storedMessages } from './support.js'

// Request and message rates per tenant, counted in the shared Redis: two replicas together admit
// exactly the limit, whatever replica each request reaches (issue 13).

t.test('2N requests over two replicas admit exactly N; the other tenant is unaffected; the window resets', { skip: redisUnavailable() }, async (t) => {
  const { env } = await limitsEnv(t, { RATE_LIMIT_PER_MINUTE: '10' })
  const [a, b] = [await replica(t, env), await replica(t, env)]
  const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).inject({ url: '/v1/agents', headers: auth('acme') })))
  const admitted = replies.filter((r) => r.statusCode === 200)
  const refused = replies.filter((r) => r.statusCode === 429)
  t.equal(admitted.length, 10, 'exactly the limit is admitted across the two replicas')
  t.equal(refused.length, 10)
  const ok = admitted[0]!
  t.equal(ok.headers['ratelimit-limit'], '10')
  t.ok(Number(ok.headers['ratelimit-remaining']) >= 0 && Number(ok.headers['ratelimit-remaining']) < 10)
  t.ok(Number(ok.headers['ratelimit-reset']) > 0 && Number(ok.headers['ratelimit-reset']) <= 60)
  const no = refused[0]!
  t.match(no.json(), { statusCode: 429, error: 'Too Many Requests', code: 'RATE_LIMITED', message: /10 requests per minute/ })
  t.equal(no.headers['ratelimit-limit'], '10')
  t.equal(no.headers['ratelimit-remaining'], '0')
  const retryAfter = Number(no.headers['retry-after'])
  t.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`)
  t.equal(no.headers['ratelimit-reset'], no.headers['retry-after'])
  t.equal(await refusals(a, 'rate') + await refusals(b, 'rate'), 10, 'every refusal is counted by the replica that made it')

  const other = await b.inject({ url: '/v1/agents', headers: auth('globex') })
  t.equal(other.statusCode, 200, 'another tenant has its own count')
  t.equal(other.headers['ratelimit-remaining'], '9')

  // The window is Redis's: end it by ageing the key, as a minute passing would.
  const redis = redisClient(t, env)
  t.equal(await redis.pexpire('limits:rate:acme', 1), 1, 'the count is the tenant\'s key in Redis')
  await new Promise((resolve) => setTimeout(resolve, 20))
  const again = await a.inject({ url: '/v1/agents', headers: auth('acme') })
  t.equal(again.statusCode, 200, 'a new window admits again')
  t.equal(again.headers['ratelimit-remaining'], '9')
})

t.test('an unauthenticated request is a 401, not counted against anyone', { skip: redisUnavailable() }, async (t) => {
  const { env } = await limitsEnv(t, { RATE_LIMIT_PER_MINUTE: '1' })
  const app = await replica(t, env)
  for (let i = 0; i < 3; i++) t.equal((await app.inject({ url: '/v1/agents' })).statusCode, 401)
  t.equal((await app.inject({ url: '/v1/agents', headers: auth('acme') })).statusCode, 200)
  t.equal((await app.inject({ url: '/' })).statusCode, 200, 'GET / is outside /v1: never limited')
  t.equal((await app.inject({ url: '/' })).headers['ratelimit-limit'], undefined)
})

t.test('message rate: a refused post stores nothing and calls no provider', { skip: redisUnavailable() }, async (t) => {
  const { env, stub } = await limitsEnv(t, { MESSAGE_RATE_PER_MINUTE: '3' })
  const [a, b] = [await replica(t, env), await replica(t, env)]
  const sessions = [await createSession(a, 'acme'), await createSession(b, 'acme')]
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) statuses.push((await post(i % 2 ? a : b, 'acme', sessions[i % 2]!)).statusCode)
  t.same(statuses, [201, 201, 201])
  const before = [await storedMessages(a, sessions[0]!), await storedMessages(a, sessions[1]!)]
  const calls = stub.chatRequests().length

  const refused = await post(a, 'acme', sessions[0]!)
  t.equal(refused.statusCode, 429)
  t.match(refused.json(), { code: 'RATE_LIMITED', message: /3 messages per minute/ })
  t.equal(refused.headers['ratelimit-limit'], '3')
  t.equal(refused.headers['ratelimit-remaining'], '0')
  t.ok(Number(refused.headers['retry-after']) >= 1)
  const sse = await post(b, 'acme', sessions[1]!, 'hi', { accept: 'text/event-stream' })
  t.equal(sse.statusCode, 429, 'an SSE post is refused with a status, before any stream opens')
  t.match(sse.headers['content-type'], /application\/json/)
  t.same([await storedMessages(a, sessions[0]!), await storedMessages(a, sessions[1]!)], before, 'nothing stored')
  t.equal(stub.chatRequests().length, calls, 'no provider called')
  t.equal(await refusals(a, 'messages') + await refusals(b, 'messages'), 2)
  t.equal(await refusals(a, 'rate'), 0, 'the request rate is unlimited here')

  // Other requests are not messages, and another tenant posts as it likes.
  t.equal((await a.inject({ url: `/v1/sessions/${sessions[0]}/messages`, headers: auth('acme') })).statusCode, 200)
  const globex = await createSession(a, 'globex')
  t.equal((await post(b, 'globex', globex)).statusCode, 201)
})

t.test('TENANTS_FILE overrides: a tenant of its own, unlimited or tighter', { skip: redisUnavailable() }, async (t) => {
  const file = join(await tempDir(t), 'tenants.yaml')
  await writeFile(file, 'tenants:\n  acme:\n    rateLimitPerMinute: 2\n  globex:\n    rateLimitPerMinute: 0\n')
  const { env } = await limitsEnv(t, { RATE_LIMIT_PER_MINUTE: '5', TENANTS_FILE: file })
  const app = await replica(t, env)
  const acme = []
  const globex = []
  for (let i = 0; i < 6; i++) {
    acme.push((await app.inject({ url: '/v1/agents', headers: auth('acme') })).statusCode)
    globex.push((await app.inject({ url: '/v1/agents', headers: auth('globex') })).statusCode)
  }
  t.same(acme, [200, 200, 429, 429, 429, 429], 'acme: its override of 2')
  t.same(globex, [200, 200, 200, 200, 200, 200], 'globex: 0 is unlimited')
})

t.test('a group round is one message, however many agents answer in it; its replies all count as usage', { skip: redisUnavailable() }, async (t) => {
  const { env, stub } = await limitsEnv(t, { MESSAGE_RATE_PER_MINUTE: '2' })
  stub.setDefault({ text: 'my turn', usage: { inputTokens: 4, outputTokens: 2 } })
  const app = await replica(t, env)
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth('acme'), payload: { agents: ['assistant', 'writer'], mode: 'group' } })
  t.equal(created.statusCode, 201)
  const id = created.json().id
  t.equal((await post(app, 'acme', id)).statusCode, 201, 'round 1')
  t.equal((await post(app, 'acme', id)).statusCode, 201, 'round 2')
  t.equal(stub.chatRequests().length, 4, 'two agents answered in each round')
  t.equal((await post(app, 'acme', id)).statusCode, 429, 'the third round is over 2 messages per minute')
  const usage = (await app.inject({ url: '/v1/usage?groupBy=agent', headers: auth('acme') })).json()
  t.same(usage.totals, { inputTokens: 16, outputTokens: 8, replies: 4 })
  t.same(usage.rows.map((row: { key: string }) => row.key), ['assistant', 'writer'])
})

t.test('the OpenAI-compatible route counts as a message post: refused with OpenAI\'s 429 shape, before any provider call', { skip: redisUnavailable() }, async (t) => {
  const { env, stub } = await limitsEnv(t, { MESSAGE_RATE_PER_MINUTE: '1', MAX_STREAMS_PER_TENANT: '1' })
  const app = await replica(t, env)
  const complete = (stream: boolean) => app.inject({
    method: 'POST',
    url: '/v1/chat/completions',
    headers: { ...auth('acme'), accept: 'text/event-stream' },
    payload: { model: 'assistant', stream, messages: [{ role: 'user', content: 'hi' }] }
  })
  t.equal((await complete(true)).statusCode, 200, 'a stream, holding one slot (not two: its Accept asks for a stream too)')
  const calls = stub.chatRequests().length
  const refused = await complete(false)
  t.equal(refused.statusCode, 429)
  t.match(refused.json(), { error: { type: 'rate_limit_error', code: 'rate_limited' } })
  t.ok(Number(refused.headers['retry-after']) >= 1)
  t.equal(stub.chatRequests().length, calls, 'no provider called')
  t.equal(await refusals(app, 'messages'), 1)
  t.equal(await refusals(app, 'streams'), 0)
})
