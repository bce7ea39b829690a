import type { FastifyError, FastifyInstance } from 'fastify'

/** The error body of every non-2xx answer (DESIGN section 3). */
export interface ErrorBody {
  statusCode: number
  error: string
  message: string
  code?: string
  details?: unknown
}

const REASONS: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  406: 'Not Acceptable', 409: 'Conflict', 410: 'Gone', 412: 'Precondition Failed', 413: 'Payload Too Large',
  415: 'Unsupported Media Type', 422: 'Unprocessable Entity', 428: 'Precondition Required', 429: 'Too Many Requests',
  500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout'
}

export function reasonPhrase(statusCode: number): string {
  return REASONS[statusCode] ?? (statusCode >= 500 ? 'Internal Server Error' : 'Bad Request')
}

/**
 * One error handler per instance. Client errors keep their message and validation details and are
 * logged at info; a 5xx is logged with its error and answered with a generic body, unless it was
 * raised on purpose with a message meant for the client (`expose: true`, e.g. a provider timeout).
 */
export function installErrorHandlers(fastify: FastifyInstance): void {
  fastify.setErrorHandler(function errorHandler(error: FastifyError & { expose?: boolean; details?: unknown; headers?: Record<string, string> }, request, reply) {
    const statusCode = error.statusCode && error.statusCode >= 400 && error.statusCode < 600 ? error.statusCode : 500
    const body: ErrorBody = { statusCode, error: reasonPhrase(statusCode), message: error.message }
    if (statusCode >= 500) {
      request.log.error({ err: error }, 'request failed')
      if (error.expose !== true) body.message = 'Something went wrong on our side; it has been logged.'
      else if (error.code) body.code = error.code
    } else {
      request.log.info({ err: { message: error.message, code: error.code } }, 'request rejected')
      if (error.code) body.code = error.code
      if (error.validation) body.details = error.validation.map((v) => ({ field: v.instancePath || v.params?.missingProperty, message: v.message }))
      else if (error.details !== undefined) body.details = error.details
    }
    if (error.headers) reply.headers(error.headers)
    return reply.code(statusCode).send(body)
  })

  fastify.setNotFoundHandler(function notFound(request, reply) {
    const body: ErrorBody = { statusCode: 404, error: 'Not Found', message: `Route ${request.method} ${request.url.split('?')[0]} not found` }
    return reply.code(404).send(body)
  })
}
