import { spawn } from 'node:child_process'
import t from 'tap'
import { Registry } from 'prom-client'
import { ConfigError, EnvSchema, selectEnvironment } from '../src/config.js'
import { Lifecycle } from '../src/lifecycle.js'
import { buildOps } from '../src/ops.js'
import { createTestDatabase } from './helper.js'

// The config plugin is the first thing either instance registers, so a bad value stops start-up
// before anything is opened. buildOps is the cheapest instance to build for that.
async function configError (env: Record<string, string>): Promise<ConfigError> {
  try {
    const ops = await buildOps({ env, logger: false, registry: new Registry(), lifecycle: new Lifecycle() })
    await ops.close()
  } catch (err) {
    return err as ConfigError
  }
  throw new Error('the configuration was accepted')
}

t.test('defaults apply when nothing is set', async (t) => {
  const ops = await buildOps({ env: {}, logger: false, registry: new Registry(), lifecycle: new Lifecycle() })
  t.teardown(() => ops.close())
  t.equal(ops.config.PORT, 3000)
  t.equal(ops.config.HEALTH_PORT, 3001)
  t.equal(ops.config.HOST, '0.0.0.0')
  t.equal(ops.config.LOG_LEVEL, 'info')
  t.equal(ops.config.BODY_LIMIT, 1_048_576)
  t.equal(ops.config.MAX_MESSAGE_CHARS, 32_000)
  t.equal(ops.config.MIGRATE_ON_START, true)
  t.equal(ops.config.DATABASE_URL, undefined)
})

t.test('values are coerced from strings, and empty values count as unset', async (t) => {
  const ops = await buildOps({
    env: { PORT: '8080', MIGRATE_ON_START: 'false', DATABASE_URL: '', LOG_LEVEL: 'debug' },
    logger: false,
    registry: new Registry(),
    lifecycle: new Lifecycle()
  })
  t.teardown(() => ops.close())
  t.equal(ops.config.PORT, 8080)
  t.equal(ops.config.MIGRATE_ON_START, false)
  t.equal(ops.config.DATABASE_URL, undefined)
  t.equal(ops.config.LOG_LEVEL, 'debug')
})

t.test('bad values are rejected with the variable named', async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: 'abc' }, /PORT must be integer \(got "abc"\)/],
    [{ PORT: '70000' }, /PORT must be <= 65535/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent \(got "loud"\)/],
    [{ DATABASE_URL: 'mysql://db:3306/x' }, /DATABASE_URL must look like postgres:\/\/user:pass@host:port\/db/],
    [{ REDIS_URL: 'localhost:6379' }, /REDIS_URL must look like redis:\/\/host:port\/db/],
    [{ MIGRATE_ON_START: 'maybe' }, /MIGRATE_ON_START must be boolean/],
    [{ SHUTDOWN_TIMEOUT_MS: '0' }, /SHUTDOWN_TIMEOUT_MS must be >= 1/]
  ]
  for (const [env, expected] of cases) {
    const err = await configError(env)
    t.ok(err instanceof ConfigError, `${Object.keys(env)[0]} raises a ConfigError`)
    t.match(err.message, expected)
  }
})

t.test('several bad values are all reported, and secrets are never echoed', async (t) => {
  const err = await configError({ PORT: 'x', DATABASE_URL: 'mysql://admin:hunter2@db/x' })
  t.match(err.message, /PORT/)
  t.match(err.message, /DATABASE_URL .*\(value hidden\)/)
  t.notMatch(err.message, /hunter2/)
})

t.test('only the schema variables are read from the environment', async (t) => {
  const selected = selectEnvironment({ PORT: '1', PATH: '/usr/bin', HOME: '/root', OPENAI_API_KEY: ' ' })
  t.same(selected, { PORT: '1' })
  t.ok(Object.keys(EnvSchema.properties).includes('SHUTDOWN_TIMEOUT_MS'))
})

/** The real entry point (src/server.ts) in a child process, run to its exit. */
async function startServer (env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => (stdout += chunk))
  child.stderr.on('data', (chunk) => (stderr += chunk))
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { code, stdout, stderr }
}

t.test('the server process exits 1 with one log line naming the variable', async (t) => {
  const { code, stdout } = await startServer({ PORT: 'abc', LOG_LEVEL: 'loud' })
  t.equal(code, 1)
  const lines = stdout.trim().split('\n').filter(Boolean)
  t.equal(lines.length, 1, 'exactly one log line')
  const line = JSON.parse(lines[0] ?? '{}') as { level: number; msg: string }
  t.equal(line.level, 60, 'logged at fatal')
  t.match(line.msg, /Invalid configuration: PORT must be integer \(got "abc"\); LOG_LEVEL must be one of/)
})

t.test('a malformed API_KEYS: exit 1, one fatal line naming it, no stack, no key', async (t) => {
  const cases: [string, RegExp][] = [
    ['sk-live-Secret123', /^Invalid configuration: API_KEYS entry 1 must be key:tenant$/],
    ['sk-live-Good456:team-a,sk-live-Secret123:team a', /^Invalid configuration: API_KEYS entry 2 has an invalid tenant/]
  ]
  for (const [value, expected] of cases) {
    // A real database, so that a check made only once the database is open would be reached too.
    const { code, stdout, stderr } = await startServer({ API_KEYS: value, DATABASE_URL: await createTestDatabase(t) })
    const output = stdout + stderr
    t.equal(code, 1, 'exit code 1')
    const lines = stdout.trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as { level: number; msg: string })
    t.equal(lines.length, 1, 'exactly one log line', { output })
    t.equal(lines[0]?.level, 60, 'logged at fatal')
    t.match(lines[0]?.msg, expected)
    t.notMatch(output, /\bat \S+ \(|"stack"/, 'no stack trace')
    t.notMatch(output, /Secret123|Good456/, 'no key is echoed')
    t.equal(stderr, '', 'nothing on stderr')
  }
})

t.test('.env.example documents every variable of the schema', async (t) => {
  const { readFileSync } = await import('node:fs')
  const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8')
  const documented = new Set([...example.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((match) => match[1]))
  for (const name of Object.keys(EnvSchema.properties)) t.ok(documented.has(name), `${name} is in .env.example`)
})
