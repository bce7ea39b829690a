import type { FastifyError, FastifyInstance } from 'fastify'
import { databaseUnavailable, isDatabaseUnavailable } from './db/errors.js'
import { DomainError, type DomainErrorKind, type Failure } from './domain-errors.js'

/** The error body of every non-2xx answer (DESIGN section 3). */
export interface ErrorBody {
  statusCode: number
  error: string
  message: string
  code?: string
  details?: unknown
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  406: 'Not Acceptable',
  409: 'Conflict',
  410: 'Gone',
  412: 'Precondition Failed',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Entity',
  428: 'Precondition Required',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout'
}

export function reasonPhrase (statusCode: number): string {
  return REASONS[statusCode] ?? (statusCode >= 500 ? 'Internal Server Error' : 'Bad Request')
}

/** The HTTP status of each kind of domain failure. */
const STATUS_OF_KIND: Record<DomainErrorKind, number> = {
  invalid: 400,
  not_found: 404,
  not_acceptable: 406,
  conflict: 409,
  busy: 409,
  limited: 429,
  gone: 410,
  precondition_failed: 412,
  precondition_required: 428,
  unavailable: 503,
  bad_gateway: 502,
  timeout: 504
}

export function statusOf (failure: Pick<Failure, 'kind'>): number {
  return STATUS_OF_KIND[failure.kind]
}

/** The error body of a domain failure (an idempotent replay, an SSE `error` event). */
export function failureBody (failure: Failure): ErrorBody {
  const statusCode = statusOf(failure)
  const body: ErrorBody = { statusCode, error: reasonPhrase(statusCode), message: failure.message }
  if (failure.code !== undefined) body.code = failure.code
  if (failure.details !== undefined) body.details = failure.details
  return body
}

/**
 * The error body for an error raised after an SSE stream opened (no status line left to set): a
 * domain failure or an outage as the client's error, anything else as a generic 500.
 */
export function streamErrorBody (raised: unknown): ErrorBody {
  if (raised instanceof DomainError) return failureBody(raised.toFailure())
  if (isDatabaseUnavailable(raised)) return failureBody(databaseUnavailable().toFailure())
  return { statusCode: 500, error: reasonPhrase(500), message: GENERIC_500 }
}

const GENERIC_500 = 'Something went wrong on our side; it has been logged.'

/**
 * One error handler per instance. Domain failures (DomainError) keep their message, code and
 * details at every status, with Retry-After when they carry one. Other client errors (validation,
 * a malformed body) keep their message and validation details and are logged at info; any other
 * error is a 5xx logged with its stack and answered with a generic body, unless it was raised on
 * purpose with a message for the client (`expose: true`).
 */
export function installErrorHandlers (fastify: FastifyInstance): void {
  fastify.setErrorHandler(function errorHandler (raised: FastifyError & { details?: unknown; expose?: boolean }, request, reply) {
    // A database outage is the client's 503 (retry later), not our 500.
    const outage = !raised.statusCode && !(raised instanceof DomainError) && isDatabaseUnavailable(raised)
    if (outage) request.log.warn({ err: { message: raised.message, code: raised.code } }, 'database unavailable')
    const domain = outage ? databaseUnavailable() : raised instanceof DomainError ? raised : undefined
    if (domain) {
      // Raised on purpose with a message for the client (a provider timeout, an outage, a 404): not a bug.
      const body = failureBody(domain.toFailure())
      if (body.statusCode >= 500) request.log.warn({ err: { message: domain.message, code: domain.code } }, 'request failed')
      else request.log.info({ err: { message: domain.message, code: domain.code } }, 'request rejected')
      if (domain.retryAfterSeconds !== undefined) reply.header('retry-after', String(domain.retryAfterSeconds))
      return reply.code(body.statusCode).send(body)
    }
    const statusCode = raised.statusCode && raised.statusCode >= 400 && raised.statusCode < 600 ? raised.statusCode : 500
    const body: ErrorBody = { statusCode, error: reasonPhrase(statusCode), message: raised.message }
    if (statusCode >= 500 && raised.expose !== true) {
      request.log.error({ err: raised }, 'request failed')
      body.message = GENERIC_500
    } else if (statusCode >= 500) {
      // An HTTP error raised on purpose with a message for the client.
      request.log.warn({ err: { message: raised.message, code: raised.code } }, 'request failed')
      if (raised.code) body.code = raised.code
    } else {
      request.log.info({ err: { message: raised.message, code: raised.code } }, 'request rejected')
      if (raised.code) body.code = raised.code
      if (raised.validation) body.details = raised.validation.map((v) => ({ field: fieldOf(v), message: v.message }))
      else if (raised.details !== undefined) body.details = raised.details
    }
    return reply.code(statusCode).send(body)
  })

  fastify.setNotFoundHandler(function notFound (request, reply) {
    const body: ErrorBody = { statusCode: 404, error: 'Not Found', message: `Route ${request.method} ${request.url.split('?')[0]} not found` }
    return reply.code(404).send(body)
  })
}

/** The field a validation error is about, as a JSON pointer: `/content`, `/metadata/x`, `/colour`. */
function fieldOf (v: { instancePath: string; params?: Record<string, unknown> }): string {
  const extra = v.params?.additionalProperty ?? v.params?.missingProperty
  if (typeof extra === 'string') return `${v.instancePath}/${extra}`
  return v.instancePath || '/'
}
