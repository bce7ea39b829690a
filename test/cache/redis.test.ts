import t from 'tap'
import { Redis } from 'ioredis'
import pino from 'pino'
import { RedisCache } from '../../src/cache/redis-cache.js'
import { TcpProxy } from '../support/tcp-proxy.js'
import { REDIS_URL, buildService, eventually, redisUnavailable, testEnv } from '../helper.js'

// Redis is taken away through a loopback proxy, so the real Redis that other test files share keeps
// running while this service loses it.

const skip = redisUnavailable()
const silent = pino({ level: 'silent' })

t.test('the cache reads and writes through to Redis with TTLs and its key prefix', { skip }, async (t) => {
  const prefix = `test:${process.pid}:rw:`
  const cache = new RedisCache({ url: REDIS_URL as string, keyPrefix: prefix, connectTimeoutMs: 1000, commandTimeoutMs: 500, log: silent })
  await cache.connect()
  t.teardown(() => cache.close())
  const direct = new Redis(REDIS_URL as string)
  t.teardown(() => direct.quit())
  t.equal(cache.state(), 'ok')
  await cache.set('k', 'välue ✓', 30)
  t.equal(await cache.get('k'), 'välue ✓')
  t.equal(await direct.get(prefix + 'k'), 'välue ✓', 'stored under the prefix')
  const ttl = await direct.ttl(prefix + 'k')
  t.ok(ttl > 0 && ttl <= 30, `TTL set (${ttl} s)`)
  await cache.delete('k')
  t.equal(await cache.get('k'), undefined)
  t.ok((await cache.ping(500)) >= 0)
})

t.test('Redis down at start-up: the service starts degraded and recovers by itself', { skip }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  const url = proxy.rewrite(REDIS_URL as string)
  await proxy.cut()
  t.teardown(() => proxy.close())

  const { app, ops } = await buildService(t, await testEnv(t, { REDIS_URL: url, REDIS_CONNECT_TIMEOUT_MS: '500' }))
  const ready = await ops.inject('/ready')
  t.equal(ready.statusCode, 200, 'Redis is a cache: still ready')
  t.match(ready.json(), { ready: true, checks: { postgres: 'ok', redis: 'degraded' } })
  t.match((await ops.inject('/health')).json(), { status: 'degraded', services: { redis: { status: 'degraded' } } })
  t.equal(app.cache.state(), 'degraded')
  t.equal(await app.cache.get('anything'), undefined, 'a read while degraded is a miss')
  await app.cache.set('anything', 'x', 10)
  t.equal((await app.inject('/')).statusCode, 200, 'the API keeps serving')

  await proxy.start(proxy.port)
  t.ok(await eventually(async () => (await ops.inject('/ready')).json().checks.redis === 'ok', 10_000), 'back to ok without a restart')
  await app.cache.set('anything', 'y', 10)
  t.equal(await app.cache.get('anything'), 'y')
})

t.test('Redis lost at run time: degraded, requests never hang, then recovered', { skip }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const { app, ops } = await buildService(t, await testEnv(t, { REDIS_URL: proxy.rewrite(REDIS_URL as string), REDIS_COMMAND_TIMEOUT_MS: '300' }))
  t.equal((await ops.inject('/ready')).json().checks.redis, 'ok')
  await app.cache.set('key', 'value', 60)
  t.equal(await app.cache.get('key'), 'value')

  // A Redis that hangs: commands time out quickly and count as misses.
  await proxy.blackhole()
  const started = Date.now()
  const value = await app.cache.get('key')
  t.equal(value, undefined)
  t.ok(Date.now() - started < 1500, `a hung Redis costs at most the command timeout (${Date.now() - started} ms)`)
  const next = Date.now()
  t.equal(await app.cache.get('key'), undefined)
  await app.cache.set('other', 'x', 60)
  t.ok(Date.now() - next < 300, `after a timeout the cache is bypassed for a while: no call waits for the 300 ms timeout again (${Date.now() - next} ms)`)
  t.equal(app.cache.state(), 'degraded')
  const hungReady = await ops.inject('/ready')
  t.equal(hungReady.statusCode, 200)
  t.equal(hungReady.json().checks.redis, 'degraded')

  // A Redis that is gone: connects refused.
  await proxy.cut()
  t.ok(await eventually(() => app.cache.state() === 'degraded', 5000), 'the cache notices the loss')
  const res = await app.inject('/')
  t.equal(res.statusCode, 200)
  const ready = await ops.inject('/ready')
  t.equal(ready.statusCode, 200)
  t.equal(ready.json().checks.redis, 'degraded')

  await proxy.restore()
  t.ok(await eventually(async () => (await ops.inject('/ready')).json().checks.redis === 'ok', 10_000), 'reconnected by itself')
  t.equal(await app.cache.get('key'), 'value', 'the data held by Redis is still there')
})

t.test('writes that could not reach Redis are repaired when it is back: the newest record put back, deletes done', { skip }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const prefix = `test:${process.pid}:repair:`
  const writer = new RedisCache({ url: proxy.rewrite(REDIS_URL as string), keyPrefix: prefix, connectTimeoutMs: 500, commandTimeoutMs: 300, log: silent })
  // Another replica, whose connection to Redis never breaks.
  const other = new RedisCache({ url: REDIS_URL as string, keyPrefix: prefix, connectTimeoutMs: 500, commandTimeoutMs: 300, log: silent })
  await Promise.all([writer.connect(), other.connect()])
  t.teardown(() => Promise.all([writer.close(), other.close()]))
  await writer.setRanked('record', 'version 1', 60, [0, 1])
  await writer.set('gone', 'x', 60)

  await proxy.cut()
  t.ok(await eventually(() => writer.state() === 'degraded', 5000), 'the writer lost Redis')
  await writer.setRanked('record', 'version 2', 60, [0, 2])
  await writer.delete('gone')
  t.equal(await writer.getRanked('record'), undefined, 'the writer reads neither from the cache meanwhile')

  await proxy.restore()
  t.ok(await eventually(async () => (await other.getRanked('record')) === 'version 2', 10_000), 'once the writer is back, the newest record is in Redis')
  t.equal(await other.get('gone'), undefined, 'and the deleted key is gone')
  // A slow writer's older record, arriving late, does not replace it.
  await other.setRanked('record', 'version 1', 60, [0, 1])
  t.equal(await other.getRanked('record'), 'version 2')
  t.ok(await eventually(async () => (await writer.getRanked('record')) === 'version 2', 5000), 'the writer reads it from the cache again')
})
