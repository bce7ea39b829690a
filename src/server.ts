import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import { Registry } from 'prom-client'
import { buildApp } from './app.js'
import { ManifestError } from './agents/manifest.js'
import { ConfigError, type Environment } from './config.js'
import { Lifecycle } from './lifecycle.js'
import { createLogger } from './logger.js'
import { buildOps } from './ops.js'

// The entry point: read the environment, build the ops and api instances, install graceful shutdown
// before listening, listen. Everything else lives in the factories.

function readEnvironment (): Environment {
  try {
    // A .env file beside package.json, for `npm start` on a laptop; real variables win over it.
    process.loadEnvFile('.env')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  return process.env
}

const env = readEnvironment()
const log = createLogger(env.LOG_LEVEL)
const lifecycle = new Lifecycle()
const registry = new Registry()
let app: FastifyInstance | undefined
let ops: FastifyInstance | undefined

function failStartup (err: unknown): never {
  // A bad variable or manifest is the operator's to fix: the message alone says what, no stack.
  if (err instanceof ConfigError || err instanceof ManifestError) log.fatal(err.message)
  else log.fatal({ err }, `start-up failed: ${(err as Error).message}`)
  log.flush()
  process.exit(1)
}

try {
  ops = await buildOps({ env, logger: log, registry, lifecycle })
} catch (err) {
  failStartup(err)
}
const config = ops.config

closeWithGrace(
  {
    delay: config.SHUTDOWN_TIMEOUT_MS,
    logger: { error: (message: unknown) => log.error(message instanceof Error ? { err: message } : {}, String(message)) },
    onTimeout: (delay) => log.error({ delayMs: delay }, 'graceful shutdown timed out: in-flight work was cut off, exiting with code 1'),
    onSecondSignal: (signal) => log.error({ signal }, 'second signal: exiting at once')
  },
  async ({ signal, err }) => {
    const started = Date.now()
    lifecycle.beginShutdown()
    if (err) log.error({ err }, 'fatal error: shutting down')
    else log.info({ signal }, 'shutting down: readiness is now 503, draining in-flight requests')
    // Connections are closed as soon as they carry no request (connection-drain.ts).
    await lifecycle.drain({
      timeoutMs: config.SHUTDOWN_TIMEOUT_MS,
      closeApi: async () => app?.close(),
      closeOps: async () => ops?.close(),
      log
    })
    log.info({ durationMs: Date.now() - started }, 'shutdown complete')
    log.flush()
  }
)

try {
  // The ops port listens first: liveness answers and readiness says 503 while the database starts
  // and migrates, which can take a while on a large upgrade.
  await ops.listen({ host: config.HOST, port: config.HEALTH_PORT })
  app = await buildApp({ env, logger: log, registry, lifecycle })
  await app.listen({ host: config.HOST, port: config.PORT })
} catch (err) {
  failStartup(err)
}
lifecycle.markReady()
if (!config.API_KEYS) log.warn('API_KEYS is not set: the API is open to anyone who can reach it')
log.info(
  { api: `http://${config.HOST}:${config.PORT}`, ops: `http://${config.HOST}:${config.HEALTH_PORT}`, database: app.databaseKind, cache: app.cache.backend },
  'SmallTalk Server ready'
)
