import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import pino from 'pino'
import { Registry } from 'prom-client'
import type { Test } from 'tap'
import { buildApp, type BuildOptions } from '../src/app.js'
import type { Environment } from '../src/config.js'
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded-postgres.js'
import { Lifecycle } from '../src/lifecycle.js'
import { buildOps } from '../src/ops.js'

// Tests run against real servers. DATABASE_URL / REDIS_URL name them (CI sets both, and
// REQUIRE_SERVICES=1 so that a missing service fails the run instead of skipping). Without
// DATABASE_URL each test file starts its own embedded PostgreSQL, as a new user's machine would.

export const REQUIRE_SERVICES = process.env.REQUIRE_SERVICES === '1' || process.env.REQUIRE_SERVICES === 'true'
export const REDIS_URL = process.env.REDIS_URL || undefined

const silent = pino({ level: 'silent' })
let embedded: Promise<EmbeddedDatabase> | undefined

/** A world-traversable temp dir (the embedded PostgreSQL runs as the 'postgres' user when root). */
export async function tempDir (t: Test, prefix = 'smalltalk-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  await chmod(dir, 0o755)
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function serverUrl (t: Test): Promise<string> {
  if (process.env.DATABASE_URL) return process.env.DATABASE_URL
  if (REQUIRE_SERVICES) throw new Error('REQUIRE_SERVICES is set but DATABASE_URL is not: CI must test against the real PostgreSQL')
  if (!embedded) {
    const dir = await mkdtemp(join(tmpdir(), 'smalltalk-test-pg-'))
    await chmod(dir, 0o755)
    embedded = startEmbeddedPostgres(dir, silent)
    const started = embedded
    // Registered on the root test: stops once every test of the file has run.
    t.teardown(async () => {
      await (await started).stop()
      await rm(dir, { recursive: true, force: true })
    })
  }
  return (await embedded).connectionString
}

export function withDatabase (url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = '/' + database
  return parsed.toString()
}

/** A fresh, empty database for this test (dropped at teardown), so test files can run in parallel. */
export async function createTestDatabase (t: Test): Promise<string> {
  const root = t.parent ? topTest(t) : t
  const server = await serverUrl(root)
  const name = 'st_test_' + randomBytes(6).toString('hex')
  const admin = new pg.Client({ connectionString: server })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  t.teardown(async () => {
    const client = new pg.Client({ connectionString: server })
    await client.connect()
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await client.end()
  })
  return withDatabase(server, name)
}

function topTest (t: Test): Test {
  let current = t
  while (current.parent && (current.parent as Test).parent) current = current.parent as Test
  return current
}

/**
 * For `t.test(name, { skip: redisUnavailable() }, ...)`: false when Redis is configured; otherwise
 * the reason the test is not run (a developer's machine), or, under REQUIRE_SERVICES, an error that
 * fails the file.
 */
export function redisUnavailable (): string | false {
  if (REDIS_URL) return false
  if (REQUIRE_SERVICES) throw new Error('REQUIRE_SERVICES is set but REDIS_URL is not: the Redis tests need a real Redis')
  return 'not run: no REDIS_URL (set REDIS_URL=redis://127.0.0.1:6379 to run the Redis tests)'
}

/** A base environment for one test: its own database and Redis key prefix, quiet probes. */
export async function testEnv (t: Test, overrides: Environment = {}): Promise<Environment> {
  const env: Environment = {
    NODE_ENV: 'test',
    LOG_LEVEL: 'silent',
    DATABASE_URL: await createTestDatabase(t),
    REDIS_KEY_PREFIX: `test:${randomBytes(4).toString('hex')}:`,
    HEALTH_CHECK_TIMEOUT_MS: '1000',
    ...overrides
  }
  return env
}

/** The api instance alone, as the server builds it. */
export async function buildTestApp (t: Test, env: Environment): Promise<FastifyInstance> {
  const app = await buildApp({ env, logger: false })
  t.teardown(() => app.close())
  return app
}

export interface TestService {
  app: FastifyInstance
  ops: FastifyInstance
  lifecycle: Lifecycle
  registry: Registry
}

/** Both instances of one process, wired as src/server.ts wires them (without listening); `clock` as buildApp takes it. */
export async function buildService (t: Test, env: Environment, options: Pick<BuildOptions, 'clock'> = {}): Promise<TestService> {
  const lifecycle = new Lifecycle()
  const registry = new Registry()
  const ops = await buildOps({ env, logger: false, registry, lifecycle })
  t.teardown(() => ops.close())
  const app = await buildApp({ env, logger: false, registry, lifecycle, ...options })
  t.teardown(() => app.close())
  await app.ready()
  lifecycle.markReady()
  return { app, ops, lifecycle, registry }
}

/** Polls `check` until it returns true or the deadline passes; returns the last value. */
export async function eventually (check: () => Promise<boolean> | boolean, timeoutMs = 10_000, intervalMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
  return check()
}
