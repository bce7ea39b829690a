import t from 'tap'
import { join } from 'node:path'
import { ManifestError, loadManifest, parseManifest } from '../../src/agents/manifest.js'
import { PROJECT_ROOT } from '../../src/paths.js'

const DEFAULT_FILE = join(PROJECT_ROOT, 'agents', 'default.yaml')

/** A valid agent entry in YAML, with fields replaced or removed by `overrides` (null removes). */
function agentYaml (overrides: Record<string, unknown> = {}): string {
  const fields: Record<string, unknown> = {
    id: 'helper',
    name: 'Helper',
    description: 'Helps',
    provider: 'echo',
    model: 'echo-1',
    systemPrompt: 'Be helpful.',
    temperature: 0.5,
    maxTokens: 256,
    expertise: ['help'],
    ...overrides
  }
  const lines = Object.entries(fields)
    .filter(([, value]) => value !== null)
    .map(([key, value]) => `${key}: ${JSON.stringify(value)}`)
  return '  - ' + lines.join('\n    ')
}

function manifest (...agents: string[]): string {
  return 'agents:\n' + agents.join('\n') + '\n'
}

t.test('the default manifest: a general assistant and two specialists, every field set', async (t) => {
  const { agents } = await loadManifest(DEFAULT_FILE)
  t.same(agents.map((agent) => agent.id), ['assistant', 'coder', 'writer'])
  for (const agent of agents) {
    t.ok(agent.name && agent.description && agent.model && agent.systemPrompt, `${agent.id}: name, description, model, systemPrompt`)
    t.not(agent.provider, 'echo', `${agent.id}: names a real provider, so a key makes it real`)
    t.ok(agent.temperature >= 0 && agent.temperature <= 2, `${agent.id}: temperature`)
    t.ok(Number.isInteger(agent.maxTokens) && agent.maxTokens > 0, `${agent.id}: maxTokens`)
    t.ok(agent.expertise.length >= 5, `${agent.id}: expertise keywords`)
  }
  t.equal(agents[0]!.fallback, undefined, 'the assistant is the last resort')
  t.equal(agents[1]!.fallback, 'assistant')
  t.equal(agents[2]!.fallback, 'assistant')
})

t.test('optional fields take their defaults; null means absent', async (t) => {
  const [agent] = parseManifest(
    'agents:\n  - id: minimal\n    name: Minimal\n    provider: echo\n    model: echo\n    fallback:\n    expertise: ~\n',
    'inline.yaml'
  ).agents
  t.same(agent, {
    id: 'minimal',
    name: 'Minimal',
    description: '',
    provider: 'echo',
    model: 'echo',
    systemPrompt: '',
    temperature: 0.7,
    maxTokens: 1024,
    expertise: [],
    tools: [],
    maxToolSteps: 5
  })
})

t.test('openai-compatible needs a baseUrl, its own or OPENAI_BASE_URL', async (t) => {
  const text = manifest(agentYaml({ provider: 'openai-compatible', model: 'llama3.2' }))
  t.throws(() => parseManifest(text, 'local.yaml'), {
    message: 'local.yaml: agent 1 ("helper"): baseUrl is required for provider openai-compatible (or set OPENAI_BASE_URL)'
  })
  t.equal(parseManifest(text, 'local.yaml', { env: { OPENAI_BASE_URL: 'http://localhost:11434/v1' } }).agents[0]!.baseUrl, undefined)
  const own = parseManifest(manifest(agentYaml({ provider: 'openai-compatible', baseUrl: 'http://ollama:11434/v1' })), 'local.yaml')
  t.equal(own.agents[0]!.baseUrl, 'http://ollama:11434/v1')
})

t.test('every bad entry is reported with the file, the agent and the field', async (t) => {
  const second = (overrides: Record<string, unknown>) => manifest(agentYaml({ id: 'first' }), agentYaml({ id: 'coder', ...overrides }))
  const cases: Array<[string, string, RegExp]> = [
    ['maxTokens not an integer', second({ maxTokens: 1.5 }), /^bad\.yaml: agent 2 \("coder"\): maxTokens must be integer \(got 1\.5\)$/],
    ['maxTokens zero', second({ maxTokens: 0 }), /agent 2 \("coder"\): maxTokens must be >= 1/],
    ['maxTokens a string', second({ maxTokens: '100' }), /agent 2 \("coder"\): maxTokens must be integer \(got "100"\)/],
    ['temperature above 2', second({ temperature: 2.5 }), /agent 2 \("coder"\): temperature must be <= 2 \(got 2\.5\)/],
    ['temperature below 0', second({ temperature: -0.1 }), /agent 2 \("coder"\): temperature must be >= 0/],
    ['unknown provider', second({ provider: 'mistral' }), /agent 2 \("coder"\): provider must be one of openai, anthropic, gemini, openai-compatible, echo \(got "mistral"\)/],
    ['missing model', second({ model: null }), /agent 2 \("coder"\): model is required/],
    ['empty name', second({ name: '' }), /agent 2 \("coder"\): name must not be empty/],
    ['expertise not a list', second({ expertise: 'sql' }), /agent 2 \("coder"\): expertise must be array \(got "sql"\)/],
    ['expertise item not a string', second({ expertise: ['sql', 42] }), /agent 2 \("coder"\): expertise\[1\] must be string \(got 42\)/],
    ['unknown field (a typo)', second({ expertice: ['sql'] }), /agent 2 \("coder"\): unknown field "expertice"/],
    ['id not URL-safe', second({ id: 'Code Bot' }), /agent 2 \("Code Bot"\): id must be URL-safe/],
    ['id missing', manifest(agentYaml(), agentYaml({ id: null })), /agent 2: id is required/],
    ['id a number', manifest(agentYaml(), agentYaml({ id: 7 })), /agent 2: id must be string \(got 7\)/],
    ['baseUrl not http', second({ baseUrl: 'ftp://example.com' }), /agent 2 \("coder"\): baseUrl must be an http:\/\/ or https:\/\/ URL/],
    ['baseUrl not a URL', second({ baseUrl: 'localhost:11434' }), /agent 2 \("coder"\): baseUrl must be an http:\/\/ or https:\/\/ URL/],
    ['fallback to nobody', second({ fallback: 'nobody' }), /agent 2 \("coder"\): fallback "nobody" is not an agent of this manifest \(agents: first, coder\)/],
    ['fallback to itself', second({ fallback: 'coder' }), /agent 2 \("coder"\): fallback must name another agent, not itself/],
    ['duplicate id', manifest(agentYaml({ id: 'coder' }), agentYaml({ id: 'coder' })), /agent 2 \("coder"\): id "coder" is already used by agent 1/],
    [
      'fallback cycle',
      manifest(agentYaml({ id: 'a', fallback: 'b' }), agentYaml({ id: 'b', fallback: 'c' }), agentYaml({ id: 'c', fallback: 'a' })),
      /agent 1 \("a"\): fallback forms a cycle \(a -> b -> c -> a\)/
    ],
    ['entry not a mapping', manifest(agentYaml(), '  - just a string'), /agent 2: must be a mapping of fields .* got "just a string"/]
  ]
  for (const [name, text, expected] of cases) {
    const error = catchError(() => parseManifest(text, 'bad.yaml'))
    t.ok(error instanceof ManifestError, `${name}: a ManifestError`)
    t.match(error?.message, expected, name)
    t.match(error?.message, /^bad\.yaml: /, `${name}: names the file`)
  }
})

t.test('several problems are reported together', async (t) => {
  const text = manifest(agentYaml({ id: 'a', temperature: 3 }), agentYaml({ id: 'b', maxTokens: -1, model: null }))
  t.throws(() => parseManifest(text, 'bad.yaml'), {
    message: 'bad.yaml: agent 1 ("a"): temperature must be <= 2 (got 3); agent 2 ("b"): model is required; agent 2 ("b"): maxTokens must be >= 1 (got -1)'
  })
})

t.test('a document that is not a manifest', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['empty file', '', 'x.yaml: expected a YAML mapping with an "agents:" list'],
    ['a list at the top', '- id: a\n', 'x.yaml: expected a YAML mapping with an "agents:" list'],
    ['no agents key', 'agent:\n  - id: a\n', 'x.yaml: expected a YAML mapping with an "agents:" list'],
    ['agents not a list', 'agents: everyone\n', 'x.yaml: "agents" must be a list of agents'],
    ['empty list', 'agents: []\n', 'x.yaml: "agents" is empty: list at least one agent']
  ]
  for (const [name, text, message] of cases) t.throws(() => parseManifest(text, 'x.yaml'), { name: 'ManifestError', message }, name)
  t.throws(() => parseManifest('agents:\n  - id: [unclosed\n', 'x.yaml'), { message: /^x\.yaml: invalid YAML: .* at line \d+, column \d+/ }, 'YAML syntax error with its line')
  t.throws(() => parseManifest('agents: []\nagents: []\n', 'x.yaml'), { message: /^x\.yaml: invalid YAML: .*unique/i }, 'duplicate keys')
})

t.test('loadManifest names the file it cannot read', async (t) => {
  const dir = t.testdir({ 'team.yaml': manifest(agentYaml()), 'folder.yaml': {} })
  t.same((await loadManifest(join(dir, 'team.yaml'))).agents.map((agent) => agent.id), ['helper'])
  await t.rejects(loadManifest(join(dir, 'missing.yaml')), {
    name: 'ManifestError',
    message: `${join(dir, 'missing.yaml')}: cannot read the agents manifest (file not found)`
  })
  await t.rejects(loadManifest(join(dir, 'folder.yaml')), { message: /folder\.yaml: cannot read the agents manifest \(is a directory, not a file\)/ })
})

function catchError (fn: () => unknown): Error | undefined {
  try {
    fn()
  } catch (err) {
    return err as Error
  }
  return undefined
}

t.test('group presets: the default manifest ships two that work with echo; a bad preset names the preset and the field', async (t) => {
  const { groups } = await loadManifest(DEFAULT_FILE)
  t.same(groups.map((group) => group.id), ['review-panel', 'brainstorm'])
  t.match(groups[0], { strategy: 'round-robin', agents: ['coder', 'writer', 'assistant'], maxTurns: 3 })
  t.match(groups[1], { strategy: 'expertise', terminationKeyword: 'DONE', maxTurns: 6 })

  const team = manifest(agentYaml({ id: 'a' }), agentYaml({ id: 'b' }), agentYaml({ id: 'c' }))
  const withGroups = (groupsYaml: string) => `${team}groups:\n${groupsYaml}\n`
  t.same(parseManifest(team, 'x.yaml').groups, [], 'no groups: key, no presets')
  t.match(parseManifest(withGroups('  - { id: pair, name: Pair, agents: [a, b], strategy: round-robin }'), 'x.yaml').groups, [{ id: 'pair', description: '', maxTurns: 2 }])
  const cases: Array<[string, string, RegExp]> = [
    ['unknown strategy', '  - { id: g, name: G, agents: [a, b], strategy: loudest }', /group 1 \("g"\): strategy must be one of round-robin, expertise, manager/],
    ['one agent', '  - { id: g, name: G, agents: [a], strategy: round-robin }', /group 1 \("g"\): agents must list 2 to 10 agents/],
    ['unknown agent', '  - { id: g, name: G, agents: [a, zed], strategy: round-robin }', /group 1 \("g"\): agents: zed is not an agent of this manifest/],
    ['agent twice', '  - { id: g, name: G, agents: [a, a], strategy: round-robin }', /group 1 \("g"\): agents must be distinct/],
    ['too many turns', '  - { id: g, name: G, agents: [a, b], strategy: round-robin, maxTurns: 11 }', /group 1 \("g"\): maxTurns must be at most 10 \(GROUP_MAX_TURNS\), got 11/],
    ['manager missing', '  - { id: g, name: G, agents: [a, b], strategy: manager }', /group 1 \("g"\): manager is required for strategy manager/],
    ['manager unknown', '  - { id: g, name: G, agents: [a, b], strategy: manager, manager: boss }', /group 1 \("g"\): manager "boss" is not an agent of this manifest/],
    ['unknown field', '  - { id: g, name: G, agents: [a, b], strategy: round-robin, speakers: 2 }', /group 1 \("g"\): unknown field "speakers"/],
    ['duplicate id', '  - { id: g, name: G, agents: [a, b], strategy: round-robin }\n  - { id: g, name: H, agents: [b, c], strategy: round-robin }', /group 2 \("g"\): id "g" is already used by another group/],
    ['not a list', '  pair: [a, b]', /"groups" must be a list of group presets/]
  ]
  for (const [name, yaml, expected] of cases) {
    const error = catchError(() => parseManifest(withGroups(yaml), 'team.yaml'))
    t.ok(error instanceof ManifestError, `${name}: a ManifestError`)
    t.match(error?.message, expected, name)
    t.match(error?.message, /^team\.yaml: /, `${name}: names the file`)
  }
  t.same(parseManifest(withGroups('  - { id: g, name: G, agents: [a, b], strategy: round-robin, maxTurns: 11 }'), 'x.yaml', { env: { GROUP_MAX_TURNS: 12 } }).groups.map((g) => g.maxTurns), [11], 'GROUP_MAX_TURNS bounds maxTurns')
})
