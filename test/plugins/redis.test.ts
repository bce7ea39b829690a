import { once } from 'node:events'
import t from 'tap'
import type { RedisCache } from '../../src/cache/redis-cache.js'
import { TcpProxy } from '../support/tcp-proxy.js'
import { REDIS_URL, buildService, buildTestApp, redisUnavailable, testEnv } from '../helper.js'

const skip = redisUnavailable()

t.test('@fastify/redis is the service\'s own client, closed with the app', { skip }, async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { REDIS_URL }))
  await app.ready()
  const client = (app.cache as RedisCache).client
  t.equal(app.redis, client, 'fastify.redis is the cache\'s client, not a second connection')
  await app.redis.set('plugin-check', 'x', 'EX', 30)
  t.equal(await app.cache.get('plugin-check'), 'x', 'under the same key prefix')

  const errors: Error[] = []
  client.on('error', (err: Error) => errors.push(err))
  const ended = once(client, 'end')
  await app.close()
  await ended
  t.equal(client.status, 'end', 'closed with the app')
  t.same(errors, [], 'without an error')
})

t.test('Redis down at start-up: start-up does not wait for it, and there is no fastify.redis', { skip, timeout: 30_000 }, async (t) => {
  const proxy = TcpProxy.forUrl(REDIS_URL as string)
  await proxy.start()
  const url = proxy.rewrite(REDIS_URL as string)
  await proxy.cut()
  t.teardown(() => proxy.close())

  const { app, ops } = await buildService(t, await testEnv(t, { REDIS_URL: url, REDIS_CONNECT_TIMEOUT_MS: '500' }))
  t.equal((await ops.inject('/ready')).statusCode, 200, 'started and ready, degraded')
  t.notOk(app.hasDecorator('redis'), 'no fastify.redis: the cache is the way in')
  t.equal(app.cache.state(), 'degraded')
})
