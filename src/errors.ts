import type { FastifyError, FastifyInstance } from 'fastify'
import { databaseUnavailable, isDatabaseUnavailable } from './db/errors.js'

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

/**
 * One error handler per instance. Client errors keep their message and validation details and are
 * logged at info; a 5xx is logged with its error and answered with a generic body, unless it was
 * raised on purpose with a message meant for the client (`expose: true`, e.g. a provider timeout).
 */
export function installErrorHandlers (fastify: FastifyInstance): void {
  fastify.setErrorHandler(function errorHandler (raised: FastifyError & { expose?: boolean; details?: unknown; headers?: Record<string, string> }, request, reply) {
    // A database outage is the client's 503 (retry later), not our 500.
    const error = !raised.statusCode && isDatabaseUnavailable(raised) ? (databaseUnavailable() as unknown as typeof raised) : raised
    if (error !== raised) request.log.warn({ err: { message: raised.message, code: raised.code } }, 'database unavailable')
    const statusCode = error.statusCode && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500
    const body: ErrorBody = { statusCode, error: reasonPhrase(statusCode), message: error.message }
    if (statusCode >= 500 && error.expose !== true) {
      request.log.error({ err: error }, 'request failed')
      body.message = 'Something went wrong on our side; it has been logged.'
    } else if (statusCode >= 500) {
      // Raised on purpose with a message for the client (a provider timeout, an outage): not a bug.
      request.log.warn({ err: { message: error.message, code: error.code } }, 'request failed')
      if (error.code) body.code = error.code
      if (error.details !== undefined) body.details = error.details
    } else {
      request.log.info({ err: { message: error.message, code: error.code } }, 'request rejected')
      if (error.code) body.code = error.code
      if (error.validation) body.details = error.validation.map((v) => ({ field: fieldOf(v), message: v.message }))
      else if (error.details !== undefined) body.details = error.details
    }
    if (error.headers) reply.headers(error.headers)
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
