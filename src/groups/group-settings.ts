import { DomainError } from '../domain-errors.js'

/** How the speaker of each turn of a round is chosen (DESIGN section 9); mentions come first whatever it is. */
export const STRATEGIES = ['round-robin', 'expertise', 'manager'] as const
export type Strategy = (typeof STRATEGIES)[number]

export const GROUP_MIN_AGENTS = 2
export const GROUP_MAX_AGENTS = 10

/** A group session's settings, as stored and as the API shows them (`group` on the session). */
export interface GroupSettings {
  strategy: Strategy
  /** Turns per round, 1 to GROUP_MAX_TURNS. */
  maxTurns: number
  /** The agent whose model picks the speakers (strategy manager only): one of the manifest's agents. */
  manager?: string
  /** A reply containing it (case-insensitive) ends the round. */
  terminationKeyword?: string
  /** May an agent speak twice in a row? */
  allowRepeat: boolean
  /** The preset the session was created from, if any. */
  preset?: string
}

/** A `groups:` entry of the agents manifest, listed by GET /v1/groups. */
export interface GroupPreset {
  id: string
  name: string
  description: string
  agents: string[]
  strategy: Strategy
  maxTurns: number
  manager?: string
  terminationKeyword?: string
  allowRepeat?: boolean
}

/** What a client may send for `group` (every field optional; a preset or the defaults fill in the rest). */
export interface GroupInput {
  strategy?: string
  maxTurns?: number
  manager?: string
  terminationKeyword?: string
  allowRepeat?: boolean
}

export type SessionMode = 'single' | 'group'

/** The mode and group a session gets from a create or a PATCH body. */
export interface ModeRequest {
  mode?: SessionMode | undefined
  group?: GroupInput | undefined
  preset?: string | undefined
  agents?: string[] | undefined
}

export interface GroupRules {
  /** GROUP_MAX_TURNS. */
  maxTurns: number
  presets: ReadonlyMap<string, GroupPreset>
  /** Is this an agent of the manifest? */
  isAgent: (id: string) => boolean
  /** A new session's agents when the request names none (the manifest's). */
  defaultAgents: () => string[]
}

/** What a session is after the request: its agents (undefined: as before, or the default), mode and group. */
export interface ResolvedMode {
  agents: string[] | undefined
  mode: SessionMode
  group: GroupSettings | null
}

/**
 * The mode and group settings a create (`current` undefined) or a PATCH (`current` the session's)
 * asks for, validated: a group has 2 to 10 distinct agents, maxTurns 1 to GROUP_MAX_TURNS (default:
 * the number of agents, capped), a known strategy, and a manager (strategy manager only) that is an
 * agent of the manifest. A preset fills in what the request leaves out. Throws `invalid` naming the field.
 */
export function resolveMode (request: ModeRequest, rules: GroupRules, current?: { agents: string[]; mode: SessionMode; group: GroupSettings | null }): ResolvedMode {
  const preset = request.preset === undefined ? undefined : rules.presets.get(request.preset)
  if (request.preset !== undefined && !preset) {
    const known = [...rules.presets.keys()]
    throw invalid('preset', `Unknown group preset "${request.preset}" (presets: ${known.length ? known.join(', ') : 'none'})`, 'UNKNOWN_PRESET')
  }
  const wantsGroup = request.group !== undefined || preset !== undefined
  const mode: SessionMode = request.mode ?? (wantsGroup ? 'group' : current?.mode ?? 'single')
  if (mode === 'single') {
    if (wantsGroup) throw invalid(request.preset !== undefined ? 'preset' : 'group', 'group and preset are for mode "group" only')
    return { agents: request.agents, mode, group: null }
  }

  const agents = request.agents ?? preset?.agents ?? current?.agents ?? rules.defaultAgents()
  const base: Partial<GroupSettings> = current?.mode === 'group' && !preset ? (current.group ?? {}) : (preset ? fromPreset(preset) : {})
  const input = request.group ?? {}
  if (input.strategy !== undefined && !(STRATEGIES as readonly string[]).includes(input.strategy)) {
    throw invalid('group.strategy', `Unknown strategy "${input.strategy}" (strategies: ${STRATEGIES.join(', ')})`)
  }
  const strategy = (input.strategy as Strategy | undefined) ?? base.strategy ?? 'round-robin'
  assertGroupAgents(agents)
  const maxTurns = input.maxTurns ?? base.maxTurns ?? Math.min(agents.length, rules.maxTurns)
  if (!Number.isInteger(maxTurns) || maxTurns < 1 || maxTurns > rules.maxTurns) {
    throw invalid('group.maxTurns', `group.maxTurns must be an integer from 1 to ${rules.maxTurns} (GROUP_MAX_TURNS), got ${maxTurns}`)
  }
  const manager = input.manager ?? (strategy === 'manager' ? base.manager : undefined)
  if (strategy === 'manager') {
    if (manager === undefined) throw invalid('group.manager', 'The manager strategy needs group.manager: the agent whose model picks the speakers')
    if (!rules.isAgent(manager)) throw invalid('group.manager', `group.manager "${manager}" is not an agent of the manifest`)
  } else if (input.manager !== undefined) {
    throw invalid('group.manager', 'group.manager is used by the manager strategy only')
  }
  const group: GroupSettings = { strategy, maxTurns, allowRepeat: input.allowRepeat ?? base.allowRepeat ?? false }
  if (manager !== undefined) group.manager = manager
  const keyword = input.terminationKeyword ?? base.terminationKeyword
  if (keyword !== undefined) group.terminationKeyword = keyword
  const presetId = preset?.id ?? (current?.mode === 'group' ? current.group?.preset : undefined)
  if (presetId !== undefined) group.preset = presetId
  return { agents, mode, group }
}

/** A group's agents: 2 to 10, each once. (Whether they exist is the session store's check.) */
export function assertGroupAgents (agents: string[]): void {
  if (agents.length < GROUP_MIN_AGENTS || agents.length > GROUP_MAX_AGENTS) {
    throw invalid('agents', `A group needs ${GROUP_MIN_AGENTS} to ${GROUP_MAX_AGENTS} agents, got ${agents.length}`)
  }
  const repeated = agents.filter((id, index) => agents.indexOf(id) !== index)
  if (repeated.length > 0) throw invalid('agents', `A group's agents must be distinct: ${[...new Set(repeated)].join(', ')} listed twice`)
}

/** A preset's settings as a group session gets them with nothing else asked. */
export function presetSettings (preset: GroupPreset): GroupSettings {
  return { strategy: 'round-robin', allowRepeat: false, ...fromPreset(preset), maxTurns: preset.maxTurns, preset: preset.id }
}

function fromPreset (preset: GroupPreset): Partial<GroupSettings> {
  const settings: Partial<GroupSettings> = { strategy: preset.strategy, maxTurns: preset.maxTurns }
  if (preset.manager !== undefined) settings.manager = preset.manager
  if (preset.terminationKeyword !== undefined) settings.terminationKeyword = preset.terminationKeyword
  if (preset.allowRepeat !== undefined) settings.allowRepeat = preset.allowRepeat
  return settings
}

function invalid (field: string, message: string, code = 'INVALID_GROUP'): DomainError {
  return new DomainError('invalid', message, { code, details: [{ field: `/${field.replaceAll('.', '/')}` }] })
}
