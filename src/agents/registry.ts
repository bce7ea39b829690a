import { EchoProvider } from '../providers/echo.js'
import type { Provider } from '../providers/provider.js'
import type { AgentDefinition, AgentStatus } from './agent.js'

/** The part of the configuration the registry reads (a subset of Config, so tests can pass less). */
export interface RegistryConfig {
  OPENAI_API_KEY?: string | undefined
  ANTHROPIC_API_KEY?: string | undefined
  GEMINI_API_KEY?: string | undefined
  ECHO_TOKEN_DELAY_MS?: number | undefined
}

export interface AgentHealth {
  status: AgentStatus
  /** When the health monitor last probed the agent; null until it has. */
  checkedAt: string | null
  message: string
}

/** An agent as the API shows it: its definition, the provider that really answers, its health. */
export interface AgentInfo extends AgentDefinition {
  /** The provider that answers: the manifest's, or 'echo' when that one cannot run here. */
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

/** Provider clients that this build contains. Real LLM clients come in a later issue. */
const BUILT_IN_PROVIDERS = new Set<string>(['echo'])

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

  constructor(definitions: AgentDefinition[], config: RegistryConfig = {}) {
    const echo = new EchoProvider({ tokenDelayMs: config.ECHO_TOKEN_DELAY_MS ?? 0 })
    for (const definition of definitions) {
      if (this.entries.has(definition.id)) throw new Error(`Agent id "${definition.id}" is defined twice`)
      const echoReason = definition.provider === 'echo' ? undefined : whyEcho(definition, config)
      this.entries.set(definition.id, {
        definition,
        provider: echo,
        effectiveProvider: 'echo',
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
  list(): AgentInfo[] {
    return [...this.entries.values()].map((entry) => this.info(entry))
  }

  /** The definitions in manifest order (the router's candidates). */
  definitions(): AgentDefinition[] {
    return [...this.entries.values()].map((entry) => entry.definition)
  }

  get(id: string): AgentDefinition | undefined {
    return this.entries.get(id)?.definition
  }

  has(id: string): boolean {
    return this.entries.has(id)
  }

  /** The agent with its provider and status, or undefined. */
  describe(id: string): AgentInfo | undefined {
    const entry = this.entries.get(id)
    return entry && this.info(entry)
  }

  /** The agents of a session created without `agents`: all of them, in manifest order. */
  defaultAgentIds(): string[] {
    return [...this.entries.keys()]
  }

  status(id: string): AgentStatus {
    return this.entry(id).health.status
  }

  isDown(id: string): boolean {
    return this.entries.get(id)?.health.status === 'down'
  }

  health(id: string): AgentHealth {
    return { ...this.entry(id).health }
  }

  /**
   * Records a health observation (the health monitor calls this) and returns the previous status,
   * so that the caller can tell a transition from a repeat.
   */
  setStatus(id: string, status: AgentStatus, message?: string, checkedAt: Date = new Date()): AgentStatus {
    const entry = this.entry(id)
    const previous = entry.health.status
    entry.health = { status, checkedAt: checkedAt.toISOString(), message: message ?? entry.health.message }
    return previous
  }

  /** The provider that answers for this agent (echo when its own cannot run here). */
  providerFor(agent: AgentDefinition | string): Provider {
    return this.entry(typeof agent === 'string' ? agent : agent.id).provider
  }

  /** 'echo' when the agent runs on echo, else the manifest's provider: what API answers report. */
  effectiveProvider(id: string): ProviderName {
    return this.entry(id).effectiveProvider
  }

  /** The agents whose manifest names a provider that cannot run here, and why: for the start-up warning. */
  echoSubstitutions(): EchoSubstitution[] {
    const found: EchoSubstitution[] = []
    for (const { definition, echoReason } of this.entries.values()) {
      if (echoReason) found.push({ id: definition.id, configuredProvider: definition.provider, reason: echoReason })
    }
    return found
  }

  private entry(id: string): Entry {
    const entry = this.entries.get(id)
    if (!entry) throw new Error(`Unknown agent "${id}"`)
    return entry
  }

  private info(entry: Entry): AgentInfo {
    const info: AgentInfo = { ...entry.definition, effectiveProvider: entry.effectiveProvider, status: entry.health.status }
    if (entry.echoReason) info.echoReason = entry.echoReason
    return info
  }
}

/** Why an agent cannot use its own provider here: a missing key first, else a missing client. */
function whyEcho(agent: AgentDefinition, config: RegistryConfig): string | undefined {
  const missingKey = missingKeyFor(agent, config)
  if (missingKey) return `no ${missingKey}`
  if (!BUILT_IN_PROVIDERS.has(agent.provider)) return 'provider client not in this build'
  return undefined
}

function missingKeyFor(agent: AgentDefinition, config: RegistryConfig): string | undefined {
  switch (agent.provider) {
    case 'openai':
      return config.OPENAI_API_KEY ? undefined : 'OPENAI_API_KEY'
    case 'openai-compatible':
      // An agent with its own baseUrl talks to a local server (Ollama, vLLM) that needs no key.
      return agent.baseUrl || config.OPENAI_API_KEY ? undefined : 'OPENAI_API_KEY'
    case 'anthropic':
      return config.ANTHROPIC_API_KEY ? undefined : 'ANTHROPIC_API_KEY'
    case 'gemini':
      return config.GEMINI_API_KEY ? undefined : 'GEMINI_API_KEY'
    default:
      return undefined
  }
}
