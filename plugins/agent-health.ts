import fp from 'fastify-plugin'
import { HealthMonitor } from '../src/agents/health/health-monitor.js'
import type { Clock } from '../src/clock.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The agent health monitor: probes, passive learning (recordTraffic), shared state. */
    agentHealth: HealthMonitor
  }
}

export interface AgentHealthPluginOptions {
  /** Times the monitor's ticks and probes (default: the system clock; tests pass a manual one). */
  clock?: Clock
}

/**
 * The agent health monitor, started once the server is ready (its first tick a second later, so it
 * never competes with start-up) and stopped on close: timers cleared, a probe in flight aborted,
 * nothing written after.
 */
export default fp(
  async function agentHealth (fastify, opts: AgentHealthPluginOptions) {
    const config = fastify.config
    const monitor = new HealthMonitor({
      clock: opts.clock,
      pool: fastify.pg.pool,
      registry: fastify.agents,
      metrics: fastify.llmMetrics,
      log: fastify.log.child({ component: 'agent-health' }),
      intervalMs: config.AGENT_HEALTH_CHECK_INTERVAL * 1000,
      probeMode: config.AGENT_HEALTH_PROBE,
      probeTimeoutMs: config.AGENT_HEALTH_PROBE_TIMEOUT_MS,
      retentionDays: config.HEALTH_CHECK_RETENTION_DAYS,
      secrets: [config.OPENAI_API_KEY, config.ANTHROPIC_API_KEY, config.GEMINI_API_KEY].filter((key): key is string => Boolean(key))
    })
    fastify.decorate('agentHealth', monitor)
    // Passive learning: the provider guard reports every provider call (each retry too) here.
    fastify.providerGuard.onTraffic((agentId, outcome) => monitor.recordTraffic(agentId, outcome))

    // Transitions are announced on the event log's NOTIFY channel: a follower applies them at once
    // instead of at its next tick.
    if (fastify.hasDecorator('eventFeed')) {
      const unsubscribe = fastify.eventFeed.subscribe({
        tenant: '\u0000agent-health',
        matches: (type) => type === 'agent.status_changed',
        deliver: () => monitor.requestSync()
      })
      fastify.addHook('onClose', async () => unsubscribe())
    }

    fastify.addHook('onReady', async () => monitor.start())
    // onClose hooks run in reverse order of registration: this one before the pool closes.
    fastify.addHook('onClose', async () => monitor.stop())
  },
  { name: 'agent-health', dependencies: ['config', 'postgres', 'agents'] }
)
