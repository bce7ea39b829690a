import Fastify, { type FastifyInstance } from 'fastify'
import pino, { type Logger } from 'pino'
import { Counter, Registry } from 'prom-client'
import { buildApp } from '../src/app.js'
import { Lifecycle } from '../src/lifecycle.js'
import { logDestination, loggerOptions } from '../src/logger.js'
import { SERVICE_VERSION } from '../src/paths.js'
import { loadedStubs } from './stubs/loaded.js'
import type { LogSetting, Variant } from './variants.js'

/** What bench/run.ts tells a server process to build (BENCH_SERVER, JSON). */
export interface ServerSpec {
  variant: Variant
  /** The service environment (DATABASE_URL, REDIS_URL, NODE_ENV, ...). */
  env: Record<string, string>
  /** Where the log lines go (a file the harness counts afterwards). */
  logFile: string
}

export type ServerMessage =
  | { type: 'listening'; port: number }
  | { type: 'failed'; message: string }
  | { type: 'stopped' }

// A server under test, in its own process so that it has a core to itself and the load generator
// in bench/run.ts does not share its event loop. Listens on loopback only.

const spec = JSON.parse(process.env.BENCH_SERVER ?? 'null') as ServerSpec | null
if (!spec || !process.send) throw new Error('bench/server.ts is started by bench/run.ts (fork with BENCH_SERVER)')
const send = (message: ServerMessage) => process.send?.(message)

function createBenchLogger (setting: LogSetting, file: string): Logger {
  // The service's own options (level, redaction) and destination (src/logger.ts), to a file instead
  // of stdout; never pretty, whatever the terminal.
  const { transport: _transport, ...options } = loggerOptions(spec?.env.LOG_LEVEL ?? 'info')
  if (setting.target === 'discard') return pino(options, { write: () => {} })
  const dest = setting.target === 'dev-null' ? '/dev/null' : file
  const destination = { sync: setting.sync, minLength: setting.minLength ?? 0, periodicFlush: setting.periodicFlush ?? 0 }
  if (setting.stream === 'string') return pino(options, pino.destination({ dest, ...destination }))
  return pino(options, logDestination(dest, destination))
}

function buildBare (environment: string, hook: Variant['bareHook']): FastifyInstance {
  const app = Fastify({ logger: false })
  const requests = new Counter({ name: 'bench_requests_total', help: 'requests', registers: [new Registry()] })
  if (hook === 'async') {
    app.addHook('onResponse', async () => {
      requests.inc()
    })
  } else if (hook === 'sync') {
    app.addHook('onResponse', (_request, _reply, done) => {
      requests.inc()
      done()
    })
  }
  app.get('/', async () => ({
    name: 'SmallTalk Server',
    version: SERVICE_VERSION,
    status: 'running',
    environment,
    timestamp: new Date().toISOString()
  }))
  return app
}

let logger: Logger | undefined
let app: FastifyInstance
try {
  if (spec.variant.kind === 'bare') {
    app = buildBare(spec.env.NODE_ENV ?? 'production', spec.variant.bareHook)
  } else {
    logger = spec.variant.log ? createBenchLogger(spec.variant.log, spec.logFile) : undefined
    app = await buildApp({ env: spec.env, logger: logger ?? false, registry: new Registry(), lifecycle: new Lifecycle() })
  }
  const notApplied = (spec.variant.substitute ?? []).filter((s) => !loadedStubs.has(s.stub))
  if (notApplied.length > 0) {
    throw new Error(
      `substitution not applied (is ${notApplied.map((s) => `"${s.specifier}" still imported by ${s.parent}`).join(', ')}?): ` +
        'this variant would measure the full app under another name'
    )
  }
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  send({ type: 'listening', port: typeof address === 'object' && address ? address.port : 0 })
} catch (err) {
  send({ type: 'failed', message: (err as Error).stack ?? String(err) })
  process.exit(1)
}

process.on('message', async (message: { type?: string }) => {
  if (message.type !== 'stop') return
  await app.close()
  // Every line on disk before the harness counts them.
  await new Promise<void>((resolve) => (logger ? logger.flush(() => resolve()) : resolve()))
  send({ type: 'stopped' })
  process.disconnect()
})
