import t from 'tap'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { AnthropicProvider } from '../../src/providers/anthropic.js'
import { EchoProvider } from '../../src/providers/echo.js'
import { GeminiProvider } from '../../src/providers/gemini.js'
import { createProvider, endpointFor, missingSetting, ProviderCache, type LazyProvider } from '../../src/providers/index.js'
import { OpenAiProvider } from '../../src/providers/openai.js'

function agent (provider: AgentDefinition['provider'], extra: Partial<AgentDefinition> = {}): AgentDefinition {
  return { id: 'a', name: 'A', description: '', provider, model: 'm', systemPrompt: '', temperature: 0.5, maxTokens: 10, expertise: [], ...extra }
}

const keys = { OPENAI_API_KEY: 'sk-o', ANTHROPIC_API_KEY: 'sk-a', GEMINI_API_KEY: 'g-k' }

t.test('missing settings: each keyed provider needs its key; openai-compatible needs a base URL, not a key', async (t) => {
  t.equal(missingSetting(agent('openai'), {}), 'OPENAI_API_KEY')
  t.equal(missingSetting(agent('anthropic'), {}), 'ANTHROPIC_API_KEY')
  t.equal(missingSetting(agent('gemini'), {}), 'GEMINI_API_KEY')
  t.equal(missingSetting(agent('openai-compatible'), {}), 'baseUrl (or OPENAI_BASE_URL)')
  t.equal(missingSetting(agent('openai-compatible', { baseUrl: 'http://127.0.0.1:11434/v1' }), {}), undefined)
  t.equal(missingSetting(agent('openai-compatible'), { OPENAI_BASE_URL: 'http://127.0.0.1:11434/v1' }), undefined)
  t.equal(missingSetting(agent('echo'), {}), undefined)
  for (const provider of ['openai', 'anthropic', 'gemini'] as const) t.equal(missingSetting(agent(provider), keys), undefined)
})

t.test('endpoints: the agent baseUrl, else the variable, else the public API (never called by the tests)', async (t) => {
  t.same(endpointFor(agent('openai'), keys), { sdk: 'openai', baseUrl: 'https://api.openai.com/v1', apiKey: 'sk-o' })
  t.same(endpointFor(agent('anthropic'), keys), { sdk: 'anthropic', baseUrl: 'https://api.anthropic.com', apiKey: 'sk-a' })
  t.same(endpointFor(agent('gemini'), keys), { sdk: 'gemini', baseUrl: 'https://generativelanguage.googleapis.com', apiKey: 'g-k' })
  const env = { ...keys, OPENAI_BASE_URL: 'http://127.0.0.1:1/v1', ANTHROPIC_BASE_URL: 'http://127.0.0.1:2', GEMINI_BASE_URL: 'http://127.0.0.1:3' }
  t.equal(endpointFor(agent('openai'), env).baseUrl, 'http://127.0.0.1:1/v1')
  t.equal(endpointFor(agent('anthropic'), env).baseUrl, 'http://127.0.0.1:2')
  t.equal(endpointFor(agent('gemini'), env).baseUrl, 'http://127.0.0.1:3')
  for (const provider of ['openai', 'anthropic', 'gemini'] as const) {
    t.equal(endpointFor(agent(provider, { baseUrl: 'http://127.0.0.1:9/own' }), env).baseUrl, 'http://127.0.0.1:9/own', `${provider}: the agent's baseUrl wins`)
  }
  t.throws(() => endpointFor(agent('openai'), {}), { message: 'Agent "a" (openai) cannot call its provider: no OPENAI_API_KEY' })
})

t.test('openai-compatible sends OPENAI_API_KEY only to OPENAI_BASE_URL', async (t) => {
  const env = { OPENAI_API_KEY: 'sk-o', OPENAI_BASE_URL: 'http://127.0.0.1:1/v1' }
  t.same(endpointFor(agent('openai-compatible'), env), { sdk: 'openai', baseUrl: 'http://127.0.0.1:1/v1', apiKey: 'sk-o' })
  t.equal(endpointFor(agent('openai-compatible', { baseUrl: 'http://127.0.0.1:1/v1/' }), env).apiKey, 'sk-o', 'the same server, written with a slash')
  t.equal(endpointFor(agent('openai-compatible', { baseUrl: 'http://127.0.0.1:11434/v1' }), env).apiKey, undefined, 'another server: no key')
  t.equal(endpointFor(agent('openai-compatible'), { OPENAI_BASE_URL: 'http://127.0.0.1:1/v1' }).apiKey, undefined)
})

t.test('createProvider: the adapter for each provider, named after the manifest; one per endpoint in a cache', async (t) => {
  const env = { ...keys, OPENAI_BASE_URL: 'http://127.0.0.1:1/v1', ECHO_TOKEN_DELAY_MS: 5 }
  // The SDK adapters are imported on first use (LazyProvider); echo is built at once.
  const adapter = (definition: AgentDefinition) => (createProvider(definition, env) as LazyProvider).adapter()
  t.type(await adapter(agent('openai')), OpenAiProvider)
  t.type(await adapter(agent('anthropic')), AnthropicProvider)
  t.type(await adapter(agent('gemini')), GeminiProvider)
  t.type(createProvider(agent('echo'), env), EchoProvider)
  t.equal(createProvider(agent('openai-compatible'), env).name, 'openai-compatible')

  const cache = new ProviderCache()
  const a = createProvider(agent('openai', { model: 'x' }), env, cache)
  t.equal(createProvider(agent('openai', { model: 'y' }), env, cache), a, 'same endpoint: same provider')
  t.not(createProvider(agent('openai-compatible'), env, cache), a, 'another manifest name: another provider (it names itself)')
  t.not(createProvider(agent('openai', { baseUrl: 'http://127.0.0.1:2/v1' }), env, cache), a, 'another base URL')
  t.not(createProvider(agent('openai'), { ...env, OPENAI_API_KEY: 'sk-other' }, cache), a, 'another key')
  t.equal(createProvider(agent('echo'), env, cache), createProvider(agent('echo', { id: 'b' }), env, cache))
  t.throws(() => createProvider(agent('gemini'), {}), { message: /no GEMINI_API_KEY/ })
})

t.test('a provider loads its adapter (and SDK) on first use, once, and answers through it', async (t) => {
  const provider = createProvider(agent('anthropic'), { ...keys, ANTHROPIC_BASE_URL: 'http://127.0.0.1:1' }) as LazyProvider
  t.equal(provider.name, 'anthropic', 'named before anything is loaded')
  const [first, second] = await Promise.all([provider.adapter(), provider.adapter()])
  t.type(first, AnthropicProvider)
  t.equal(first, second, 'loaded once, even when asked twice at once')
  const controller = new AbortController()
  // Port 1 refuses connections: the call goes through the adapter and fails as a connection error.
  await t.rejects(provider.probe({ model: 'm', mode: 'models', signal: controller.signal }), { name: 'ProviderError', kind: 'connection' })
})
