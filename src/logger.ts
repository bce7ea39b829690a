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
 * pino's own asynchronous destination (sonic-boom, as `pino()` uses on stdout), in buffer mode: each
 * line is encoded to UTF-8 once, when it is written. In its default string mode sonic-boom measures
 * the UTF-8 length of the whole pending chunk again for every line it appends (a chunk grows to
 * 16 KiB while a write is in flight) and copies the chunk once more in `fs.write`: 0.7 to 1.7 µs of
 * CPU per request (4 to 6% of GET /'s throughput) in `npm run bench`. Same lines, same timing.
 */
export function logDestination (dest: number | string = 1, opts: LogDestinationOptions = {}): LogDestination {
  const stream = pino.destination({ sync: false, minLength: 0, periodicFlush: 0, ...opts, dest, contentMode: 'buffer' })
  const writeBuffer = stream.write as unknown as (this: LogDestination, data: Buffer) => boolean
  stream.write = (line: string) => writeBuffer.call(stream, Buffer.from(line))
  return stream
}

/** One logger for the process, shared by the api and ops instances; JSON lines on stdout. */
export function createLogger (level: string | undefined): Logger {
  const options = loggerOptions(level)
  return options.transport ? pino(options) : pino(options, logDestination(1))
}
