import fp from 'fastify-plugin'
import { Type } from 'typebox'
import type { Lifecycle } from '../src/lifecycle.js'
import { EventLoopMonitor, checkAgents, checkCache, checkMemory, checkPostgres, checkTools, type CheckResult } from '../src/health/checks.js'
import { SERVICE_VERSION } from '../src/paths.js'

export interface HealthPluginOptions {
  lifecycle: Lifecycle
}

const ReadyCheck = Type.String({ description: 'ok | degraded | disabled | error | pending' })
const ReadyBody = Type.Object({
  ready: Type.Boolean(),
  phase: Type.String(),
  checks: Type.Object({ postgres: ReadyCheck, redis: ReadyCheck, migrations: ReadyCheck })
})
const Service = Type.Object({
  status: Type.String(),
  message: Type.Optional(Type.String()),
  latencyMs: Type.Optional(Type.Number())
})
const ToolsService = Type.Object({
  ...Service.properties,
  servers: Type.Record(Type.String(), Type.String(), { description: 'Each MCP server of the manifest: connected, connecting or down' })
})
const HealthBody = Type.Object({
  status: Type.Union([Type.Literal('healthy'), Type.Literal('degraded'), Type.Literal('unhealthy')]),
  phase: Type.String(),
  uptime: Type.Number(),
  version: Type.String(),
  timestamp: Type.String(),
  services: Type.Object({ postgres: Service, redis: Service, memory: Service, eventLoop: Service, agents: Service, tools: ToolsService })
})

const READY_WORD: Record<CheckResult['status'], string> = { up: 'ok', degraded: 'degraded', down: 'error', disabled: 'disabled' }

/**
 * The probes of the ops instance. /healthz never touches a dependency (an outage must not make
 * Kubernetes restart healthy pods); /ready and /health run real, time-bounded checks on each call.
 */
export default fp(
  async function health (fastify, opts: HealthPluginOptions) {
    const { lifecycle } = opts
    const config = fastify.config
    const eventLoop = new EventLoopMonitor()
    fastify.addHook('onClose', async () => eventLoop.stop())
    let sampledSinceReady = false
    const sinceReady = () => {
      if (!sampledSinceReady && lifecycle.phase === 'ready') {
        eventLoop.reset()
        sampledSinceReady = true
      }
      return eventLoop
    }
    const probeOptions = { logLevel: 'warn' as const }

    fastify.get(
      '/healthz',
      { ...probeOptions, schema: { response: { 200: Type.Object({ status: Type.Literal('ok') }) } } },
      async () => ({ status: 'ok' as const })
    )

    fastify.get(
      '/ready',
      { ...probeOptions, schema: { response: { 200: ReadyBody, 503: ReadyBody } } },
      async (_request, reply) => {
        const deps = lifecycle.dependencies
        if (!deps) {
          const pending = { postgres: 'pending', redis: 'pending', migrations: 'pending' }
          return reply.code(503).send({ ready: false, phase: lifecycle.phase, checks: pending })
        }
        const [postgres, redis] = await Promise.all([
          checkPostgres(deps.pool, config.HEALTH_CHECK_TIMEOUT_MS),
          checkCache(deps.cache, config.HEALTH_CHECK_TIMEOUT_MS)
        ])
        const checks = {
          postgres: READY_WORD[postgres.status],
          redis: READY_WORD[redis.status],
          migrations: deps.migrations.version >= deps.migrations.expected ? 'ok' : 'pending'
        }
        // Redis is a cache: losing it degrades the service but never takes it out of rotation.
        const ready = lifecycle.phase === 'ready' && postgres.status === 'up' && checks.migrations === 'ok'
        return reply.code(ready ? 200 : 503).send({ ready, phase: lifecycle.phase, checks })
      }
    )

    fastify.get(
      '/health',
      { ...probeOptions, schema: { response: { 200: HealthBody, 503: HealthBody } } },
      async (_request, reply) => {
        const deps = lifecycle.dependencies
        const starting: CheckResult = { status: 'down', message: `service is ${lifecycle.phase}` }
        const [postgres, redis] = deps
          ? await Promise.all([
            checkPostgres(deps.pool, config.HEALTH_CHECK_TIMEOUT_MS),
            checkCache(deps.cache, config.HEALTH_CHECK_TIMEOUT_MS)
          ])
          : [starting, starting]
        const services = {
          postgres,
          redis,
          memory: checkMemory(config.HEALTH_HEAP_WARN_RATIO),
          eventLoop: sinceReady().check(config.HEALTH_EVENT_LOOP_DELAY_WARN_MS),
          agents: deps ? checkAgents(deps.agents) : starting,
          tools: deps ? checkTools(deps.tools) : { ...starting, servers: {} }
        }
        const unhealthy = !deps || lifecycle.phase === 'stopping' || postgres.status === 'down'
        // Tools are optional: MCP servers that are all down degrade the service, never more.
        const degraded = Object.values(services).some((service) => service.status === 'degraded') || services.tools.status === 'down'
        const status = unhealthy ? 'unhealthy' : degraded ? 'degraded' : 'healthy'
        return reply.code(unhealthy ? 503 : 200).send({
          status,
          phase: lifecycle.phase,
          uptime: Math.round(process.uptime()),
          version: SERVICE_VERSION,
          timestamp: new Date().toISOString(),
          services
        })
      }
    )
  },
  { name: 'health', dependencies: ['config'] }
)
