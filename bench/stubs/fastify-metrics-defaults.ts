import fp from 'fastify-plugin'
import fastifyMetrics, { type IMetricsPluginOptions } from 'fastify-metrics'
import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/**
 * Stands in for the fastify-metrics package: the same plugin with its own route timers switched
 * back on at their defaults (per request: an onRequest and an onResponse hook, a timer closure and
 * a WeakMap entry, a histogram and a summary, in prom-client's global registry), on top of the
 * route hook of plugins/metrics.ts. Process metrics go to the same registry as in production.
 */
export default {
  default: fp(async function benchMetricsDefaults (fastify, opts: Partial<IMetricsPluginOptions>) {
    await fastify.register(fastifyMetrics.default, {
      endpoint: null,
      promClient: opts.promClient,
      defaultMetrics: opts.defaultMetrics,
      clearRegisterOnInit: true
    })
  })
}
