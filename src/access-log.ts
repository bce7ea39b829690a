import { LogController, type FastifyReply, type FastifyRequest } from 'fastify'

/**
 * One structured access line per request, written when the response is done. Fastify's default
 * writes two (incoming, completed) with the whole request and response objects serialised: about a
 * third of the throughput of a small route. Probe and metrics scrapes stay out of the log.
 */
export class AccessLog extends LogController {
  constructor (private readonly enabled: boolean) {
    super({ requestIdLogLabel: 'reqId', disableRequestLogging: !enabled })
  }

  override incomingRequest (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    if (!this.enabled) return
    const line = {
      method: request.method,
      url: request.url,
      statusCode: reply.statusCode,
      responseTimeMs: Math.round(reply.elapsedTime * 100) / 100
    }
    if (error) reply.log.error({ ...line, err: error }, 'request errored')
    else reply.log.info(line, 'request completed')
  }
}

/** The ops instance logs nothing per request: probes every few seconds would drown the log. */
export class QuietLog extends LogController {
  constructor () {
    super({ requestIdLogLabel: 'reqId', disableRequestLogging: true })
  }
}
