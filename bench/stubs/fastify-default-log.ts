import { LogController } from 'fastify'
import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/** Stands in for src/access-log.ts: Fastify's own request logging (incoming + completed lines). */
export class AccessLog extends LogController {
  constructor (enabled: boolean) {
    super({ requestIdLogLabel: 'reqId', disableRequestLogging: !enabled })
  }
}

export class QuietLog extends LogController {
  constructor () {
    super({ requestIdLogLabel: 'reqId', disableRequestLogging: true })
  }
}
