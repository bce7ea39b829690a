import { basename } from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import Postgrator from 'postgrator'
import pg from 'pg'
import type { FastifyBaseLogger as Logger } from 'fastify'
import { MIGRATIONS_DIR } from '../paths.js'

// One fixed key for every replica: pg_advisory_lock makes concurrent start-ups migrate one at a time,
// the later ones finding nothing left to do.
export const MIGRATION_LOCK_KEY = 7_365_120_001

export interface MigrationResult {
  version: number
  applied: string[]
}

export interface SchemaVersions {
  /** The newest migration this build ships. */
  expected: number
  /** The database's. */
  current: number
}

function migrator (execQuery: NonNullable<Postgrator.BaseOptions['execQuery']>): Postgrator {
  return new Postgrator({
    driver: 'pg',
    migrationPattern: `${MIGRATIONS_DIR}/*.sql`,
    schemaTable: 'schema_migrations',
    validateChecksums: true,
    execQuery
  })
}

/** Applies every pending migration in db/migrations, under a session-level advisory lock. */
export async function runMigrations (pool: pg.Pool, log: Logger): Promise<MigrationResult> {
  const client = await pool.connect()
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY])
    try {
      const postgrator = migrator((query) => client.query(query))
      const applied = await postgrator.migrate()
      const version = await postgrator.getDatabaseVersion()
      for (const migration of applied) log.info({ migration: basename(migration.filename) }, 'migration applied')
      return { version, applied: applied.map((m) => basename(m.filename)) }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY])
    }
  } finally {
    client.release()
  }
}

/**
 * Migrates on a connection of its own, with no query timeout: on the request pool, DB_QUERY_TIMEOUT_MS
 * would cut short a long migration (an index build on a big table) and the wait for another
 * replica's (the advisory lock).
 */
export async function migrateDatabase (connectionString: string, log: Logger, connectTimeoutMs: number): Promise<MigrationResult> {
  const pool = new pg.Pool({ connectionString, max: 1, connectionTimeoutMillis: connectTimeoutMs, application_name: 'smalltalk-server-migrations' })
  pool.on('error', (err) => log.warn({ err: { message: err.message } }, 'idle migration connection lost'))
  try {
    return await runMigrations(pool, log)
  } finally {
    await pool.end()
  }
}

export interface SchemaWaitOptions {
  /** Between two looks at the database's version. */
  intervalMs: number
  /** Resolves after `ms` (a timer; tests pass their own). */
  sleep?: (ms: number) => Promise<unknown>
}

/**
 * Resolves once the database schema is at this build's version or newer. A replica started with
 * MIGRATE_ON_START=false before the release job has migrated waits here, out of rotation (/ready
 * answers 503 while the api instance starts), and finishes starting once another process has
 * migrated, instead of running against a schema it does not know. Each look is two small queries.
 */
export async function waitForSchema (pool: pg.Pool, log: Logger, options: SchemaWaitOptions): Promise<SchemaVersions> {
  const sleep = options.sleep ?? delay
  const postgrator = migrator((query) => pool.query(query))
  const expected = await postgrator.getMaxVersion()
  let current = await postgrator.getDatabaseVersion()
  if (current >= expected) return { expected, current }
  log.warn(
    { current, expected },
    `database schema is behind this build: waiting for its migrations (npm run db:migrate), looking every ${options.intervalMs / 1000} s`
  )
  let lastError: string | undefined
  while (current < expected) {
    await sleep(options.intervalMs)
    try {
      current = await postgrator.getDatabaseVersion()
      lastError = undefined
    } catch (err) {
      // PostgreSQL unreachable for a moment: keep waiting, and say so once per kind of failure.
      if ((err as Error).message !== lastError) log.warn({ err: { message: (err as Error).message } }, 'could not read the schema version; still waiting')
      lastError = (err as Error).message
    }
  }
  log.info({ current, expected }, 'database schema is current: start-up continues')
  return { expected, current }
}
