import { EchoProvider } from '../providers/echo.js'
import { createProvider, LazyProvider, missingSetting, ProviderCache, type ProviderConfig } from '../providers/index.js'
import type { Provider } from '../providers/provider.js'
import type { AgentDefinition, AgentStatus } from './agent.js'

/** The part of the configuration the registry reads (a subset of Config, so tests can pass less). */
export type RegistryConfig = ProviderConfig

export interface AgentHealth {
  status: AgentStatus
  /** When the health monitor last probed the agent; null until it has. */
  checkedAt: string | null
  message: string
}

/** An agent as the API shows it: its definition, the provider that really answers, its health. */
export interface AgentInfo extends AgentDefinition {
  /** The provider that answers: the manifest's, or 'echo' when its key is missing. */
  effectiveProvider: ProviderName
  /** Why the agent runs on echo although its manifest names another provider. */
  echoReason?: string
  status: AgentStatus
}

export type ProviderName = AgentDefinition['provider']

export interface EchoSubstitution {
  id: string
  configuredProvider: ProviderName
  reason: string
}

interface Entry {
  definition: AgentDefinition
  provider: Provider
  effectiveProvider: ProviderName
  echoReason: string | undefined
  health: AgentHealth
}

/**
 * The agents of the manifest, the provider each one runs on, and their health. The health monitor
 * drives `setStatus`; the orchestrator reads `isDown` and `providerFor`; the API reads `list`.
 */
export class AgentRegistry {
  private readonly entries = new Map<string, Entry>()

  constructor (definitions: AgentDefinition[], config: RegistryConfig = {}) {
    // One cache for the manifest: agents on the same endpoint share a provider and its SDK client.
    const cache = new ProviderCache()
    const echo = new EchoProvider({ tokenDelayMs: config.ECHO_TOKEN_DELAY_MS ?? 0 })
    for (const definition of definitions) {
      if (this.entries.has(definition.id)) throw new Error(`Agent id "${definition.id}" is defined twice`)
      const missing = missingSetting(definition, config)
      const echoReason = missing ? `no ${missing}` : undefined
      this.entries.set(definition.id, {
        definition,
        provider: echoReason || definition.provider === 'echo' ? echo : createProvider(definition, config, cache),
        effectiveProvider: echoReason ? 'echo' : definition.provider,
        echoReason,
        health: {
          status: 'healthy',
          checkedAt: null,
          message: echoReason ? `answers with the built-in echo provider (${echoReason})` : 'not checked yet'
        }
      })
    }
  }

  /** Every agent in manifest order, with its effective provider and status. */
  list (): AgentInfo[] {
    return [...this.entries.values()].map((entry) => this.info(entry))
  }

  /** The definitions in manifest order (the router's candidates). */
  definitions (): AgentDefinition[] {
    return [...this.entries.values()].map((entry) => entry.definition)
  }

  get (id: string): AgentDefinition | undefined {
    return this.entries.get(id)?.definition
  }

  has (id: string): boolean {
    return this.entries.has(id)
  }

  /** The agent with its provider and status, or undefined. */
  describe (id: string): AgentInfo | undefined {
    const entry = this.entries.get(id)
    return entry && this.info(entry)
  }

  /** The agents of a session created without `agents`: all of them, in manifest order. */
  defaultAgentIds (): string[] {
    return [...this.entries.keys()]
  }

  status (id: string): AgentStatus {
    return this.entry(id).health.status
  }

  isDown (id: string): boolean {
    return this.entries.get(id)?.health.status === 'down'
  }

  health (id: string): AgentHealth {
    return { ...this.entry(id).health }
  }

  /**
   * Records a health observation (the health monitor calls this) and returns the previous status,
   * so that the caller can tell a transition from a repeat.
   */
  setStatus (id: string, status: AgentStatus, message?: string, checkedAt: Date = new Date()): AgentStatus {
    const entry = this.entry(id)
    const previous = entry.health.status
    entry.health = { status, checkedAt: checkedAt.toISOString(), message: message ?? entry.health.message }
    return previous
  }

  /**
   * Loads the SDKs of the providers the agents use (each is imported lazily, on first use): called
   * once the service is up, so that neither the first request nor the first health probe pays for
   * an SDK's import. A keyless service (every agent on echo) loads none.
   */
  async preload (): Promise<void> {
    const lazy = new Set<LazyProvider>()
    for (const entry of this.entries.values()) if (entry.provider instanceof LazyProvider) lazy.add(entry.provider)
    await Promise.all([...lazy].map((provider) => provider.adapter().catch(() => undefined)))
  }

  /** The provider that answers for this agent (echo when its key is missing). */
  providerFor (agent: AgentDefinition | string): Provider {
    return this.entry(typeof agent === 'string' ? agent : agent.id).provider
  }

  /** 'echo' when the agent runs on echo, else the manifest's provider: what API answers report. */
  effectiveProvider (id: string): ProviderName {
    return this.entry(id).effectiveProvider
  }

  /** The agents that answer with echo because their provider's key is missing, and why: for the start-up warning. */
  echoSubstitutions (): EchoSubstitution[] {
    const found: EchoSubstitution[] = []
    for (const { definition, echoReason } of this.entries.values()) {
      if (echoReason) found.push({ id: definition.id, configuredProvider: definition.provider, reason: echoReason })
    }
    return found
  }

  private entry (id: string): Entry {
    const entry = this.entries.get(id)
    if (!entry) throw new Error(`Unknown agent "${id}"`)
    return entry
  }

  private info (entry: Entry): AgentInfo {
    const info: AgentInfo = { ...entry.definition, effectiveProvider: entry.effectiveProvider, status: entry.health.status }
    if (entry.echoReason) info.echoReason = entry.echoReason
    return info
  }
}
