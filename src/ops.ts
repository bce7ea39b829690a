import Fastify, { type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import type { Registry } from 'prom-client'
import config from '../plugins/config.js'
import health from '../plugins/health.js'
import metricsEndpoint from '../plugins/metrics-endpoint.js'
import { QuietLog } from './access-log.js'
import { closeConnectionsWhenIdle } from './connection-drain.js'
import type { Environment } from './config.js'
import { installErrorHandlers } from './errors.js'
import type { Lifecycle } from './lifecycle.js'
import { commonServerOptions } from './server-options.js'

export interface BuildOpsOptions {
  env: Environment
  logger?: Logger | false
  registry: Registry
  lifecycle: Lifecycle
}

/**
 * The ops instance (HEALTH_PORT): probes and metrics only, nothing of the public API. No
 * under-pressure here: a probe must answer even while the api sheds load.
 */
export async function buildOps (opts: BuildOpsOptions): Promise<FastifyInstance> {
  const ops = Fastify({ ...commonServerOptions(opts.logger, opts.env), logController: new QuietLog() })
  closeConnectionsWhenIdle(ops)
  await ops.register(config, { env: opts.env })
  installErrorHandlers(ops)
  await ops.register(health, { lifecycle: opts.lifecycle })
  await ops.register(metricsEndpoint, { registry: opts.registry, lifecycle: opts.lifecycle })
  return ops
}
