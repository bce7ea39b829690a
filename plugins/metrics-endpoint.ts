import fp from 'fastify-plugin'
import promClient, { type Registry } from 'prom-client'
import { checkCache, checkPostgres } from '../src/health/checks.js'
import type { Lifecycle } from '../src/lifecycle.js'

export interface MetricsEndpointOptions {
  registry: Registry
  lifecycle: Lifecycle
}

/**
 * GET /metrics on the ops instance: the registry the api instance fills, in Prometheus text format.
 * The lifecycle and dependency gauges are registered here, by the instance that starts first, so a
 * scrape during start-up already says "not ready" instead of returning nothing.
 */
export default fp(
  async function metricsEndpoint (fastify, opts: MetricsEndpointOptions) {
    const { registry, lifecycle } = opts
    const registers = [registry]
    const timeoutMs = fastify.config.HEALTH_CHECK_TIMEOUT_MS
    new promClient.Gauge({
      name: 'smalltalk_uptime_seconds',
      help: 'Seconds since the process started',
      registers,
      collect () {
        this.set(process.uptime())
      }
    })
    new promClient.Gauge({
      name: 'smalltalk_ready',
      help: '1 while the service has finished starting and is not shutting down',
      registers,
      collect () {
        this.set(lifecycle.phase === 'ready' ? 1 : 0)
      }
    })
    new promClient.Gauge({
      name: 'smalltalk_shutdown_duration_seconds',
      help: 'Seconds the graceful shutdown has been draining (0 while serving)',
      registers,
      collect () {
        this.set(lifecycle.shutdownSeconds())
      }
    })
    new promClient.Gauge({
      name: 'smalltalk_dependency_up',
      help: '1 when the dependency answers its check (as in /ready), 0 when not; redis only when REDIS_URL is set',
      labelNames: ['dependency'],
      registers,
      async collect () {
        const deps = lifecycle.dependencies
        if (!deps) {
          this.set({ dependency: 'postgres' }, 0)
          return
        }
        const [postgres, redis] = await Promise.all([checkPostgres(deps.pool, timeoutMs), checkCache(deps.cache, timeoutMs)])
        this.set({ dependency: 'postgres' }, postgres.status === 'up' ? 1 : 0)
        if (redis.status !== 'disabled') this.set({ dependency: 'redis' }, redis.status === 'up' ? 1 : 0)
      }
    })

    fastify.get('/metrics', { logLevel: 'warn', schema: { hide: true } }, async (_request, reply) => {
      const body = await registry.metrics()
      return reply.type(registry.contentType).send(body)
    })
  },
  { name: 'metrics-endpoint', dependencies: ['config'] }
)
