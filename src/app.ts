import Fastify, { type FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import sensible from '@fastify/sensible'
import underPressure from '@fastify/under-pressure'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import config from '../plugins/config.js'
import postgres from '../plugins/postgres.js'
import redis from '../plugins/redis.js'
import metrics from '../plugins/metrics.js'
import auth from '../plugins/auth.js'
import agents from '../plugins/agents.js'
import tools from '../plugins/tools.js'
import conversations from '../plugins/conversations.js'
import agentHealth from '../plugins/agent-health.js'
import openai from '../plugins/openai.js'
import limits from '../plugins/limits.js'
import rootRoutes from '../routes/root/index.js'
import chatRoutes from '../routes/chat/index.js'
import agentRoutes from '../routes/agents/index.js'
import toolRoutes from '../routes/tools/index.js'
import sessionRoutes from '../routes/sessions/index.js'
import messageRoutes from '../routes/messages/index.js'
import eventRoutes from '../routes/events/index.js'
import groupRoutes from '../routes/groups/index.js'
import openaiRoutes from '../routes/openai/index.js'
import usageRoutes from '../routes/usage/index.js'
import type { Clock } from './clock.js'
import type { Environment } from './config.js'
import { AccessLog } from './access-log.js'
import { closeConnectionsWhenIdle } from './connection-drain.js'
import { installErrorHandlers } from './errors.js'
import { validatorCompiler } from './validation.js'
import { Lifecycle } from './lifecycle.js'
import { commonServerOptions } from './server-options.js'
import { SERVICE_VERSION } from './paths.js'

export interface BuildOptions {
  /** The environment to configure from: process.env in the server, a plain object in tests. */
  env: Environment
  /** A shared pino logger, or false for silence (tests). Default: a new logger at LOG_LEVEL. */
  logger?: Logger | false
  /** The registry the ops instance serves. Default: a fresh one (so two apps never collide). */
  registry?: Registry
  /** Shared with the ops instance of the same process. */
  lifecycle?: Lifecycle
  /** Times the agent health monitor (default: the system clock; tests pass a manual one). */
  clock?: Clock
}

/**
 * The public API instance: one factory for the server, the tests and the benchmarks. Registration
 * order is spelled out: config, sensible, postgres, redis, under-pressure, metrics, domain (auth,
 * agents, tools, conversations), docs, routes.
 */
export async function buildApp (opts: BuildOptions): Promise<FastifyInstance> {
  const lifecycle = opts.lifecycle ?? new Lifecycle()
  const registry = opts.registry ?? new Registry()
  const bodyLimit = Number(opts.env.BODY_LIMIT) > 0 ? Number(opts.env.BODY_LIMIT) : undefined
  const app = Fastify({
    ...commonServerOptions(opts.logger, opts.env),
    logController: new AccessLog(opts.env.ACCESS_LOG !== 'false'),
    bodyLimit,
    trustProxy: opts.env.TRUST_PROXY === 'true',
    // No deadline on a plugin's start: the database's may take as long as a migration does (an
    // index build, or another replica's under the lock), while the ops port answers 503.
    pluginTimeout: 0
  }).withTypeProvider<TypeBoxTypeProvider>()
  closeConnectionsWhenIdle(app)
  app.setValidatorCompiler(validatorCompiler)
  // JSON only: a text/plain body is an unsupported media type (415), not a string to coerce.
  app.removeContentTypeParser('text/plain')

  await app.register(config, { env: opts.env })
  installErrorHandlers(app)
  await app.register(sensible)
  await app.register(postgres)
  await app.register(redis)

  const cfg = app.config
  await app.register(underPressure, {
    maxEventLoopDelay: cfg.MAX_EVENT_LOOP_DELAY_MS,
    maxEventLoopUtilization: cfg.MAX_EVENT_LOOP_UTILIZATION,
    // Utilisation over the last sample, not the average since start-up (which sheds right after a
    // busy boot and barely moves under a real overload after a long uptime).
    eventLoopUtilizationMode: 'interval',
    maxHeapUsedBytes: cfg.MAX_HEAP_USED_BYTES,
    maxRssBytes: cfg.MAX_RSS_BYTES,
    retryAfter: cfg.RETRY_AFTER_SECONDS,
    pressureHandler: (_request, reply, type, value) => {
      reply
        .code(503)
        .header('retry-after', String(cfg.RETRY_AFTER_SECONDS))
        .send({
          statusCode: 503,
          error: 'Service Unavailable',
          message: `The server is overloaded (${type} at ${typeof value === 'number' ? Math.round(value * 100) / 100 : value}); retry after ${cfg.RETRY_AFTER_SECONDS} s`,
          code: 'OVERLOADED'
        })
    }
  })

  await app.register(metrics, { registry })
  await app.register(auth)
  await app.register(agents)
  await app.register(tools)
  await app.register(conversations, { lifecycle })
  await app.register(agentHealth, { clock: opts.clock })
  await app.register(openai, { lifecycle })

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'SmallTalk Server API',
        description: 'Multi-agent LLM conversations: agents, sessions, messages (JSON or Server-Sent Events) and the event log.',
        version: SERVICE_VERSION
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } }
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })

  await app.register(rootRoutes)
  // The web chat page is public (its API calls carry the key), so it sits outside the /v1 block.
  await app.register(chatRoutes)
  // Everything under /v1 needs a valid API key when API_KEYS is set.
  await app.register(
    async function v1 (api) {
      api.addHook('onRequest', api.authenticate)
      // After authentication (the limits are per tenant), before the routes (it adds their hooks).
      await api.register(limits, { clock: opts.clock })
      await api.register(agentRoutes, { prefix: '/agents' })
      await api.register(toolRoutes, { prefix: '/tools' })
      await api.register(groupRoutes, { prefix: '/groups' })
      await api.register(sessionRoutes, { prefix: '/sessions' })
      await api.register(messageRoutes, { prefix: '/sessions' })
      await api.register(eventRoutes, { prefix: '/events' })
      await api.register(openaiRoutes)
      await api.register(usageRoutes, { prefix: '/usage', clock: opts.clock })
    },
    { prefix: '/v1' }
  )

  app.addHook('onReady', async () => {
    lifecycle.attach({ pool: app.pg.pool, cache: app.cache, migrations: app.migrations, databaseKind: app.databaseKind, agents: app.agents, tools: app.tools })
  })
  return app
}
