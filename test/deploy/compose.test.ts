import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { parse as parseYaml } from 'yaml'
import { EnvSchema } from '../../src/config.js'
import { cleanEnv, haveTool, readYaml, run } from './support.js'

// compose.yaml and compose.override.yaml as Compose resolves them (Debian's docker-compose v1: no
// Docker engine is needed for `config`), then what the resolved stack must be.

interface Service {
  image?: string
  build?: { context: string; target?: string }
  command?: string[] | string
  environment?: Record<string, string | number | null>
  ports?: Array<string | { published: number | string; target: number | string; host_ip?: string }>
  volumes?: string[]
  depends_on?: Record<string, { condition: string }>
  healthcheck?: { test: string[] | string; interval?: string; timeout?: string; retries?: number; start_period?: string }
  restart?: string
  profiles?: string[]
  user?: string
}
interface ComposeConfig {
  services: Record<string, Service>
  volumes?: Record<string, unknown>
}

/** `docker-compose config` on the given files, with exactly the variables given (an empty .env). */
async function resolve (t: Test, files: string[], vars: Record<string, string> = {}): Promise<{ code: number | null; config?: ComposeConfig; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'smalltalk-compose-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const envFile = join(dir, 'env')
  await writeFile(envFile, Object.entries(vars).map(([k, v]) => `${k}=${v}`).join('\n') + '\n')
  const args = ['--env-file', envFile, ...files.flatMap((f) => ['-f', f])]
  const quiet = await run('docker-compose', [...args, 'config', '-q'], { env: cleanEnv(), timeoutMs: 60_000 })
  if (quiet.code !== 0) return { code: quiet.code, stderr: quiet.stderr }
  const full = await run('docker-compose', [...args, 'config'], { env: cleanEnv(), timeoutMs: 60_000 })
  return { code: full.code, config: parseYaml(full.stdout) as ComposeConfig, stderr: full.stderr }
}

function ports (service: Service): Array<{ hostIp: string | undefined; published: string; target: string }> {
  return (service.ports ?? []).map((port) => {
    if (typeof port === 'string') {
      const parts = port.replace(/\/tcp$/, '').split(':')
      return parts.length === 3
        ? { hostIp: parts[0], published: parts[1]!, target: parts[2]! }
        : { hostIp: undefined, published: parts[0]!, target: parts[1]! }
    }
    return { hostIp: port.host_ip, published: String(port.published), target: String(port.target) }
  })
}
// What .env must always hold: compose.yaml has no default for it.
const PASSWORD = { POSTGRES_PASSWORD: 'only-in-env' }
const env = (service: Service | undefined, name: string) => {
  const value = service?.environment?.[name]
  return value === null || value === undefined ? undefined : String(value)
}
const words = (value: string[] | string | undefined) => (Array.isArray(value) ? value : (value ?? '').split(/\s+/))
const seconds = (duration: string | undefined) => {
  const match = /^(?:(\d+)m)?(?:(\d+)s)?$/.exec(duration ?? '')
  return match ? Number(match[1] ?? 0) * 60 + Number(match[2] ?? 0) : NaN
}

t.test('the raw files', async (t) => {
  for (const file of ['compose.yaml', 'compose.override.yaml']) {
    const raw = readYaml<Record<string, unknown>>(file)
    t.notOk('name' in raw, `${file} has no top-level name (Compose v1 rejects it)`)
    t.notOk('version' in raw, `${file} has no obsolete version key`)
  }
})

t.test('no PostgreSQL password, no stack: compose refuses to run without POSTGRES_PASSWORD', async (t) => {
  if (!haveTool(t, 'docker-compose')) return
  for (const files of [['compose.yaml'], ['compose.yaml', 'compose.override.yaml']]) {
    for (const [why, vars] of [['unset', {}], ['empty, as in .env.example', { POSTGRES_PASSWORD: '' }]] as const) {
      const { code, stderr } = await resolve(t, files, vars)
      t.not(code, 0, `${files.join(' + ')}, POSTGRES_PASSWORD ${why}: refused`)
      t.match(stderr, /set POSTGRES_PASSWORD in \.env/, 'saying what to set')
    }
  }
})

t.test('compose.yaml alone: the production stack', async (t) => {
  if (!haveTool(t, 'docker-compose')) return
  const { code, config, stderr } = await resolve(t, ['compose.yaml'], PASSWORD)
  t.equal(code, 0, 'docker-compose config -q accepts compose.yaml with POSTGRES_PASSWORD set', { stderr })
  if (!config) return
  const { app, postgres, redis, prometheus, grafana } = config.services
  t.same(Object.keys(config.services).sort(), ['app', 'grafana', 'postgres', 'prometheus', 'redis'], 'the five services')

  t.equal(app?.build?.target, 'runtime', 'app is built from the Dockerfile runtime stage')
  for (const [name, service] of Object.entries(config.services)) {
    t.equal(service.restart, 'unless-stopped', `${name}: restart unless-stopped`)
    t.ok(service.healthcheck?.test, `${name}: has a health check`)
  }
  t.same(app?.depends_on, { postgres: { condition: 'service_healthy' }, redis: { condition: 'service_healthy' } }, 'app waits for healthy postgres and redis')
  t.same(grafana?.depends_on, { prometheus: { condition: 'service_healthy' } }, 'grafana waits for a healthy prometheus')
  t.notOk(prometheus?.depends_on, 'prometheus does not wait for the app (it must watch an app that is down)')

  t.match(words(app?.healthcheck?.test).join(' '), /wget .*http:\/\/127\.0\.0\.1:3001\/healthz/, 'app health check: /healthz on the ops port')
  t.same(ports(app!).map((p) => [p.hostIp, p.published, p.target]), [[undefined, '3000', '3000'], ['127.0.0.1', '3001', '3001']], 'api port published, ops port on loopback only')
  t.equal(env(app, 'PORT'), '3000', 'PORT inside the container is fixed')
  t.equal(env(app, 'HEALTH_PORT'), '3001', 'HEALTH_PORT inside the container is fixed')
  t.equal(env(app, 'DATABASE_URL'), 'postgres://smalltalk:only-in-env@postgres:5432/smalltalk', 'DATABASE_URL points at the postgres service with the password from .env (always set: the image has no embedded PostgreSQL)')
  t.equal(env(postgres, 'POSTGRES_PASSWORD'), 'only-in-env', 'the same password for the server')
  t.equal(env(app, 'REDIS_URL'), 'redis://redis:6379/0', 'REDIS_URL points at the redis service')
  t.equal(env(app, 'MIGRATE_ON_START'), 'true', 'migrations run at start-up, under the advisory lock')
  t.equal(env(app, 'NODE_ENV'), 'production', 'NODE_ENV production')
  t.equal((app as { read_only?: boolean }).read_only, true, 'app: read-only root filesystem')
  t.same((app as { cap_drop?: string[] }).cap_drop, ['ALL'], 'app: no capabilities')
  t.ok((app as { security_opt?: string[] }).security_opt?.includes('no-new-privileges:true'), 'app: no-new-privileges')
  // DATA_DIR only serves the embedded PostgreSQL, which the image does not have.
  const missing = Object.keys(EnvSchema.properties).filter((name) => name !== 'DATA_DIR' && !(name in (app?.environment ?? {})))
  t.same(missing, [], 'every variable of src/config.ts reaches the app container')
  t.equal(env(app, 'API_KEYS'), '', 'an unset variable arrives empty (the service then uses its default)')

  t.equal(postgres?.image, 'postgres:16-alpine', 'PostgreSQL 16 on Alpine')
  t.ok(postgres?.volumes?.some((v) => /^postgres-data:\/var\/lib\/postgresql\/data/.test(v)), 'PostgreSQL data on a named volume')
  t.match(words(postgres?.healthcheck?.test).join(' '), /pg_isready/, 'pg_isready health check')
  t.same(postgres?.ports ?? [], [], 'PostgreSQL is not published in production')

  t.equal(redis?.image, 'redis:7-alpine', 'Redis 7 on Alpine')
  t.match(words(redis?.command).join(' '), /--appendonly yes/, 'AOF on')
  t.match(words(redis?.command).join(' '), /--maxmemory 256mb/, 'maxmemory defaults to 256mb')
  t.match(words(redis?.command).join(' '), /--maxmemory-policy allkeys-lru/, 'LRU eviction')
  t.ok(redis?.volumes?.some((v) => /^redis-data:\/data/.test(v)), 'the AOF on a named volume')
  t.same(words(redis?.healthcheck?.test), ['CMD', 'redis-cli', 'ping'], 'redis-cli ping health check')
  t.same(redis?.ports ?? [], [], 'Redis is not published in production')

  t.same(prometheus?.profiles, ['monitoring'], 'prometheus only with --profile monitoring')
  t.same(grafana?.profiles, ['monitoring'], 'grafana only with --profile monitoring')
  t.ok(prometheus?.volumes?.some((v) => /\/monitoring\/prometheus\.yml:\/etc\/prometheus\/prometheus\.yml:ro$/.test(v)), 'prometheus.yml mounted')
  t.ok(prometheus?.volumes?.some((v) => /\/monitoring\/alerts\.yml:\/etc\/prometheus\/alerts\.yml:ro$/.test(v)), 'alerts.yml mounted beside it')
  t.ok(words(prometheus?.command).includes('--storage.tsdb.retention.time=30d'), 'retention defaults to 30d')
  t.ok(grafana?.volumes?.some((v) => /\/monitoring\/grafana\/provisioning:\/etc\/grafana\/provisioning:ro$/.test(v)), 'grafana provisioning mounted')
  t.ok(grafana?.volumes?.some((v) => /\/monitoring\/grafana\/dashboards:\/etc\/grafana\/dashboards:ro$/.test(v)), 'dashboards mounted')
  t.equal(env(grafana, 'GF_SECURITY_ADMIN_PASSWORD'), 'change-me', 'grafana admin password: a placeholder unless .env sets one')
  for (const service of [prometheus, grafana]) {
    t.ok(ports(service!).every((p) => p.hostIp === '127.0.0.1'), 'monitoring UIs are published on loopback only')
  }
  t.same(Object.keys(config.volumes ?? {}).sort(), ['grafana-data', 'postgres-data', 'prometheus-data', 'redis-data'], 'named volumes')
})

t.test('compose.yaml takes its settings from .env', async (t) => {
  if (!haveTool(t, 'docker-compose')) return
  const vars = {
    PORT: '8080',
    HEALTH_PORT: '9101',
    POSTGRES_USER: 'st',
    POSTGRES_PASSWORD: 's3cret',
    POSTGRES_DB: 'chat',
    REDIS_MAXMEMORY: '512mb',
    REDIS_MAXMEMORY_POLICY: 'volatile-lru',
    PROMETHEUS_RETENTION: '7d',
    GRAFANA_ADMIN_PASSWORD: 'grafana-pass',
    DB_POOL_MAX: '25',
    OPENAI_API_KEY: 'sk-test',
    // what .env.example says for `npm start` on a laptop; compose keeps its own
    NODE_ENV: 'development',
    HOST: '127.0.0.1',
    DATABASE_URL: 'postgres://me@localhost:5432/mine',
    LOG_LEVEL: 'info'
  }
  const { code, config } = await resolve(t, ['compose.yaml'], vars)
  t.equal(code, 0, 'valid with a filled .env')
  if (!config) return
  const { app, postgres, redis, prometheus, grafana } = config.services
  t.same(ports(app!).map((p) => p.published), ['8080', '9101'], 'host ports from PORT and HEALTH_PORT')
  t.same([env(app, 'PORT'), env(app, 'HEALTH_PORT')], ['3000', '3001'], 'container ports unchanged')
  t.equal(env(app, 'DATABASE_URL'), 'postgres://st:s3cret@postgres:5432/chat', 'DATABASE_URL built from the POSTGRES_* variables')
  t.same([env(postgres, 'POSTGRES_USER'), env(postgres, 'POSTGRES_PASSWORD'), env(postgres, 'POSTGRES_DB')], ['st', 's3cret', 'chat'], 'the same credentials for the server')
  t.match(words(redis?.command).join(' '), /--maxmemory 512mb --maxmemory-policy volatile-lru/, 'Redis memory and policy from .env')
  t.ok(words(prometheus?.command).includes('--storage.tsdb.retention.time=7d'), 'retention from PROMETHEUS_RETENTION')
  t.equal(env(grafana, 'GF_SECURITY_ADMIN_PASSWORD'), 'grafana-pass', 'grafana password from GRAFANA_ADMIN_PASSWORD')
  t.equal(env(app, 'DB_POOL_MAX'), '25', 'service variables pass through')
  t.equal(env(app, 'OPENAI_API_KEY'), 'sk-test', 'provider keys pass through')
  t.equal(env(app, 'NODE_ENV'), 'production', "NODE_ENV stays production whatever .env says (it is the laptop's setting)")
  t.equal(env(app, 'HOST'), '0.0.0.0', 'HOST stays 0.0.0.0 (the container must listen on its network)')
  t.equal(env(app, 'DATABASE_URL'), 'postgres://st:s3cret@postgres:5432/chat', "a laptop's DATABASE_URL in .env never reaches the container")

  const dev = await resolve(t, ['compose.yaml', 'compose.override.yaml'], vars)
  t.equal(env(dev.config?.services.app, 'LOG_LEVEL'), 'debug', 'development logs at debug even when .env says info')
})

t.test('compose.yaml + compose.override.yaml: development', async (t) => {
  if (!haveTool(t, 'docker-compose')) return
  const base = await resolve(t, ['compose.yaml'], PASSWORD)
  const { code, config, stderr } = await resolve(t, ['compose.yaml', 'compose.override.yaml'], PASSWORD)
  t.equal(code, 0, 'docker-compose config -q accepts the two files together', { stderr })
  if (!config || !base.config) return
  const app = config.services.app!
  t.equal(app.build?.target, 'builder', 'app is the builder stage (dev dependencies, tsx)')
  const command = words(app.command)
  t.same(command.slice(0, 2), ['node_modules/.bin/tsx', 'watch'], 'hot reload: tsx watch, as npm run dev')
  t.ok(command.includes('src/server.ts'), 'runs the TypeScript source')
  t.ok(command.includes('--inspect=0.0.0.0:9229'), 'the inspector on the server process')
  t.ok(ports(app).some((p) => p.target === '9229' && p.hostIp === '127.0.0.1'), 'inspector port 9229 published on loopback')
  t.ok(app.volumes?.some((v) => /:\/app(:rw)?$/.test(v)), 'the source is mounted at /app')
  t.ok(app.volumes?.includes('/app/node_modules'), "node_modules stays the image's")
  t.equal(env(app, 'LOG_LEVEL'), 'debug', 'debug logs')
  t.equal(env(app, 'NODE_ENV'), 'development', 'NODE_ENV development')
  t.equal((app as { init?: boolean }).init, true, 'an init process (the builder stage has no tini)')
  t.ok(env(app, 'DATABASE_URL')?.includes('@postgres:5432/'), 'still the compose PostgreSQL')
  for (const name of ['app', 'postgres', 'redis', 'prometheus', 'grafana']) {
    const dev = seconds(config.services[name]?.healthcheck?.interval)
    const prod = seconds(base.config.services[name]?.healthcheck?.interval)
    t.ok(dev < prod, `${name}: faster health checks (${dev}s instead of ${prod}s)`)
  }
  t.ok(ports(config.services.postgres!).some((p) => p.hostIp === '127.0.0.1' && p.target === '5432'), 'PostgreSQL reachable from the host (loopback)')
  t.ok(ports(config.services.redis!).some((p) => p.hostIp === '127.0.0.1' && p.target === '6379'), 'Redis reachable from the host (loopback)')
})
