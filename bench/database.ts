import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import pino from 'pino'
import { startEmbeddedPostgres } from '../src/db/embedded-postgres.js'

export interface BenchDatabase {
  /** The connection string the servers under test get as DATABASE_URL. */
  url: string
  /** For the report: where the database lives (never the password). */
  description: string
  kind: 'external' | 'embedded'
  dispose(): Promise<void>
}

/**
 * With DATABASE_URL: a scratch database st_bench_<random> on that server, dropped afterwards (the
 * configured database itself is never touched). Without: one embedded PostgreSQL (the service's own
 * start-up code) in a temporary DATA_DIR, shared by every server the benchmark starts, removed after.
 */
export async function prepareDatabase (databaseUrl: string | undefined): Promise<BenchDatabase> {
  if (databaseUrl) return scratchDatabase(databaseUrl)
  const dataDir = await mkdtemp(join(tmpdir(), 'st-bench-pg-'))
  const embedded = await startEmbeddedPostgres(dataDir, pino({ level: 'warn' }))
  return {
    url: embedded.connectionString,
    description: `embedded PostgreSQL started by the benchmark (data in ${dataDir})`,
    kind: 'embedded',
    async dispose () {
      await embedded.stop()
      await rm(dataDir, { recursive: true, force: true })
    }
  }
}

async function scratchDatabase (databaseUrl: string): Promise<BenchDatabase> {
  const name = `st_bench_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 })
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(databaseUrl)
  url.pathname = `/${name}`
  return {
    url: url.href,
    description: `scratch database ${name} on ${url.hostname}:${url.port || 5432}`,
    kind: 'external',
    async dispose () {
      const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 })
      await client.connect()
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      } finally {
        await client.end()
      }
    }
  }
}
