import t from 'tap'
import { eventually, redisUnavailable } from '../helper.js'
import { ManualClock } from '../support/manual-clock.js'
import { startServerProcess } from '../support/server-process.js'
import { baseOf, createSession, limitsEnv, openEventStream, post, redisClient, refusals, replica } from './support.js'
import { STREAM_LEASE_MS } from '../../src/limits/stream-slots.js'

// Open streams per tenant (issue 13): SSE replies and event streams together, counted across
// replicas in Redis, released when a stream ends for any reason, a crashed replica's included.

t.test('event streams and SSE replies share the tenant\'s count across two replicas, released on disconnect', { skip: redisUnavailable() }, async (t) => {
  const { env } = await limitsEnv(t, { MAX_STREAMS_PER_TENANT: '2' })
  const [a, b] = [await replica(t, env), await replica(t, env)]
  const [baseA, baseB] = [await baseOf(a), await baseOf(b)]
  const first = await openEventStream(t, baseA, 'acme')
  const second = await openEventStream(t, baseB, 'acme')
  t.same([first.status, second.status], [200, 200])

  const third = await openEventStream(t, baseA, 'acme')
  t.equal(third.status, 429, 'a third stream, on either replica, is refused')
  t.match(JSON.parse(third.body), { statusCode: 429, error: 'Too Many Requests', code: 'TOO_MANY_STREAMS', message: /2 open at once/ })
  const id = await createSession(b, 'acme')
  const reply = await post(b, 'acme', id, 'stream me', { accept: 'text/event-stream' })
  t.equal(reply.statusCode, 429, 'an SSE reply is a stream too')
  t.equal(reply.json().code, 'TOO_MANY_STREAMS')
  t.equal(reply.headers['ratelimit-limit'], '2')
  t.equal(reply.headers['ratelimit-remaining'], '0')
  t.ok(Number(reply.headers['retry-after']) >= 1)
  const json = await post(b, 'acme', id, 'no stream')
  t.equal(json.statusCode, 201, 'a JSON reply is not a stream')
  t.equal((await openEventStream(t, baseB, 'globex')).status, 200, 'another tenant has its own count')
  t.equal(await refusals(a, 'streams') + await refusals(b, 'streams'), 2)

  first.close()
  t.ok(await eventually(async () => (await post(a, 'acme', id, 'now', { accept: 'text/event-stream' })).statusCode === 200, 5000), 'a disconnected client frees its slot')
  // The SSE replies just made ended: each released its slot as it finished.
  const redis = redisClient(t, env)
  t.equal(await redis.zcard('limits:streams:acme'), 1, 'only the second event stream is still open')
  second.close()
  t.ok(await eventually(async () => await redis.zcard('limits:streams:acme') === 0, 5000))
})

t.test('a killed replica\'s streams stop counting once their lease ends', { skip: redisUnavailable() }, async (t) => {
  const { env } = await limitsEnv(t, { MAX_STREAMS_PER_TENANT: '1' })
  const clock = new ManualClock()
  const survivor = await replica(t, env, clock)
  const doomed = await startServerProcess({ ...env, LOG_LEVEL: 'warn' })
  t.teardown(() => { doomed.child.kill('SIGKILL') })
  const stream = await openEventStream(t, doomed.apiUrl, 'acme')
  t.equal(stream.status, 200)
  const base = await baseOf(survivor)
  t.equal((await openEventStream(t, base, 'acme')).status, 429, 'the other replica\'s stream counts')

  doomed.child.kill('SIGKILL')
  await doomed.exited
  const redis = redisClient(t, env)
  t.equal(await redis.zcard('limits:streams:acme'), 1, 'nobody released it')
  t.equal((await openEventStream(t, base, 'acme')).status, 429, 'still counted while its lease runs')
  // The dead replica leased on the real clock: move this one's past the end of that lease.
  clock.advance(Date.now() - clock.now() + STREAM_LEASE_MS + 1000)
  t.equal((await openEventStream(t, base, 'acme')).status, 200, 'its lease ended: the slot is free')
})

t.test('the streams a replica holds renew their leases', { skip: redisUnavailable() }, async (t) => {
  const { env } = await limitsEnv(t, { MAX_STREAMS_PER_TENANT: '1' })
  const clock = new ManualClock()
  const [a, b] = [await replica(t, env, clock), await replica(t, env, clock)]
  t.equal((await openEventStream(t, await baseOf(a), 'acme')).status, 200)
  const redis = redisClient(t, env)
  const leaseEnd = async () => Number((await redis.zrange('limits:streams:acme', '0', '-1', 'WITHSCORES'))[1])
  const before = await leaseEnd()
  for (let i = 0; i < 6; i++) clock.advance(10_000)
  t.ok(await eventually(async () => await leaseEnd() > before + 50_000, 5000), 'renewed every heartbeat')
  t.equal((await openEventStream(t, await baseOf(b), 'acme')).status, 429, 'a minute later the open stream still counts')
})
