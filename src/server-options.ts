import type { FastifyBaseLogger } from 'fastify'
import type { Logger } from 'pino'
import type { Environment } from './config.js'
import { createLogger } from './logger.js'

/** Applied to the api and ops instances: one process logger, request ids taken from X-Request-Id. */
export function commonServerOptions (logger: Logger | false | undefined, env: Environment) {
  return {
    ...(logger === false ? { logger: false } : { loggerInstance: (logger ?? createLogger(env.LOG_LEVEL)) as FastifyBaseLogger }),
    requestIdHeader: 'x-request-id',
    return503OnClosing: true
  }
}
