import fp from 'fastify-plugin'
import type { Registry } from 'prom-client'
import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/**
 * Stands in for plugins/metrics.ts: no route timings, no request counter, no hooks at all. Keeps
 * the plugin's name and its `metricsRegistry` decoration, which the domain plugins depend on.
 */
export default fp(
  async function metricsLeftOut (fastify, opts: { registry: Registry }) {
    fastify.decorate('metricsRegistry', opts.registry)
  },
  { name: 'metrics' }
)
