import pino, { type Logger, type LoggerOptions } from 'pino'

/** pino's destination stream (sonic-boom, a dependency of pino's, not of this project). */
export type LogDestination = ReturnType<typeof pino.destination>
export interface LogDestinationOptions {
  /** Write with fs.writeSync (blocks the event loop on a slow reader); default false, as pino's stdout stream. */
  sync?: boolean
  /** Bytes buffered before a write (0, the default: write as soon as the previous write is done). */
  minLength?: number
  /** With minLength: ms after which buffered lines are written anyway. */
  periodicFlush?: number
}

// Never log credentials: API keys, provider keys, cookies, connection strings. Explicit paths only:
// a leading wildcard ('*.apiKey') makes pino's redactor walk every property of every line, which
// cost about a third of the api's throughput in `npm run bench`.
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]',
  'headers.authorization',
  'apiKey',
  'password',
  'connectionString',
  'provider.apiKey',
  'config.DATABASE_URL',
  'config.REDIS_URL',
  'config.API_KEYS',
  'config.OPENAI_API_KEY',
  'config.ANTHROPIC_API_KEY',
  'config.GEMINI_API_KEY'
]

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])

export function loggerOptions (level: string | undefined): LoggerOptions {
  return {
    // An invalid LOG_LEVEL is reported by the config plugin; the logger must exist to report it.
    level: level && LEVELS.has(level) ? level : 'info',
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    // Pretty output only for a person at a terminal; JSON lines everywhere else (containers, CI).
    ...(process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } } : {})
  }
}

/**
 * pino's own destination (sonic-boom, what `pino()` makes for stdout) with its documented options:
 * asynchronous unless `sync`, each line written as soon as the previous write is done, flushed at exit.
 */
export function logDestination (dest: number | string = 1, opts: LogDestinationOptions = {}): LogDestination {
  return pino.destination({ sync: false, minLength: 0, ...opts, dest })
}

/** One logger for the process, shared by the api and ops instances; JSON lines on stdout. */
export function createLogger (level: string | undefined): Logger {
  const options = loggerOptions(level)
  return options.transport ? pino(options) : pino(options, logDestination(1))
}
