import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'

export interface MetricsEndpointOptions {
  registry: Registry
}

/** GET /metrics on the ops instance: the registry the api instance fills, in Prometheus text format. */
export default fp(
  async function metricsEndpoint(fastify, opts: MetricsEndpointOptions) {
    const { registry } = opts
    fastify.get('/metrics', { logLevel: 'warn', schema: { hide: true } }, async (_request, reply) => {
      const body = await registry.metrics()
      return reply.type(registry.contentType).send(body)
    })
  },
  { name: 'metrics-endpoint' }
)
