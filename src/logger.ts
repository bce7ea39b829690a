import pino, { type Logger, type LoggerOptions } from 'pino'

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

export function loggerOptions(level: string | undefined): LoggerOptions {
  return {
    // An invalid LOG_LEVEL is reported by the config plugin; the logger must exist to report it.
    level: level && LEVELS.has(level) ? level : 'info',
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    // Pretty output only for a person at a terminal; JSON lines everywhere else (containers, CI).
    ...(process.stdout.isTTY ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } } : {})
  }
}

/** One logger for the process, shared by the api and ops instances. */
export function createLogger(level: string | undefined): Logger {
  return pino(loggerOptions(level))
}
