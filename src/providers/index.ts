import type { AgentDefinition } from '../agents/agent.js'
import { ANTHROPIC_DEFAULT_BASE_URL, GEMINI_DEFAULT_BASE_URL, OPENAI_DEFAULT_BASE_URL } from './call.js'
import { EchoProvider } from './echo.js'
import type { ChatChunk, ChatRequest, ProbeRequest, Provider } from './provider.js'

/** The part of the configuration the providers read (a subset of Config, so tests can pass less). */
export interface ProviderConfig {
  OPENAI_API_KEY?: string | undefined
  OPENAI_BASE_URL?: string | undefined
  ANTHROPIC_API_KEY?: string | undefined
  ANTHROPIC_BASE_URL?: string | undefined
  GEMINI_API_KEY?: string | undefined
  GEMINI_BASE_URL?: string | undefined
  ECHO_TOKEN_DELAY_MS?: number | undefined
}

/**
 * What an OpenAI-compatible server that needs no key (Ollama, vLLM, LM Studio) is sent: the SDK wants
 * some key, and these servers ignore it.
 */
export const NO_KEY_PLACEHOLDER = 'no-key'

/** Where an agent's calls go and with which key. */
export interface Endpoint {
  sdk: 'openai' | 'anthropic' | 'gemini'
  baseUrl: string
  /** The key to send; undefined when the server needs none (the placeholder is sent). */
  apiKey: string | undefined
}

/**
 * The setting an agent lacks to reach its provider ('OPENAI_API_KEY', ...), or undefined when it has
 * what it needs. An agent that lacks one answers with echo (AgentRegistry) and the start-up log says so.
 */
export function missingSetting (definition: AgentDefinition, config: ProviderConfig): string | undefined {
  switch (definition.provider) {
    case 'openai':
      return config.OPENAI_API_KEY ? undefined : 'OPENAI_API_KEY'
    case 'openai-compatible':
      // The manifest check already demands one of the two; a local server needs no key.
      return definition.baseUrl || config.OPENAI_BASE_URL ? undefined : 'baseUrl (or OPENAI_BASE_URL)'
    case 'anthropic':
      return config.ANTHROPIC_API_KEY ? undefined : 'ANTHROPIC_API_KEY'
    case 'gemini':
      return config.GEMINI_API_KEY ? undefined : 'GEMINI_API_KEY'
    case 'echo':
      return undefined
  }
}

/**
 * The endpoint of a non-echo agent: the agent's own baseUrl, else the provider's base URL variable,
 * else the provider's public API. An openai-compatible agent sends OPENAI_API_KEY only to
 * OPENAI_BASE_URL: a server named by the agent's own baseUrl gets the placeholder, so the OpenAI key
 * never travels to a host it was not configured for.
 */
export function endpointFor (definition: AgentDefinition, config: ProviderConfig): Endpoint {
  const missing = missingSetting(definition, config)
  if (missing) throw new Error(`Agent "${definition.id}" (${definition.provider}) cannot call its provider: no ${missing}`)
  switch (definition.provider) {
    case 'openai':
      return { sdk: 'openai', baseUrl: definition.baseUrl ?? config.OPENAI_BASE_URL ?? OPENAI_DEFAULT_BASE_URL, apiKey: config.OPENAI_API_KEY }
    case 'openai-compatible': {
      const ownServer = definition.baseUrl !== undefined && !sameUrl(definition.baseUrl, config.OPENAI_BASE_URL)
      const baseUrl = (definition.baseUrl ?? config.OPENAI_BASE_URL)!
      return { sdk: 'openai', baseUrl, apiKey: ownServer ? undefined : config.OPENAI_API_KEY || undefined }
    }
    case 'anthropic':
      return { sdk: 'anthropic', baseUrl: definition.baseUrl ?? config.ANTHROPIC_BASE_URL ?? ANTHROPIC_DEFAULT_BASE_URL, apiKey: config.ANTHROPIC_API_KEY }
    case 'gemini':
      return { sdk: 'gemini', baseUrl: definition.baseUrl ?? config.GEMINI_BASE_URL ?? GEMINI_DEFAULT_BASE_URL, apiKey: config.GEMINI_API_KEY }
    case 'echo':
      throw new Error('the echo provider has no endpoint')
  }
}

function sameUrl (a: string, b: string | undefined): boolean {
  return b !== undefined && a.replace(/\/+$/, '') === b.replace(/\/+$/, '')
}

/**
 * The providers built so far, one per (provider name, base URL, key), each over one SDK client per
 * (SDK, base URL, key): agents that share an endpoint share a client (and its connection pool).
 */
export class ProviderCache {
  private readonly providers = new Map<string, Provider>()
  private readonly clients = new Map<string, unknown>()

  provider (name: string, endpoint: Endpoint | undefined, build: () => Provider): Provider {
    const key = endpoint ? `${name}\n${endpoint.baseUrl}\n${endpoint.apiKey ?? ''}` : name
    let provider = this.providers.get(key)
    if (!provider) {
      provider = build()
      this.providers.set(key, provider)
    }
    return provider
  }

  client<T>(endpoint: Endpoint, build: () => T): T {
    const key = `${endpoint.sdk}\n${endpoint.baseUrl}\n${endpoint.apiKey ?? ''}`
    let client = this.clients.get(key) as T | undefined
    if (client === undefined) {
      client = build()
      this.clients.set(key, client)
    }
    return client
  }
}

/**
 * The provider that answers for an agent. Throws when the agent lacks a setting (see missingSetting):
 * the registry substitutes echo for those agents before it gets here. Pass one cache for all the
 * agents of a manifest, so that they share providers and SDK clients.
 */
export function createProvider (definition: AgentDefinition, config: ProviderConfig, cache: ProviderCache = new ProviderCache()): Provider {
  if (definition.provider === 'echo') {
    return cache.provider('echo', undefined, () => new EchoProvider({ tokenDelayMs: config.ECHO_TOKEN_DELAY_MS ?? 0 }))
  }
  const endpoint = endpointFor(definition, config)
  const apiKey = endpoint.apiKey ?? NO_KEY_PLACEHOLDER
  const common = { baseUrl: endpoint.baseUrl, apiKey: endpoint.apiKey }
  // Each SDK is loaded on the first call that needs it: a service whose agents run on echo (no key
  // set) or on one provider never loads the others (the three SDKs weigh about 45 MB of RSS).
  switch (definition.provider) {
    case 'openai':
    case 'openai-compatible': {
      const name = definition.provider
      return cache.provider(name, endpoint, () =>
        new LazyProvider(name, async () => {
          const { OpenAiProvider, createOpenAiClient } = await import('./openai.js')
          return new OpenAiProvider({ ...common, name, client: cache.client(endpoint, () => createOpenAiClient({ apiKey, baseUrl: endpoint.baseUrl })) })
        })
      )
    }
    case 'anthropic':
      return cache.provider('anthropic', endpoint, () =>
        new LazyProvider('anthropic', async () => {
          const { AnthropicProvider, createAnthropicClient } = await import('./anthropic.js')
          return new AnthropicProvider({ ...common, client: cache.client(endpoint, () => createAnthropicClient({ apiKey, baseUrl: endpoint.baseUrl })) })
        })
      )
    case 'gemini':
      return cache.provider('gemini', endpoint, () =>
        new LazyProvider('gemini', async () => {
          const { GeminiProvider, createGeminiClient } = await import('./gemini.js')
          return new GeminiProvider({ ...common, client: cache.client(endpoint, () => createGeminiClient({ apiKey, baseUrl: endpoint.baseUrl })) })
        })
      )
  }
}

/** A provider whose adapter (and SDK) is imported on its first call. */
export class LazyProvider implements Provider {
  private loaded: Promise<Provider> | undefined

  constructor (
    readonly name: string,
    private readonly load: () => Promise<Provider>
  ) {}

  /** The adapter itself (OpenAiProvider, AnthropicProvider, GeminiProvider), imported if need be. */
  adapter (): Promise<Provider> {
    this.loaded ??= this.load()
    return this.loaded
  }

  async * stream (request: ChatRequest): AsyncGenerator<ChatChunk> {
    yield * (await this.adapter()).stream(request)
  }

  async probe (request: ProbeRequest): Promise<void> {
    return (await this.adapter()).probe(request)
  }
}
