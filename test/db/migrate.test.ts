import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import pg from 'pg'
import pino from 'pino'
import { readdirSync } from 'node:fs'
import { buildApp } from '../../src/app.js'
import { MIGRATION_LOCK_KEY, runMigrations, waitForSchema } from '../../src/db/migrate.js'
import { MIGRATIONS_DIR } from '../../src/paths.js'
import { createTestDatabase, eventually, testEnv } from '../helper.js'
import { freePort } from '../support/server-process.js'

const silent = pino({ level: 'silent' })
const EXPECTED_TABLES = ['agent_health', 'agent_states', 'chat_messages', 'event_logs', 'health_checks', 'idempotency_keys', 'reply_usage', 'schema_migrations', 'sessions']
// Every migration this build ships, from the folder itself.
const SHIPPED = readdirSync(MIGRATIONS_DIR).filter((file) => /^\d+\.do\..*\.sql$/.test(file)).sort()
const LATEST = Math.max(...SHIPPED.map((file) => Number(file.split('.')[0])))

async function tables (pool: pg.Pool): Promise<string[]> {
  const { rows } = await pool.query<{ table_name: string }>(
    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"
  )
  return rows.map((row) => row.table_name)
}

/** A pool for the test itself; its database is dropped WITH (FORCE) at teardown, which ends idle clients. */
function testPool (connectionString: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString, max })
  pool.on('error', () => undefined)
  return pool
}

function migrateInChild (databaseUrl: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/db/migrate-cli.ts'], {
      env: { PATH: process.env.PATH, DATABASE_URL: databaseUrl, LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let output = ''
    child.stdout.on('data', (chunk) => (output += chunk))
    child.stderr.on('data', (chunk) => (output += chunk))
    child.on('exit', (code) => resolve({ code, output }))
  })
}

t.test('the seed schema is created and a second run changes nothing', async (t) => {
  const pool = testPool(await createTestDatabase(t), 2)
  t.teardown(() => pool.end())
  const first = await runMigrations(pool, silent)
  t.same(first.applied, SHIPPED)
  t.ok(SHIPPED.includes('001.do.initial-schema.sql'), 'the seed schema comes first')
  t.equal(first.version, LATEST)
  t.same(await tables(pool), EXPECTED_TABLES)

  const second = await runMigrations(pool, silent)
  t.same(second.applied, [], 'nothing left to apply')
  t.equal(second.version, LATEST)
  const { rows } = await pool.query('SELECT version FROM schema_migrations WHERE version > 0 ORDER BY version')
  t.same(rows.map((r) => Number(r.version)), SHIPPED.map((file) => Number(file.split('.')[0])))
})

t.test('the schema works as intended: uuids, updated_at trigger, cascades', async (t) => {
  const pool = testPool(await createTestDatabase(t), 2)
  t.teardown(() => pool.end())
  await runMigrations(pool, silent)
  const { rows: [session] } = await pool.query("INSERT INTO sessions (tenant, agents) VALUES ('acme', ARRAY['a']) RETURNING id, updated_at")
  t.match(session.id, /^[0-9a-f-]{36}$/)
  await new Promise((resolve) => setTimeout(resolve, 20))
  const { rows: [updated] } = await pool.query('UPDATE sessions SET version = version + 1 WHERE id = $1 RETURNING updated_at', [session.id])
  t.ok(updated.updated_at > session.updated_at, 'updated_at moves on update')
  await pool.query("INSERT INTO chat_messages (session_id, seq, role, content) VALUES ($1, 1, 'user', 'hi')", [session.id])
  await t.rejects(pool.query("INSERT INTO chat_messages (session_id, seq, role, content) VALUES ($1, 1, 'user', 'again')", [session.id]), /duplicate key/, 'seq is unique per session')
  await t.rejects(pool.query("UPDATE sessions SET status = 'weird' WHERE id = $1", [session.id]), /check constraint/)
  await pool.query('DELETE FROM sessions WHERE id = $1', [session.id])
  const { rows: left } = await pool.query('SELECT count(*)::int AS n FROM chat_messages')
  t.equal(left[0].n, 0, 'messages go with their session')
})

t.test('two processes migrating the same database at once: both succeed, each migration applied once', async (t) => {
  const url = await createTestDatabase(t)
  const [a, b] = await Promise.all([migrateInChild(url), migrateInChild(url)])
  t.equal(a.code, 0, a.output)
  t.equal(b.code, 0, b.output)
  const appliedBy = [a.output, b.output].filter((output) => output.includes('"migration":"001.do.initial-schema.sql"'))
  t.equal(appliedBy.length, 1, 'exactly one process applied the migration, the other found it done')
  const pool = testPool(url, 1)
  t.teardown(() => pool.end())
  const { rows } = await pool.query('SELECT version FROM schema_migrations WHERE version > 0')
  t.equal(rows.length, SHIPPED.length)
  t.same(await tables(pool), EXPECTED_TABLES)
})

t.test('npm run db:migrate exits non-zero when it cannot migrate', async (t) => {
  const url = await createTestDatabase(t)
  const missing = new URL(url)
  missing.pathname = '/st_does_not_exist'
  const result = await migrateInChild(missing.toString())
  t.equal(result.code, 1)
  const line = JSON.parse(result.output.trim().split('\n').at(-1) ?? '{}') as { level: number; msg: string }
  t.equal(line.level, 60)
  t.equal(line.msg, 'migration failed: database "st_does_not_exist" does not exist')
})

t.test('waiting for the schema: one look per interval until another process has migrated', async (t) => {
  const pool = testPool(await createTestDatabase(t), 2)
  t.teardown(() => pool.end())
  const sleeps: number[] = []
  const versions = await waitForSchema(pool, silent, {
    intervalMs: 2000,
    // The clock of the wait: the migrations run "meanwhile", on the second interval.
    sleep: async (ms) => {
      sleeps.push(ms)
      if (sleeps.length === 2) await runMigrations(pool, silent)
    }
  })
  t.same(sleeps, [2000, 2000], 'looked again after each interval, and stopped once migrated')
  t.same(versions, { expected: LATEST, current: LATEST })

  const again = await waitForSchema(pool, silent, { intervalMs: 2000, sleep: async () => t.fail('no wait when the schema is current') })
  t.same(again, { expected: LATEST, current: LATEST })
})

t.test('MIGRATE_ON_START=false before the release job: 503, then ready once another process migrates', async (t) => {
  const url = await createTestDatabase(t)
  const opsUrl = `http://127.0.0.1:${await freePort()}`
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: url,
      MIGRATE_ON_START: 'false',
      HOST: '127.0.0.1',
      PORT: String(await freePort()),
      HEALTH_PORT: new URL(opsUrl).port
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  const waitingLine = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk
      if (output.includes('database schema is behind this build')) resolve()
    })
    child.on('exit', (code) => reject(new Error(`exited with ${code} before waiting for the schema: ${output}`)))
  })
  child.stderr.on('data', (chunk) => (output += chunk))
  const exited = once(child, 'exit')
  t.teardown(() => child.kill('SIGKILL'))

  await waitingLine
  t.pass('the replica says it waits for the migrations')
  const waiting = await fetch(`${opsUrl}/ready`)
  t.equal(waiting.status, 503)
  t.match(await waiting.json(), { ready: false, phase: 'starting', checks: { migrations: 'pending' } })
  t.equal(child.exitCode, null, 'it waits instead of failing start-up')

  const migrated = await migrateInChild(url)
  t.equal(migrated.code, 0, migrated.output)
  // A look every 2 s; the bound only keeps a broken build from hanging the run.
  t.ok(await eventually(async () => (await fetch(`${opsUrl}/ready`)).status === 200, 60_000), 'ready without a restart', { output })
  t.match(await (await fetch(`${opsUrl}/ready`)).json(), { ready: true, checks: { postgres: 'ok', migrations: 'ok' } })
  child.kill('SIGTERM')
  t.same(await exited, [0, null], 'and it shuts down cleanly')
})

t.test('start-up migrates past DB_QUERY_TIMEOUT_MS and the plugin deadline (another replica holds the lock)', async (t) => {
  const env = await testEnv(t, { DB_QUERY_TIMEOUT_MS: '200' })
  // Another replica's long migration (an index build, say), seen from here: its advisory lock.
  const other = new pg.Client({ connectionString: env.DATABASE_URL })
  await other.connect()
  t.teardown(() => other.end())
  await other.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY])

  const building = buildApp({ env, logger: false }).then((app) => {
    t.teardown(() => app.close())
    return app
  })
  const failed = building.then(() => undefined, (err: Error) => err)
  const waiting = () => other.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
  t.ok(await eventually(async () => (await waiting()).rows[0].n === 1, 60_000), 'start-up waits for the lock')
  // Held past the request timeout (200 ms) and past Fastify's default plugin timeout (10 s, counted
  // from the start of the postgres plugin, which began before this wait).
  const early = await Promise.race([failed, sleep(10_500).then(() => 'still waiting')])
  t.equal(early, 'still waiting', 'start-up is still waiting, not failed')
  await other.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY])

  const app = await building
  t.same(app.migrations, { version: LATEST, expected: LATEST }, 'then migrated')
})
