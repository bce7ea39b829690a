import t from 'tap'
import pg from 'pg'
import { Registry } from 'prom-client'
import { Lifecycle } from '../../src/lifecycle.js'
import { buildOps } from '../../src/ops.js'
import { buildApp } from '../../src/app.js'
import { TcpProxy } from '../support/tcp-proxy.js'
import { buildService, eventually, testEnv, withDatabase } from '../helper.js'

t.test('while starting: liveness 200, readiness 503 with pending checks', async (t) => {
  const lifecycle = new Lifecycle()
  const ops = await buildOps({ env: { LOG_LEVEL: 'silent' }, logger: false, registry: new Registry(), lifecycle })
  t.teardown(() => ops.close())
  t.same((await ops.inject('/healthz')).json(), { status: 'ok' })
  const ready = await ops.inject('/ready')
  t.equal(ready.statusCode, 503)
  t.same(ready.json(), { ready: false, phase: 'starting', checks: { postgres: 'pending', redis: 'pending', migrations: 'pending' } })
  const health = await ops.inject('/health')
  t.equal(health.statusCode, 503)
  t.equal(health.json().status, 'unhealthy')
})

t.test('ready once the api is up; 503 from the first moment of shutdown', async (t) => {
  const { ops, lifecycle } = await buildService(t, await testEnv(t))
  const ready = await ops.inject('/ready')
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { ready: true, phase: 'ready', checks: { postgres: 'ok', redis: 'disabled', migrations: 'ok' } })

  lifecycle.beginShutdown()
  const stopping = await ops.inject('/ready')
  t.equal(stopping.statusCode, 503)
  t.match(stopping.json(), { ready: false, phase: 'stopping', checks: { postgres: 'ok' } })
  t.equal((await ops.inject('/healthz')).statusCode, 200, 'liveness is unaffected by shutdown')
})

t.test('the api instance attached but not yet listening is not ready', async (t) => {
  const env = await testEnv(t)
  const lifecycle = new Lifecycle()
  const registry = new Registry()
  const ops = await buildOps({ env, logger: false, registry, lifecycle })
  t.teardown(() => ops.close())
  const app = await buildApp({ env, logger: false, registry, lifecycle })
  t.teardown(() => app.close())
  await app.ready()
  const res = await ops.inject('/ready')
  t.equal(res.statusCode, 503, 'phase is still starting until the server marks it ready')
  t.match(res.json(), { ready: false, phase: 'starting', checks: { postgres: 'ok', migrations: 'ok' } })
})

t.test('/health reports every service', async (t) => {
  const { ops } = await buildService(t, await testEnv(t))
  const res = await ops.inject('/health')
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.status, 'healthy')
  t.match(body, {
    uptime: Number,
    version: String,
    timestamp: String,
    services: {
      postgres: { status: 'up', latencyMs: Number },
      redis: { status: 'disabled' },
      memory: { status: 'up', message: /heap .* MiB/ },
      eventLoop: { status: 'up', message: /event-loop delay p99/ },
      agents: { status: String }
    }
  })
})

t.test('memory and event-loop pressure make /health degraded, not unhealthy', async (t) => {
  const { ops } = await buildService(t, await testEnv(t, { HEALTH_HEAP_WARN_RATIO: '0.000001' }))
  const res = await ops.inject('/health')
  t.equal(res.statusCode, 200)
  t.equal(res.json().status, 'degraded')
  t.equal(res.json().services.memory.status, 'degraded')
})

t.test('PostgreSQL refusing connections: readiness 503, liveness 200, then recovery', async (t) => {
  const env = await testEnv(t)
  const database = new URL(env.DATABASE_URL as string).pathname.slice(1)
  const admin = new pg.Client({ connectionString: withDatabase(env.DATABASE_URL as string, 'postgres') })
  await admin.connect()
  t.teardown(() => admin.end())
  const { ops } = await buildService(t, env)
  t.equal((await ops.inject('/ready')).statusCode, 200)

  await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS false`)
  t.teardown(() => admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS true`))
  await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1', [database])

  const down = await ops.inject('/ready')
  t.equal(down.statusCode, 503)
  t.match(down.json(), { ready: false, phase: 'ready', checks: { postgres: 'error', migrations: 'ok' } })
  t.equal((await ops.inject('/healthz')).statusCode, 200, 'liveness never depends on PostgreSQL')
  const health = await ops.inject('/health')
  t.equal(health.statusCode, 503)
  t.match(health.json(), { status: 'unhealthy', services: { postgres: { status: 'down', message: /not currently accepting connections|does not allow connections/ } } })

  await admin.query(`ALTER DATABASE ${database} ALLOW_CONNECTIONS true`)
  t.ok(await eventually(async () => (await ops.inject('/ready')).statusCode === 200), 'ready again by itself')
})

t.test('a PostgreSQL that hangs gives a 503 within the check timeout, never a hung probe', async (t) => {
  const env = await testEnv(t, { HEALTH_CHECK_TIMEOUT_MS: '500', DB_CONNECT_TIMEOUT_MS: '1000' })
  const proxy = TcpProxy.forUrl(env.DATABASE_URL as string)
  await proxy.start()
  t.teardown(() => proxy.close())
  const { ops, app } = await buildService(t, { ...env, DATABASE_URL: proxy.rewrite(env.DATABASE_URL as string) })
  t.equal((await ops.inject('/ready')).statusCode, 200)

  await proxy.blackhole()
  const started = Date.now()
  const res = await ops.inject('/ready')
  const elapsed = Date.now() - started
  t.equal(res.statusCode, 503)
  t.equal(res.json().checks.postgres, 'error')
  t.ok(elapsed < 1500, `answered in ${elapsed} ms`)
  t.equal((await ops.inject('/healthz')).statusCode, 200)

  await proxy.restore()
  t.ok(await eventually(async () => (await ops.inject('/ready')).statusCode === 200, 15_000), 'ready again after the network heals')
  t.equal((await app.inject('/')).statusCode, 200)
})
