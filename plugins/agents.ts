import { existsSync } from 'node:fs'
import { isAbsolute, join, resolve } from 'node:path'
import fp from 'fastify-plugin'
import { ConfigError, EnvSchema } from '../src/config.js'
import { loadManifest } from '../src/agents/manifest.js'
import type { GroupPreset } from '../src/groups/group-settings.js'
import { ProviderGuard } from '../src/agents/provider-guard.js'
import { AgentRegistry } from '../src/agents/registry.js'
import { LlmMetrics } from '../src/metrics/llm-metrics.js'
import { PROJECT_ROOT } from '../src/paths.js'
import type { McpServerConfig } from '../src/tools/tools.js'

declare module 'fastify' {
  interface FastifyInstance {
    agents: AgentRegistry
    /** The manifest's group presets (`groups:`), by id: GET /v1/groups, and `preset` on a new session. */
    groupPresets: ReadonlyMap<string, GroupPreset>
    /** LLM calls, tokens, breakers, fallbacks and agent health, in the registry the ops instance serves. */
    llmMetrics: LlmMetrics
    /** Retries and circuit breakers around every provider call; the health monitor listens to its traffic. */
    providerGuard: ProviderGuard
    /** The manifest's `mcpServers:` (validated; headers resolved from the environment): plugins/tools.ts connects them. */
    mcpServerConfigs: readonly McpServerConfig[]
  }
}

const DEFAULT_AGENTS_FILE = (EnvSchema.properties.AGENTS_FILE as { default?: string }).default

/**
 * Where AGENTS_FILE points: an absolute path as is; a relative one from the working directory, except
 * that the default manifest is also found beside package.json when the service is started elsewhere.
 */
export function resolveAgentsFile (value: string, cwd = process.cwd()): string {
  if (isAbsolute(value)) return value
  const fromCwd = resolve(cwd, value)
  if (value === DEFAULT_AGENTS_FILE && !existsSync(fromCwd)) return join(PROJECT_ROOT, value)
  return fromCwd
}

/**
 * Loads and validates the agents manifest (a bad one stops start-up with a message naming the file,
 * the agent and the field) and decorates `fastify.agents` with the registry.
 */
export default fp(
  async function agents (fastify) {
    const config = fastify.config
    const file = resolveAgentsFile(config.AGENTS_FILE)
    const { agents: definitions, groups, mcpServers } = await loadManifest(file, { env: config, environment: fastify.environment })
    const registry = new AgentRegistry(definitions, config)
    fastify.decorate('agents', registry)
    fastify.decorate('groupPresets', new Map(groups.map((group) => [group.id, group])))
    fastify.decorate('mcpServerConfigs', mcpServers)
    // The SDKs of the agents' providers, loaded before the service reports ready.
    fastify.addHook('onReady', async () => registry.preload())
    const llmMetrics = new LlmMetrics(
      fastify.metricsRegistry,
      registry.list().map((agent) => ({ id: agent.id, provider: agent.effectiveProvider, model: agent.model, fallback: agent.fallback }))
    )
    fastify.decorate('llmMetrics', llmMetrics)
    fastify.decorate(
      'providerGuard',
      new ProviderGuard({
        metrics: llmMetrics,
        log: fastify.log,
        maxRetries: config.LLM_MAX_RETRIES,
        retryBaseDelayMs: config.LLM_RETRY_BASE_MS,
        retryMaxDelayMs: config.LLM_RETRY_MAX_MS,
        breakerFailures: config.LLM_BREAKER_FAILURES,
        breakerCooldownMs: config.LLM_BREAKER_COOLDOWN_MS
      })
    )
    if (config.ROUTER === 'llm') {
      if (!config.ROUTER_AGENT) throw new ConfigError('Invalid configuration: ROUTER=llm needs ROUTER_AGENT, the id of the manifest agent that routes')
      if (!registry.has(config.ROUTER_AGENT)) {
        throw new ConfigError(`Invalid configuration: ROUTER_AGENT "${config.ROUTER_AGENT}" is not an agent of ${file} (agents: ${registry.defaultAgentIds().join(', ')})`)
      }
      fastify.log.info({ router: config.ROUTER_AGENT, timeoutMs: config.ROUTER_TIMEOUT_MS }, 'agents are routed by an LLM, with expertise scoring as the fallback')
    }

    fastify.log.info({ file, agents: registry.defaultAgentIds(), groups: groups.map((group) => group.id) }, `loaded ${definitions.length} agents and ${groups.length} group presets`)
    const onEcho = registry.echoSubstitutions()
    if (onEcho.length > 0) {
      const list = onEcho.map((agent) => `${agent.id} (${agent.configuredProvider}: ${agent.reason})`).join(', ')
      fastify.log.warn(
        { agents: onEcho },
        `agents answering with the built-in echo provider instead of a real model: ${list}`
      )
    }
  },
  { name: 'agents', dependencies: ['config', 'metrics'] }
)
