import t from 'tap'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { AgentRegistry } from '../../src/agents/registry.js'
import { AnthropicProvider } from '../../src/providers/anthropic.js'
import { EchoProvider } from '../../src/providers/echo.js'
import { GeminiProvider } from '../../src/providers/gemini.js'
import { OpenAiProvider } from '../../src/providers/openai.js'
import type { LazyProvider } from '../../src/providers/index.js'

function agent (id: string, provider: AgentDefinition['provider'], extra: Partial<AgentDefinition> = {}): AgentDefinition {
  return { id, name: id, description: '', provider, model: 'm', systemPrompt: '', temperature: 0.7, maxTokens: 100, expertise: [], ...extra }
}

const team = [
  agent('gpt', 'openai'),
  agent('claude', 'anthropic', { fallback: 'gpt' }),
  agent('flash', 'gemini'),
  agent('ollama', 'openai-compatible', { baseUrl: 'http://localhost:11434/v1' }),
  agent('proxied', 'openai-compatible'),
  agent('offline', 'echo')
]

t.test('without keys the keyed agents run on echo, for a stated reason; a local openai-compatible server needs none', async (t) => {
  const registry = new AgentRegistry(team, { OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' })
  t.same(registry.echoSubstitutions(), [
    { id: 'gpt', configuredProvider: 'openai', reason: 'no OPENAI_API_KEY' },
    { id: 'claude', configuredProvider: 'anthropic', reason: 'no ANTHROPIC_API_KEY' },
    { id: 'flash', configuredProvider: 'gemini', reason: 'no GEMINI_API_KEY' }
  ])
  for (const id of ['gpt', 'claude', 'flash', 'offline']) t.equal(registry.effectiveProvider(id), 'echo', id)
  t.equal(registry.effectiveProvider('ollama'), 'openai-compatible')
  t.equal(registry.effectiveProvider('proxied'), 'openai-compatible', 'OPENAI_BASE_URL serves it, no key needed')
  t.equal(registry.health('gpt').message, 'answers with the built-in echo provider (no OPENAI_API_KEY)')
  t.equal(registry.health('offline').message, 'not checked yet', 'an echo agent by choice is not a substitution')
  t.equal(registry.describe('offline')?.echoReason, undefined)
})

t.test('an openai-compatible agent with neither its own baseUrl nor OPENAI_BASE_URL runs on echo', async (t) => {
  const registry = new AgentRegistry(team)
  t.same(registry.echoSubstitutions().find((s) => s.id === 'proxied'), { id: 'proxied', configuredProvider: 'openai-compatible', reason: 'no baseUrl (or OPENAI_BASE_URL)' })
})

t.test('with keys every agent gets its real provider, named after the manifest', async (t) => {
  const registry = new AgentRegistry(team, { OPENAI_API_KEY: 'k', ANTHROPIC_API_KEY: 'k', GEMINI_API_KEY: 'k', OPENAI_BASE_URL: 'http://127.0.0.1:9/v1' })
  t.same(registry.echoSubstitutions(), [])
  const adapter = (id: string) => (registry.providerFor(id) as LazyProvider).adapter()
  t.ok((await adapter('gpt')) instanceof OpenAiProvider)
  t.ok((await adapter('claude')) instanceof AnthropicProvider)
  t.ok((await adapter('flash')) instanceof GeminiProvider)
  t.ok((await adapter('ollama')) instanceof OpenAiProvider)
  t.ok(registry.providerFor('offline') instanceof EchoProvider)
  for (const agent of team) {
    t.equal(registry.effectiveProvider(agent.id), agent.provider, agent.id)
    t.equal(registry.providerFor(agent.id).name, agent.provider, `${agent.id}: the provider is named after the manifest`)
    t.equal(registry.describe(agent.id)?.echoReason, undefined)
  }
  t.match(registry.list()[1], { id: 'claude', provider: 'anthropic', effectiveProvider: 'anthropic', status: 'healthy' })
})

t.test('agents on the same endpoint share one provider', async (t) => {
  const twins = [agent('a', 'openai'), agent('b', 'openai', { model: 'other' }), agent('c', 'openai', { baseUrl: 'http://127.0.0.1:9/other/v1' })]
  const registry = new AgentRegistry(twins, { OPENAI_API_KEY: 'k' })
  t.equal(registry.providerFor('a'), registry.providerFor('b'), 'same base URL and key: one provider (one SDK client)')
  t.not(registry.providerFor('a'), registry.providerFor('c'), 'a per-agent baseUrl gets its own')
})

t.test('lookups, defaults and health', async (t) => {
  const registry = new AgentRegistry(team)
  t.same(registry.defaultAgentIds(), team.map((a) => a.id))
  t.same(registry.definitions(), team)
  t.equal(registry.get('claude'), team[1])
  t.equal(registry.get('nobody'), undefined)
  t.ok(registry.has('gpt'))
  t.notOk(registry.has('nobody'))
  t.equal(registry.describe('nobody'), undefined)
  t.match(registry.list()[1], { id: 'claude', fallback: 'gpt', provider: 'anthropic', effectiveProvider: 'echo', echoReason: 'no ANTHROPIC_API_KEY', status: 'healthy' })

  t.equal(registry.status('gpt'), 'healthy')
  t.notOk(registry.isDown('gpt'))
  t.equal(registry.setStatus('gpt', 'down', 'timeouts'), 'healthy')
  t.equal(registry.setStatus('gpt', 'degraded'), 'down', 'returns the previous status')
  t.equal(registry.health('gpt').message, 'timeouts', 'the message stays when none is given')
  t.equal(registry.setStatus('gpt', 'down'), 'degraded')
  t.ok(registry.isDown('gpt'))
  t.notOk(registry.isDown('nobody'))
  t.equal(registry.list()[0]!.status, 'down')
  t.throws(() => registry.setStatus('nobody', 'down'), { message: 'Unknown agent "nobody"' })
  t.throws(() => registry.status('nobody'), { message: 'Unknown agent "nobody"' })
})

t.test('providerFor: the echo provider, paced by ECHO_TOKEN_DELAY_MS, for substitutes and echo agents alike', async (t) => {
  const registry = new AgentRegistry(team, { ECHO_TOKEN_DELAY_MS: 15 })
  const provider = registry.providerFor(team[0]!)
  t.ok(provider instanceof EchoProvider)
  t.equal(registry.providerFor('offline'), provider, 'one shared instance')
  const started = Date.now()
  const chunks = []
  const signal = new AbortController().signal
  for await (const chunk of provider.stream({ model: 'm', systemPrompt: '', messages: [{ role: 'user', content: 'a b' }], temperature: 0, maxTokens: 10, signal })) chunks.push(chunk)
  t.equal(chunks.length, 5, '4 deltas and usage')
  t.ok(Date.now() - started >= 40, 'paced')
})

t.test('duplicate ids are refused', async (t) => {
  t.throws(() => new AgentRegistry([agent('a', 'echo'), agent('a', 'echo')]), { message: 'Agent id "a" is defined twice' })
})
