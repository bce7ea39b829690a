import fp from 'fastify-plugin'
import fastifyPostgres from '@fastify/postgres'
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded-postgres.js'
import { migrateDatabase, waitForSchema } from '../src/db/migrate.js'
import { flushAnnouncements } from '../src/events/event-log.js'

export interface MigrationState {
  /** The database's schema version. */
  version: number
  /** The newest migration this build ships. */
  expected: number
}

// How often a replica whose schema is behind looks again (MIGRATE_ON_START=false, release job running).
const SCHEMA_CHECK_INTERVAL_MS = 2000

declare module 'fastify' {
  interface FastifyInstance {
    migrations: MigrationState
    /** Where the service's PostgreSQL lives: an external server or the embedded one. */
    databaseKind: 'external' | 'embedded'
    /** For the few dedicated connections outside the pool (LISTEN). Contains the password: never log it. */
    databaseUrl: string
  }
}

/** "postgres://user@host:5432/db" without the password, for messages and logs. */
function describeTarget (connectionString: string): string {
  try {
    const url = new URL(connectionString)
    return `${url.hostname}:${url.port || 5432}${url.pathname}`
  } catch {
    return 'the configured server'
  }
}

/**
 * The pg pool (@fastify/postgres) on DATABASE_URL, or on an embedded PostgreSQL when it is unset.
 * The connection is proved and the schema migrated (or, with MIGRATE_ON_START=false, awaited) before
 * the plugin finishes, so a wrong URL fails start-up with a clear message instead of failing the
 * first request, and nothing runs against a schema older than this build's.
 */
export default fp(
  async function postgres (fastify) {
    const config = fastify.config
    let embedded: EmbeddedDatabase | undefined
    let connectionString = config.DATABASE_URL
    if (!connectionString) {
      embedded = await startEmbeddedPostgres(config.DATA_DIR, fastify.log)
      connectionString = embedded.connectionString
    }
    // Registered before @fastify/postgres so that it runs after the pool has ended.
    fastify.addHook('onClose', async () => {
      await embedded?.stop()
    })
    await fastify.register(fastifyPostgres, {
      connectionString,
      max: config.DB_POOL_MAX,
      connectionTimeoutMillis: config.DB_CONNECT_TIMEOUT_MS,
      query_timeout: config.DB_QUERY_TIMEOUT_MS,
      idleTimeoutMillis: 30_000,
      application_name: 'smalltalk-server'
    })
    // A client that loses its server (restart, network, pg_terminate_backend) emits 'error': on the
    // pool while idle, on the client itself while checked out, between two statements of a
    // transaction. Unheard, either would crash the process; heard, the query in progress fails (a
    // 503 for the request) and the pool replaces the connection.
    // Registered after @fastify/postgres, so it runs before the pool ends: events committed in the
    // last moments are still announced to the live streams.
    fastify.addHook('onClose', async () => flushAnnouncements(fastify.pg.pool))
    fastify.pg.pool.on('error', (err) => fastify.log.warn({ err: { message: err.message } }, 'idle PostgreSQL connection lost'))
    fastify.pg.pool.on('connect', (client) => {
      client.on('error', (err) => fastify.log.warn({ err: { message: err.message } }, 'PostgreSQL connection lost while in use'))
    })

    const target = describeTarget(connectionString)
    try {
      await fastify.pg.query('SELECT 1')
    } catch (err) {
      throw new Error(`PostgreSQL is unreachable at ${target}: ${(err as Error).message}`, { cause: err })
    }
    fastify.decorate('databaseKind', embedded ? 'embedded' : 'external')
    fastify.decorate('databaseUrl', connectionString)

    if (config.MIGRATE_ON_START) await migrateDatabase(connectionString, fastify.log, config.DB_CONNECT_TIMEOUT_MS)
    const { expected, current } = await waitForSchema(fastify.pg.pool, fastify.log, { intervalMs: SCHEMA_CHECK_INTERVAL_MS })
    fastify.decorate<MigrationState>('migrations', { version: current, expected })
  },
  { name: 'postgres', dependencies: ['config'] }
)
