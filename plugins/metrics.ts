import fp from 'fastify-plugin'
import fastifyMetrics from 'fastify-metrics'
import promClient, { type Registry } from 'prom-client'

declare module 'fastify' {
  interface FastifyInstance {
    /** The registry the ops instance serves: domain plugins register their metrics in it. */
    metricsRegistry: Registry
  }
}

export interface MetricsPluginOptions {
  registry: Registry
}

// Latency buckets for an API whose fast paths answer in about a millisecond and whose LLM replies
// take seconds: fine at the bottom, wide at the top.
const HTTP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

/**
 * Metrics of the api instance, collected into the registry the ops instance serves (the api port
 * exposes no /metrics). fastify-metrics collects the process metrics; the route timings are one
 * histogram labelled by method, route template and status, observed in a single onResponse hook
 * from Fastify's own reply.elapsedTime: fastify-metrics' route timers (a timer object and a WeakMap
 * entry per request, plus a per-route summary) cost about a fifth of the throughput of a small route
 * in `npm run bench`, and Prometheus computes percentiles from the histogram anyway.
 */
export default fp(
  async function metrics (fastify, opts: MetricsPluginOptions) {
    const { registry } = opts
    fastify.decorate('metricsRegistry', registry)
    // fastify-metrics is CommonJS with exports.default; under NodeNext the plugin is its .default.
    await fastify.register(fastifyMetrics.default, {
      endpoint: null,
      promClient,
      defaultMetrics: { enabled: true, register: registry },
      routeMetrics: { enabled: false }
    })

    const routeTimings = new promClient.Histogram({
      name: 'http_request_duration_seconds',
      help: 'Duration of api requests, by method, route template (never the raw URL) and status',
      labelNames: ['method', 'route', 'status_code'],
      buckets: HTTP_BUCKETS,
      registers: [registry]
    })
    const requestsTotal = new promClient.Counter({
      name: 'smalltalk_requests_total',
      help: 'HTTP requests answered by the public API',
      registers: [registry]
    })
    fastify.addHook('onResponse', (request, reply, done) => {
      requestsTotal.inc()
      if (request.method !== 'HEAD' && request.method !== 'OPTIONS') {
        routeTimings.observe(
          { method: request.method, route: request.routeOptions.url ?? '__unknown__', status_code: String(reply.statusCode) },
          reply.elapsedTime / 1000
        )
      }
      done()
    })

    new promClient.Gauge({
      name: 'smalltalk_memory_usage_bytes',
      help: 'V8 heap in use (process_resident_memory_bytes has the RSS)',
      registers: [registry],
      collect () {
        this.set(process.memoryUsage().heapUsed)
      }
    })
    const pool = fastify.pg.pool
    new promClient.Gauge({
      name: 'smalltalk_db_pool_connections',
      help: 'PostgreSQL pool connections by state (total = idle + in use)',
      labelNames: ['state'],
      registers: [registry],
      collect () {
        this.set({ state: 'total' }, pool.totalCount)
        this.set({ state: 'idle' }, pool.idleCount)
        this.set({ state: 'waiting' }, pool.waitingCount)
      }
    })
    new promClient.Gauge({
      name: 'smalltalk_db_pool_max',
      help: 'PostgreSQL pool size limit (DB_POOL_MAX)',
      registers: [registry]
    }).set(fastify.config.DB_POOL_MAX)
    new promClient.Gauge({
      name: 'smalltalk_db_migration_version',
      help: 'Schema version of the database, as applied by the migrations',
      registers: [registry]
    }).set(fastify.migrations.version)
    const cache = fastify.cache
    new promClient.Gauge({
      name: 'smalltalk_cache_up',
      help: '1 when the cache backend is usable, 0 when Redis is unreachable (degraded)',
      labelNames: ['backend'],
      registers: [registry],
      collect () {
        this.set({ backend: cache.backend }, cache.state() === 'ok' ? 1 : 0)
      }
    })
  },
  { name: 'metrics', dependencies: ['config', 'postgres', 'redis'] }
)
