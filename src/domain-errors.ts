/**
 * Errors the domain modules raise, free of HTTP: the error handler maps each kind to its status.
 * Their messages are written for the API caller.
 */
export type DomainErrorKind =
  | 'invalid' // 400
  | 'not_found' // 404
  | 'not_acceptable' // 406
  | 'conflict' // 409
  | 'busy' // 409 with Retry-After
  | 'gone' // 410
  | 'precondition_failed' // 412
  | 'precondition_required' // 428
  | 'unavailable' // 503
  | 'bad_gateway' // 502
  | 'timeout' // 504

const STATUS: Record<DomainErrorKind, number> = {
  invalid: 400,
  not_found: 404,
  not_acceptable: 406,
  conflict: 409,
  busy: 409,
  gone: 410,
  precondition_failed: 412,
  precondition_required: 428,
  unavailable: 503,
  bad_gateway: 502,
  timeout: 504
}

export class DomainError extends Error {
  override name = 'DomainError'
  readonly statusCode: number
  /** Client-facing: the message says what happened even for 5xx. */
  readonly expose = true

  constructor (
    readonly kind: DomainErrorKind,
    message: string,
    readonly extra: { code?: string; details?: unknown; retryAfterSeconds?: number } = {}
  ) {
    super(message)
    this.statusCode = STATUS[kind]
  }

  get code (): string | undefined {
    return this.extra.code
  }

  get details (): unknown {
    return this.extra.details
  }

  get headers (): Record<string, string> | undefined {
    return this.extra.retryAfterSeconds === undefined ? undefined : { 'retry-after': String(this.extra.retryAfterSeconds) }
  }
}

/**
 * PostgreSQL text and jsonb cannot hold U+0000: refuse it with a clear 400 rather than fail the
 * insert. Everything else is stored exactly as sent.
 */
export function assertStorable (field: string, value: unknown): void {
  if (someString(value, (text) => text.includes('\u0000'))) {
    throw new DomainError('invalid', `${field} contains a NUL character (U+0000), which cannot be stored`, { code: 'NUL_CHARACTER', details: [{ field: `/${field}` }] })
  }
  // A lone surrogate (half of a UTF-16 pair) is not text: it would be stored as U+FFFD, not as sent.
  if (someString(value, (text) => !(text as unknown as { isWellFormed(): boolean }).isWellFormed())) {
    throw new DomainError('invalid', `${field} contains a lone surrogate (invalid Unicode), which cannot be stored as sent`, { code: 'INVALID_UNICODE', details: [{ field: `/${field}` }] })
  }
}

/** Whether any string in the value (object keys included) satisfies the test. */
function someString (value: unknown, test: (text: string) => boolean): boolean {
  if (typeof value === 'string') return test(value)
  if (Array.isArray(value)) return value.some((item) => someString(item, test))
  if (value && typeof value === 'object') return Object.entries(value).some(([key, inner]) => test(key) || someString(inner, test))
  return false
}
