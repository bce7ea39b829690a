/**
 * Errors the domain modules raise, free of HTTP: the error handler (src/errors.ts) maps each kind
 * to its status and headers. Their messages are written for the API caller.
 */
export type DomainErrorKind =
  | 'invalid' // the request is wrong
  | 'not_found'
  | 'not_acceptable' // no answer in a media type the client accepts
  | 'conflict'
  | 'busy' // try again shortly (retryAfterSeconds)
  | 'limited' // over a tenant's limit (retryAfterSeconds)
  | 'gone' // ended for good
  | 'precondition_failed'
  | 'precondition_required'
  | 'unavailable' // a dependency is away; retry later
  | 'bad_gateway' // a provider failed
  | 'timeout' // a provider did not answer in time

/** A domain failure as data: what an idempotent retry replays, and what an SSE `error` event carries. */
export interface Failure {
  kind: DomainErrorKind
  message: string
  code?: string | undefined
  details?: unknown
  retryAfterSeconds?: number | undefined
}

export class DomainError extends Error {
  override name = 'DomainError'

  constructor (
    readonly kind: DomainErrorKind,
    message: string,
    readonly extra: { code?: string | undefined; details?: unknown; retryAfterSeconds?: number | undefined } = {}
  ) {
    super(message)
  }

  static from (failure: Failure): DomainError {
    return new DomainError(failure.kind, failure.message, { code: failure.code, details: failure.details, retryAfterSeconds: failure.retryAfterSeconds })
  }

  get code (): string | undefined {
    return this.extra.code
  }

  get details (): unknown {
    return this.extra.details
  }

  get retryAfterSeconds (): number | undefined {
    return this.extra.retryAfterSeconds
  }

  toFailure (): Failure {
    const failure: Failure = { kind: this.kind, message: this.message }
    if (this.code !== undefined) failure.code = this.code
    if (this.details !== undefined) failure.details = this.details
    if (this.retryAfterSeconds !== undefined) failure.retryAfterSeconds = this.retryAfterSeconds
    return failure
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

/**
 * A metadata object must fit in METADATA_MAX_BYTES as JSON: it is stored with its session or
 * message and copied into the cached history and every history page.
 */
export function assertMetadataSize (field: string, value: Record<string, unknown> | undefined, maxBytes: number): void {
  if (value === undefined || maxBytes <= 0) return
  const bytes = Buffer.byteLength(JSON.stringify(value))
  if (bytes > maxBytes) {
    throw new DomainError('invalid', `${field} is ${bytes} bytes as JSON; at most ${maxBytes} are allowed (METADATA_MAX_BYTES)`, {
      code: 'METADATA_TOO_LARGE',
      details: [{ field: `/${field}`, message: `must be at most ${maxBytes} bytes as JSON` }]
    })
  }
}
