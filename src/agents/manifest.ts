import { readFile } from 'node:fs/promises'
import { Type, type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import { parse as parseYaml } from 'yaml'
import { GROUP_MAX_AGENTS, GROUP_MIN_AGENTS, STRATEGIES, type GroupPreset } from '../groups/group-settings.js'
import { DEFAULT_MAX_TOOL_STEPS, MAX_TOOL_STEPS, checkToolRefs, parseMcpServers } from '../tools/manifest-servers.js'
import type { McpServerConfig } from '../tools/tools.js'
import type { AgentDefinition } from './agent.js'

export const PROVIDERS = ['openai', 'anthropic', 'gemini', 'openai-compatible', 'echo'] as const satisfies readonly AgentDefinition['provider'][]

/** Agent ids appear in URLs (/v1/agents/:agentId) and in metric labels. */
export const AGENT_ID_PATTERN = '^[a-z0-9][a-z0-9_-]*$'

/** Values used when a manifest entry leaves an optional field out. */
export const AGENT_DEFAULTS = { description: '', systemPrompt: '', temperature: 0.7, maxTokens: 1024 } as const

const AgentEntry = Type.Object(
  {
    id: Type.String({ pattern: AGENT_ID_PATTERN, maxLength: 64 }),
    name: Type.String({ minLength: 1 }),
    description: Type.Optional(Type.String()),
    provider: Type.Enum(PROVIDERS),
    model: Type.String({ minLength: 1 }),
    systemPrompt: Type.Optional(Type.String()),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
    maxTokens: Type.Optional(Type.Integer({ minimum: 1 })),
    expertise: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    fallback: Type.Optional(Type.String({ minLength: 1 })),
    baseUrl: Type.Optional(Type.String()),
    tools: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    maxToolSteps: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TOOL_STEPS }))
  },
  { additionalProperties: false }
)
type AgentEntry = Static<typeof AgentEntry>

const FIELDS = Object.keys(AgentEntry.properties)
const OPTIONAL_FIELDS = new Set(['description', 'systemPrompt', 'temperature', 'maxTokens', 'expertise', 'fallback', 'baseUrl', 'tools', 'maxToolSteps'])
const checkAgent = Compile(AgentEntry)

/** What a rule failure means, in words, for the fields whose schema message would not say it. */
const FIELD_HINTS: Record<string, Partial<Record<string, string>>> = {
  id: { pattern: 'must be URL-safe: lowercase letters, digits, "-" and "_", starting with a letter or digit', maxLength: 'must be at most 64 characters' },
  provider: { enum: `must be one of ${PROVIDERS.join(', ')}` },
  maxToolSteps: { minimum: 'must be at least 1', maximum: `must be at most ${MAX_TOOL_STEPS}` }
}

/** A manifest that cannot be used: the message names the file, the agent and the field. */
export class ManifestError extends Error {
  override name = 'ManifestError'
}

export interface ManifestOptions {
  /** OPENAI_BASE_URL: lets openai-compatible agents leave out their own baseUrl; GROUP_MAX_TURNS bounds a preset's maxTurns. */
  env?: { OPENAI_BASE_URL?: string | undefined; GROUP_MAX_TURNS?: number | undefined }
  /** The process environment: MCP servers' header values name its variables (`${VAR}`). */
  environment?: Record<string, string | undefined>
}

/** A validated manifest: its agents, and its group presets (the `groups:` list, may be absent). */
export interface Manifest {
  agents: AgentDefinition[]
  groups: GroupPreset[]
  /** The `mcpServers:` list (may be absent): the only MCP servers whose tools agents can call. */
  mcpServers: McpServerConfig[]
}

/** Reads, parses and validates an agents manifest; throws a ManifestError saying what is wrong. */
export async function loadManifest (path: string, options: ManifestOptions = {}): Promise<Manifest> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, not a file' : (err as Error).message
    throw new ManifestError(`${path}: cannot read the agents manifest (${why})`)
  }
  return parseManifest(text, path, options)
}

/** Validates manifest text; `source` names it in error messages. */
export function parseManifest (text: string, source: string, options: ManifestOptions = {}): Manifest {
  let document: unknown
  try {
    document = parseYaml(text)
  } catch (err) {
    throw new ManifestError(`${source}: invalid YAML: ${(err as Error).message.split('\n')[0]}`)
  }
  if (!isMapping(document) || !('agents' in document)) {
    throw new ManifestError(`${source}: expected a YAML mapping with an "agents:" list`)
  }
  const entries = document.agents
  if (!Array.isArray(entries)) throw new ManifestError(`${source}: "agents" must be a list of agents`)
  if (entries.length === 0) throw new ManifestError(`${source}: "agents" is empty: list at least one agent`)

  const problems: string[] = []
  const agents: AgentDefinition[] = []
  entries.forEach((entry: unknown, index) => {
    const label = agentLabel(entry, index)
    const found = checkEntry(entry, options)
    if (found.length > 0) problems.push(...found.map((problem) => `${label}: ${problem}`))
    else agents.push(toDefinition(withoutNulls(entry as Record<string, unknown>) as AgentEntry))
  })
  const mcpServers = parseMcpServers(document.mcpServers, options.environment ?? {})
  if (!Array.isArray(mcpServers)) throw new ManifestError(`${source}: ${mcpServers.problems.join('; ')}`)
  if (problems.length === 0) problems.push(...checkReferences(agents, entries))
  agents.forEach((agent, index) => {
    problems.push(...checkToolRefs(agent.tools ?? [], mcpServers).map((problem) => `${agentLabel(entries[index], index)}: ${problem}`))
  })
  if (problems.length > 0) throw new ManifestError(`${source}: ${problems.join('; ')}`)
  const groups = parseGroups(document.groups, agents, options.env?.GROUP_MAX_TURNS ?? 10)
  if (!Array.isArray(groups)) throw new ManifestError(`${source}: ${groups.problems.join('; ')}`)
  return { agents, groups, mcpServers }
}

const GroupEntry = Type.Object(
  {
    id: Type.String({ pattern: AGENT_ID_PATTERN, maxLength: 64 }),
    name: Type.String({ minLength: 1 }),
    description: Type.Optional(Type.String()),
    agents: Type.Array(Type.String({ minLength: 1 }), { minItems: GROUP_MIN_AGENTS, maxItems: GROUP_MAX_AGENTS }),
    strategy: Type.Enum(STRATEGIES),
    maxTurns: Type.Optional(Type.Integer({ minimum: 1 })),
    manager: Type.Optional(Type.String({ minLength: 1 })),
    terminationKeyword: Type.Optional(Type.String({ minLength: 1 })),
    allowRepeat: Type.Optional(Type.Boolean())
  },
  { additionalProperties: false }
)
const GROUP_FIELDS = Object.keys(GroupEntry.properties)
const checkGroup = Compile(GroupEntry)

/**
 * The `groups:` presets: each validated like an agent (the message names the preset and the field),
 * its agents and manager agents of this manifest, its maxTurns within GROUP_MAX_TURNS.
 */
function parseGroups (entries: unknown, agents: AgentDefinition[], maxTurns: number): GroupPreset[] | { problems: string[] } {
  if (entries === undefined || entries === null) return []
  if (!Array.isArray(entries)) return { problems: ['"groups" must be a list of group presets'] }
  const ids = new Set(agents.map((agent) => agent.id))
  const problems: string[] = []
  const groups: GroupPreset[] = []
  entries.forEach((entry: unknown, index) => {
    const label = `group ${index + 1}${isMapping(entry) && typeof entry.id === 'string' ? ` (${JSON.stringify(entry.id)})` : ''}`
    const found: string[] = []
    if (!isMapping(entry)) {
      problems.push(`${label}: must be a mapping of fields (${GROUP_FIELDS.join(', ')}), got ${describe(entry)}`)
      return
    }
    for (const error of checkGroup.Errors(entry)) {
      if (error.keyword === 'required') {
        for (const field of (error.params as { requiredProperties: string[] }).requiredProperties) found.push(`${field} is required`)
      } else if (error.keyword === 'additionalProperties') {
        for (const field of (error.params as { additionalProperties: string[] }).additionalProperties) found.push(`unknown field "${field}" (the fields are ${GROUP_FIELDS.join(', ')})`)
      } else if (error.keyword !== 'boolean') {
        const field = error.instancePath.split('/').slice(1).join('.')
        const hint = field === 'strategy' ? `must be one of ${STRATEGIES.join(', ')}` : field === 'agents' ? `must list ${GROUP_MIN_AGENTS} to ${GROUP_MAX_AGENTS} agents` : error.message
        found.push(`${field} ${hint}`)
      }
    }
    if (found.length === 0) {
      const group = entry as Static<typeof GroupEntry>
      const unknown = group.agents.filter((id) => !ids.has(id))
      if (unknown.length > 0) found.push(`agents: ${unknown.join(', ')} ${unknown.length > 1 ? 'are not agents' : 'is not an agent'} of this manifest`)
      if (new Set(group.agents).size !== group.agents.length) found.push('agents must be distinct')
      if (group.maxTurns !== undefined && group.maxTurns > maxTurns) found.push(`maxTurns must be at most ${maxTurns} (GROUP_MAX_TURNS), got ${group.maxTurns}`)
      if (group.strategy === 'manager' && group.manager === undefined) found.push('manager is required for strategy manager')
      if (group.manager !== undefined && !ids.has(group.manager)) found.push(`manager "${group.manager}" is not an agent of this manifest`)
      if (groups.some((other) => other.id === group.id)) found.push(`id "${group.id}" is already used by another group`)
      if (found.length === 0) groups.push(toPreset(group, maxTurns))
    }
    problems.push(...[...new Set(found)].map((problem) => `${label}: ${problem}`))
  })
  return problems.length > 0 ? { problems } : groups
}

function toPreset (entry: Static<typeof GroupEntry>, maxTurns: number): GroupPreset {
  const preset: GroupPreset = {
    id: entry.id,
    name: entry.name,
    description: entry.description ?? '',
    agents: entry.agents,
    strategy: entry.strategy,
    maxTurns: entry.maxTurns ?? Math.min(entry.agents.length, maxTurns)
  }
  if (entry.manager !== undefined) preset.manager = entry.manager
  if (entry.terminationKeyword !== undefined) preset.terminationKeyword = entry.terminationKeyword
  if (entry.allowRepeat !== undefined) preset.allowRepeat = entry.allowRepeat
  return preset
}

function isMapping (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** `agent 2 ("coder")`: 1-based, as a person counts the list, with the id when there is one. */
function agentLabel (entry: unknown, index: number): string {
  const id = isMapping(entry) && typeof entry.id === 'string' && entry.id !== '' ? ` (${JSON.stringify(entry.id)})` : ''
  return `agent ${index + 1}${id}`
}

/** YAML writes "no value" as null (`fallback:` or `fallback: ~`): for an optional field that means absent. */
function withoutNulls (entry: Record<string, unknown>): Record<string, unknown> {
  const copy: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(entry)) {
    if (!(value === null && OPTIONAL_FIELDS.has(key))) copy[key] = value
  }
  return copy
}

function checkEntry (entry: unknown, options: ManifestOptions): string[] {
  if (!isMapping(entry)) return [`must be a mapping of fields (${FIELDS.join(', ')}), got ${describe(entry)}`]
  const value = withoutNulls(entry)
  const problems = new Map<string, string>()
  const note = (field: string, problem: string) => {
    if (!problems.has(field)) problems.set(field, problem)
  }

  for (const error of checkAgent.Errors(value)) {
    if (error.keyword === 'required') {
      for (const field of (error.params as { requiredProperties: string[] }).requiredProperties) note(field, `${field} is required`)
    } else if (error.keyword === 'additionalProperties') {
      for (const field of (error.params as { additionalProperties: string[] }).additionalProperties) {
        note(field, `unknown field "${field}" (the fields are ${FIELDS.join(', ')})`)
      }
    } else if (error.keyword !== 'boolean') {
      const segments = error.instancePath.split('/').slice(1)
      const field = segments[0] ?? ''
      const path = field + segments.slice(1).map((segment) => `[${segment}]`).join('')
      const actual = segments.reduce<unknown>((node, segment) => (node as Record<string, unknown>)?.[segment], value)
      const message = FIELD_HINTS[field]?.[error.keyword] ?? (error.keyword === 'minLength' ? 'must not be empty' : error.message)
      note(field, `${path} ${message} (got ${describe(actual)})`)
    }
  }

  if (!problems.has('baseUrl') && value.baseUrl !== undefined && typeof value.baseUrl === 'string' && !isHttpUrl(value.baseUrl)) {
    note('baseUrl', `baseUrl must be an http:// or https:// URL (got ${describe(value.baseUrl)})`)
  }
  if (value.provider === 'openai-compatible' && value.baseUrl === undefined && !options.env?.OPENAI_BASE_URL) {
    note('baseUrl', 'baseUrl is required for provider openai-compatible (or set OPENAI_BASE_URL)')
  }
  return [...problems.values()]
}

/** Ids unique; every fallback names another agent of the manifest; no fallback chain loops. */
function checkReferences (agents: AgentDefinition[], entries: unknown[]): string[] {
  const problems: string[] = []
  const byId = new Map<string, AgentDefinition>()
  agents.forEach((agent, index) => {
    if (byId.has(agent.id)) {
      const first = agents.findIndex((other) => other.id === agent.id)
      problems.push(`${agentLabel(entries[index], index)}: id "${agent.id}" is already used by agent ${first + 1}`)
    } else {
      byId.set(agent.id, agent)
    }
  })
  agents.forEach((agent, index) => {
    if (agent.fallback === undefined) return
    const label = agentLabel(entries[index], index)
    if (agent.fallback === agent.id) problems.push(`${label}: fallback must name another agent, not itself`)
    else if (!byId.has(agent.fallback)) {
      problems.push(`${label}: fallback "${agent.fallback}" is not an agent of this manifest (agents: ${[...byId.keys()].join(', ')})`)
    } else {
      const chain = [agent.id]
      let next: string | undefined = agent.fallback
      while (next !== undefined && !chain.includes(next)) {
        chain.push(next)
        next = byId.get(next)?.fallback
      }
      if (next === agent.id) problems.push(`${label}: fallback forms a cycle (${[...chain, next].join(' -> ')})`)
    }
  })
  return problems
}

function toDefinition (entry: AgentEntry): AgentDefinition {
  const definition: AgentDefinition = {
    id: entry.id,
    name: entry.name,
    description: entry.description ?? AGENT_DEFAULTS.description,
    provider: entry.provider,
    model: entry.model,
    systemPrompt: entry.systemPrompt ?? AGENT_DEFAULTS.systemPrompt,
    temperature: entry.temperature ?? AGENT_DEFAULTS.temperature,
    maxTokens: entry.maxTokens ?? AGENT_DEFAULTS.maxTokens,
    expertise: entry.expertise ?? [],
    tools: entry.tools ?? [],
    maxToolSteps: entry.maxToolSteps ?? DEFAULT_MAX_TOOL_STEPS
  }
  if (entry.fallback !== undefined) definition.fallback = entry.fallback
  if (entry.baseUrl !== undefined) definition.baseUrl = entry.baseUrl
  return definition
}

function isHttpUrl (value: string): boolean {
  try {
    const url = new URL(value)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}

function describe (value: unknown): string {
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'a list'
  if (typeof value === 'object') return 'a mapping'
  const text = JSON.stringify(value)
  return text.length > 60 ? text.slice(0, 57) + '..."' : text
}
