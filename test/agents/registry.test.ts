import t from 'tap'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { AgentRegistry } from '../../src/agents/registry.js'
import { EchoProvider } from '../../src/providers/echo.js'

function agent(id: string, provider: AgentDefinition['provider'], extra: Partial<AgentDefinition> = {}): AgentDefinition {
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

t.test('without keys every non-echo agent runs on echo, for a stated reason', async (t) => {
  const registry = new AgentRegistry(team)
  t.same(registry.echoSubstitutions(), [
    { id: 'gpt', configuredProvider: 'openai', reason: 'no OPENAI_API_KEY' },
    { id: 'claude', configuredProvider: 'anthropic', reason: 'no ANTHROPIC_API_KEY' },
    { id: 'flash', configuredProvider: 'gemini', reason: 'no GEMINI_API_KEY' },
    { id: 'ollama', configuredProvider: 'openai-compatible', reason: 'provider client not in this build' },
    { id: 'proxied', configuredProvider: 'openai-compatible', reason: 'no OPENAI_API_KEY' }
  ])
  for (const { id } of team) t.equal(registry.effectiveProvider(id), 'echo', id)
  t.equal(registry.health('offline').message, 'not checked yet', 'an echo agent by choice is not a substitution')
  t.equal(registry.describe('offline')?.echoReason, undefined)
})

t.test('with keys: still echo in this build, because no client exists yet', async (t) => {
  const registry = new AgentRegistry(team, { OPENAI_API_KEY: 'k', ANTHROPIC_API_KEY: 'k', GEMINI_API_KEY: 'k' })
  t.same(new Set(registry.echoSubstitutions().map((s) => s.reason)), new Set(['provider client not in this build']))
  t.equal(registry.echoSubstitutions().length, 5)
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

t.test('providerFor: the echo provider, paced by ECHO_TOKEN_DELAY_MS', async (t) => {
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
