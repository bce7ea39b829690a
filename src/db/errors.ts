import { DomainError } from '../domain-errors.js'

// SQLSTATE classes and codes that mean "the database cannot be reached right now", as opposed to a
// bug in a query: connection exceptions (08), operator intervention (57P01-57P05), too many
// connections (53300), read-only (25006) while a replica is promoted.
const UNAVAILABLE_CODES = new Set(['57P01', '57P02', '57P03', '57P04', '57P05', '53300', '25006', '3D000'])
const UNAVAILABLE_MESSAGES = [
  /timeout exceeded when trying to connect/i,
  /Connection terminated/i,
  /Query read timeout/i,
  /connect ECONNREFUSED/i,
  /ECONNRESET/i,
  /Client has encountered a connection error/i,
  /Cannot use a pool after calling end/i,
  /not currently accepting connections/i,
  /does not allow connections/i
]

export function isDatabaseUnavailable (err: unknown): boolean {
  const { code, message } = (err ?? {}) as { code?: unknown; message?: string }
  // A DOMException (an abort) has a numeric code: only SQLSTATEs and socket errors are strings.
  if (typeof code !== 'string') return UNAVAILABLE_MESSAGES.some((pattern) => pattern.test(message ?? ''))
  if (code.startsWith('08') || UNAVAILABLE_CODES.has(code)) return true
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ETIMEDOUT') return true
  return UNAVAILABLE_MESSAGES.some((pattern) => pattern.test(message ?? ''))
}

/** A database outage becomes a 503 the client can retry, never a 500. */
export function databaseUnavailable (): DomainError {
  return new DomainError('unavailable', 'The database is unavailable; retry shortly', { code: 'DATABASE_UNAVAILABLE', retryAfterSeconds: 5 })
}
