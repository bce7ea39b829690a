/**
 * The servers measured by `npm run bench`. Every `app` variant is the real buildApp factory; a
 * variant that switches a plugin off swaps one import of the factory for a stub at module
 * resolution (bench/hooks), so the factory itself is never copied into the benchmark.
 */

/** One import to replace: `specifier` as imported by the file ending in `parent`, by `stub` (in bench/stubs). */
export interface Substitution {
  parent: string
  specifier: string
  stub: string
}

export interface LogSetting {
  /** logDestination (src/logger.ts) with { sync }; the production logger is asynchronous. */
  sync: boolean
  /** sonic-boom minLength: bytes buffered before a write (0 = write as soon as possible). */
  minLength?: number
  /** sonic-boom periodicFlush: ms after which buffered lines are written anyway (0 = never). */
  periodicFlush?: number
  /** Where lines go: a file (default), /dev/null (no disk), or nowhere (formatted, never written). */
  target?: 'file' | 'dev-null' | 'discard'
  /** 'string': pino.destination() as pino makes it by default (sonic-boom's string mode), not src/logger.ts's. */
  stream?: 'string'
}

export interface Variant {
  name: string
  description: string
  /**
   * baseline: bare Fastify; target: the production configuration; cost: one plugin off (its cost is
   * full vs this); candidate: a proposed change to the service code; info: for comparison.
   */
  role: 'baseline' | 'target' | 'cost' | 'candidate' | 'info'
  kind: 'bare' | 'app'
  /** For cost variants: the plugin this variant leaves out, whose cost is full vs this variant. */
  without?: string
  log: LogSetting | false
  /** bare only: one onResponse hook that counts requests, written async or with a done callback. */
  bareHook?: 'async' | 'sync'
  /** Measured only when asked for (BENCH_VARIANTS=all or by name), to keep the default run short. */
  extra?: true
  env?: Record<string, string>
  substitute?: Substitution[]
}

const asyncLog: LogSetting = { sync: false }
// Lines leave in 4 KiB writes (about 25 access lines), and at least once a second when traffic is low.
const bufferedLog: LogSetting = { sync: false, minLength: 4096, periodicFlush: 1000 }

const noUnderPressure: Substitution = { parent: 'src/app.ts', specifier: '@fastify/under-pressure', stub: 'under-pressure-off.ts' }
const noMetricsPlugin: Substitution = { parent: 'src/app.ts', specifier: '../plugins/metrics.js', stub: 'metrics-plugin-off.ts' }
const noProcessMetrics: Substitution = { parent: 'plugins/metrics.ts', specifier: 'fastify-metrics', stub: 'fastify-metrics-off.ts' }
const fastifyMetricsDefaults: Substitution = {
  parent: 'plugins/metrics.ts',
  specifier: 'fastify-metrics',
  stub: 'fastify-metrics-defaults.ts'
}
const fastifyDefaultLog: Substitution = { parent: 'src/app.ts', specifier: './access-log.js', stub: 'fastify-default-log.ts' }

export const VARIANTS: Variant[] = [
  // The figure: bare Fastify against the production api instance.
  {
    name: 'bare',
    description: 'bare Fastify, no logger, no hook, one route returning the same JSON',
    role: 'baseline',
    kind: 'bare',
    log: false
  },
  {
    name: 'full',
    description: 'buildApp in production configuration: access log at info (the asynchronous destination of src/logger.ts, to a file), route metrics, under-pressure',
    role: 'target',
    kind: 'app',
    log: asyncLog
  },
  {
    name: 'bare-one-hook',
    description:
      'bare with one sync onResponse hook counting requests: any hook (or a logger) makes Fastify track every response (finish listeners, timing), which bare skips',
    role: 'info',
    kind: 'bare',
    log: false,
    bareHook: 'sync'
  },
  {
    name: 'string-mode-log',
    description: "full, but the log written through pino's default destination (sonic-boom's string mode, as shipped before src/logger.ts's buffer mode)",
    role: 'info',
    kind: 'app',
    log: { sync: false, stream: 'string' }
  },
  {
    name: 'full-sync-log',
    extra: true,
    description: 'full, but the log written synchronously (logDestination with { sync: true })',
    role: 'info',
    kind: 'app',
    log: { sync: true }
  },
  // What each plugin costs: full without it.
  {
    name: 'no-access-log',
    description: 'full with ACCESS_LOG=false (logger on, no per-request line)',
    role: 'cost',
    without: 'access log line',
    kind: 'app',
    log: asyncLog,
    env: { ACCESS_LOG: 'false' }
  },
  {
    name: 'no-route-metrics',
    description: 'full without plugins/metrics.ts (its onResponse hook: route histogram and request counter; and the process metrics)',
    role: 'cost',
    without: 'metrics (route histogram hook)',
    kind: 'app',
    log: asyncLog,
    substitute: [noMetricsPlugin]
  },
  {
    name: 'no-under-pressure',
    description: 'full without @fastify/under-pressure',
    role: 'cost',
    without: 'under-pressure',
    kind: 'app',
    log: asyncLog,
    substitute: [noUnderPressure]
  },
  // Extras (BENCH_VARIANTS=all, or by name).
  {
    name: 'buffered-log',
    extra: true,
    description: 'full, the log written in 4 KiB batches (logDestination with { minLength: 4096, periodicFlush: 1000 })',
    role: 'candidate',
    kind: 'app',
    log: bufferedLog
  },
  {
    name: 'full-elu-limit',
    extra: true,
    description: 'full with MAX_EVENT_LOOP_UTILIZATION=0.98 (the limit shipped before): at saturation most answers become 503',
    role: 'info',
    kind: 'app',
    log: asyncLog,
    env: { MAX_EVENT_LOOP_UTILIZATION: '0.98' }
  },
  {
    name: 'bare-async-hook',
    extra: true,
    description: 'bare-one-hook with the hook written async (a promise and a microtask per request)',
    role: 'info',
    kind: 'bare',
    log: false,
    bareHook: 'async'
  },
  {
    name: 'no-process-metrics',
    extra: true,
    description: "full without fastify-metrics, i.e. without prom-client's default process metrics (GC observer, event-loop monitor)",
    role: 'cost',
    without: 'process metrics (fastify-metrics)',
    kind: 'app',
    log: asyncLog,
    substitute: [noProcessMetrics]
  },
  {
    name: 'full-log-dev-null',
    extra: true,
    description: 'full, the log written to /dev/null (write calls without a disk)',
    role: 'info',
    kind: 'app',
    log: { sync: false, target: 'dev-null' }
  },
  {
    name: 'full-log-discarded',
    extra: true,
    description: 'full, log lines formatted by pino and then discarded (no write call at all)',
    role: 'info',
    kind: 'app',
    log: { sync: false, target: 'discard' }
  },
  {
    name: 'no-plugins',
    extra: true,
    description: 'buildApp with logger off, no metrics, no under-pressure: the floor of the factory',
    role: 'info',
    kind: 'app',
    log: false,
    substitute: [noMetricsPlugin, noUnderPressure]
  },
  {
    name: 'fastify-default-log',
    extra: true,
    description: "full, but Fastify's default request logging (two lines, req/res serialised) instead of src/access-log.ts",
    role: 'info',
    kind: 'app',
    log: asyncLog,
    substitute: [fastifyDefaultLog]
  },
  {
    name: 'fastify-metrics-timers',
    extra: true,
    description: "full, plus fastify-metrics' own route timers at their defaults (histogram and summary per route: the configuration measured in issue 2)",
    role: 'info',
    kind: 'app',
    log: asyncLog,
    substitute: [fastifyMetricsDefaults]
  }
]

/**
 * Default: every variant not marked extra. BENCH_VARIANTS=all: every variant; BENCH_VARIANTS=a,b:
 * those (bare and full are always kept: the ratio needs them).
 */
export function selectVariants (filter: string | undefined): Variant[] {
  if (!filter) return VARIANTS.filter((variant) => !variant.extra)
  if (filter === 'all') return VARIANTS
  const wanted = new Set(filter.split(',').map((name) => name.trim()).concat(['bare', 'full']))
  const unknown = [...wanted].filter((name) => !VARIANTS.some((variant) => variant.name === name))
  if (unknown.length > 0) throw new Error(`BENCH_VARIANTS: unknown variant(s) ${unknown.join(', ')}`)
  return VARIANTS.filter((variant) => wanted.has(variant.name))
}
