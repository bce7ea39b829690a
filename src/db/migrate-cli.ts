import envSchema from 'env-schema'
import { ConfigError, EnvSchema, describeConfigErrors, selectEnvironment, type Config } from '../config.js'
import { createLogger } from '../logger.js'
import { startEmbeddedPostgres, type EmbeddedDatabase } from './embedded-postgres.js'
import { migrateDatabase } from './migrate.js'

// `npm run db:migrate`: applies pending migrations to DATABASE_URL (or to the embedded PostgreSQL in
// DATA_DIR when it is unset) and exits non-zero on failure. Safe to run beside starting replicas:
// the same advisory lock serialises them.

function readConfig (): Config {
  const data = selectEnvironment(process.env)
  try {
    return envSchema({ schema: EnvSchema, data, env: false }) as Config
  } catch (err) {
    const errors = (err as { errors?: Parameters<typeof describeConfigErrors>[0] }).errors
    throw errors ? new ConfigError(describeConfigErrors(errors, data)) : err
  }
}

const log = createLogger(process.env.LOG_LEVEL)
let embedded: EmbeddedDatabase | undefined
let exitCode = 0
try {
  const config = readConfig()
  let connectionString = config.DATABASE_URL
  if (!connectionString) {
    embedded = await startEmbeddedPostgres(config.DATA_DIR, log)
    connectionString = embedded.connectionString
  }
  const result = await migrateDatabase(connectionString, log, config.DB_CONNECT_TIMEOUT_MS)
  log.info({ version: result.version, applied: result.applied }, result.applied.length ? 'migrations applied' : 'database already up to date')
} catch (err) {
  log.fatal({ err }, `migration failed: ${(err as Error).message}`)
  exitCode = 1
} finally {
  await embedded?.stop()
}
log.flush()
process.exitCode = exitCode
