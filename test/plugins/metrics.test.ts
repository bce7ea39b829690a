import t from 'tap'
import { buildService, testEnv } from '../helper.js'

function sample (text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(name + (labels ? `{${labels}}` : ' ')) || (labels && l.startsWith(`${name}{`) && l.includes(labels)))
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : undefined
}

t.test('/metrics on the ops port: process, route and service metrics in Prometheus text format', async (t) => {
  const { app, ops } = await buildService(t, await testEnv(t, { DB_POOL_MAX: '7' }))
  for (let i = 0; i < 3; i++) t.equal((await app.inject('/')).statusCode, 200)
  await app.inject('/no/such/route/123')
  await ops.inject('/ready')
  await ops.inject('/healthz')

  const res = await ops.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/plain; version=0\.0\.4/)
  const text = res.body

  t.equal(sample(text, 'smalltalk_requests_total'), 4, 'api requests counted (ops probes are not)')
  t.ok((sample(text, 'smalltalk_uptime_seconds') ?? 0) > 0)
  t.ok((sample(text, 'smalltalk_memory_usage_bytes') ?? 0) > 1_000_000)
  t.equal(sample(text, 'smalltalk_ready'), 1)
  t.equal(sample(text, 'smalltalk_db_pool_max'), 7)
  t.ok((sample(text, 'smalltalk_db_pool_connections', 'state="total"') ?? -1) >= 1, 'pool usage')
  t.ok((sample(text, 'smalltalk_db_pool_connections', 'state="waiting"') ?? -1) >= 0, 'waiting (the scrape\'s own checks may be connecting)')
  t.ok((sample(text, 'smalltalk_db_migration_version') ?? 0) >= 2)
  t.equal(sample(text, 'smalltalk_cache_up', 'backend="memory"'), 1)
  t.equal(sample(text, 'smalltalk_dependency_up', 'dependency="postgres"'), 1)
  t.notMatch(text, /dependency="redis"/, 'no Redis configured, no Redis series')
  t.equal(sample(text, 'smalltalk_messages_total', 'role="user"'), 0, 'conversation series exist before traffic')
  t.match(text, /process_resident_memory_bytes \d+/)
  t.match(text, /nodejs_eventloop_lag_p99_seconds \d/)

  t.equal(sample(text, 'http_request_duration_seconds_count', 'method="GET",route="/",status_code="200"'), 3, 'route template label')
  t.match(text, /http_request_duration_seconds_count\{method="GET",route="__unknown__",status_code="404"\} 1/, 'unknown routes share one label')
  t.notMatch(text, /no\/such\/route/, 'never a raw URL')
  t.notMatch(text, /route="\/(ready|healthz|metrics)"/, 'ops routes are not timed into the api metrics')
  t.notMatch(text, /http_request_summary_seconds/, 'no per-route summary')
})

t.test('a scrape during start-up already says not ready', async (t) => {
  const { Registry } = await import('prom-client')
  const { Lifecycle } = await import('../../src/lifecycle.js')
  const { buildOps } = await import('../../src/ops.js')
  const ops = await buildOps({ env: {}, logger: false, registry: new Registry(), lifecycle: new Lifecycle() })
  t.teardown(() => ops.close())
  const text = (await ops.inject('/metrics')).body
  t.equal(sample(text, 'smalltalk_ready'), 0)
  t.equal(sample(text, 'smalltalk_dependency_up', 'dependency="postgres"'), 0)
  t.ok((sample(text, 'smalltalk_uptime_seconds') ?? 0) > 0)
})

t.test('gauges follow the lifecycle', async (t) => {
  const { ops, lifecycle } = await buildService(t, await testEnv(t))
  t.equal(sample((await ops.inject('/metrics')).body, 'smalltalk_shutdown_duration_seconds'), 0)
  lifecycle.beginShutdown()
  await new Promise((resolve) => setTimeout(resolve, 50))
  const text = (await ops.inject('/metrics')).body
  t.equal(sample(text, 'smalltalk_ready'), 0)
  t.ok((sample(text, 'smalltalk_shutdown_duration_seconds') ?? 0) >= 0.04, 'the drain is timed')
})
