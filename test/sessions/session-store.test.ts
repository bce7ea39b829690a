import t from 'tap'
import { REDIS_URL, buildTestApp, eventually, redisUnavailable, testEnv } from '../helper.js'
import { freezableProxy } from '../support/freezable-proxy.js'

// The session store on the real PostgreSQL and Redis: what every replica reads after a change whose
// cache write did not get through.

t.test('Redis hangs while a DELETE commits: no replica is served the old record then or afterwards', { skip: redisUnavailable() }, async (t) => {
  // Two replicas whose connections to Redis hang together (a stalled Redis), still open.
  const proxy = await freezableProxy(t, REDIS_URL as string)
  const env = await testEnv(t, { REDIS_URL: proxy.url, REDIS_COMMAND_TIMEOUT_MS: '200' })
  const [writer, reader] = [await buildTestApp(t, env), await buildTestApp(t, env)]
  await Promise.all([writer.ready(), reader.ready()])
  t.ok(await eventually(() => writer.cache.state() === 'ok' && reader.cache.state() === 'ok', 5000))
  const session = (await writer.inject({ method: 'POST', url: '/v1/sessions' })).json()
  const url = `/v1/sessions/${session.id}`
  t.equal((await reader.inject(url)).statusCode, 200, 'the active record, cached')

  // A read times out (the writer then bypasses the cache for a while), and the DELETE commits in
  // PostgreSQL and answers.
  proxy.freeze()
  t.equal((await writer.inject(url)).statusCode, 200, 'read from PostgreSQL after the cache timed out')
  t.equal((await writer.inject({ method: 'DELETE', url })).statusCode, 204)
  t.equal((await reader.inject(url)).statusCode, 410, 'while Redis hangs, the other replica reads PostgreSQL')
  proxy.thaw()

  // Both bypass the cache until their next successful probe; then they read it again.
  await Promise.all([writer.cache.ping(1000), reader.cache.ping(1000)])
  t.ok(writer.cache.state() === 'ok' && reader.cache.state() === 'ok', 'both use the cache again')
  const afterDelete = await reader.inject(url)
  t.equal(afterDelete.statusCode, 410, 'the other replica reads the session as invalidated')
  t.match(afterDelete.json(), { code: 'SESSION_INVALIDATED' })
  t.equal((await writer.inject(url)).statusCode, 410, 'and so does the writer')
})
