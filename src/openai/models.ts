import type { AgentDefinition } from '../agents/agent.js'
import type { AgentRegistry } from '../agents/registry.js'
import { DomainError } from '../domain-errors.js'
import type { GroupPreset } from '../groups/group-settings.js'

/** One entry of `GET /v1/models`, in OpenAI's shape. */
export interface ModelEntry {
  id: string
  object: 'model'
  created: number
  owned_by: string
}

/** What a model id of the OpenAI-compatible API names: an agent, or a group preset (`group:<preset id>`). */
export type ModelTarget = { kind: 'agent'; agent: AgentDefinition } | { kind: 'group'; preset: GroupPreset }

export const GROUP_MODEL_PREFIX = 'group:'

/**
 * Maps the `model` of an OpenAI request to what answers it. Each agent is a model whose id is the
 * agent's id, each group preset one whose id is `group:<preset id>` (it runs a round); every model
 * is listed with the same `created` (when the manifest was loaded).
 */
export class ModelResolver {
  constructor (
    private readonly agents: AgentRegistry,
    /** Unix seconds. */
    private readonly created: number,
    private readonly presets: ReadonlyMap<string, GroupPreset> = new Map()
  ) {}

  list (): ModelEntry[] {
    return [
      ...this.agents.definitions().map((agent) => this.entry(agent.id)),
      ...[...this.presets.keys()].map((id) => this.entry(GROUP_MODEL_PREFIX + id))
    ]
  }

  /** The entry of one model id, or a not_found naming the `model` parameter. */
  describe (id: string): ModelEntry {
    this.resolve(id)
    return this.entry(id)
  }

  /** The target of a model id, or a not_found naming the `model` parameter. */
  resolve (id: string): ModelTarget {
    const agent = this.agents.get(id)
    if (agent) return { kind: 'agent', agent }
    const preset = id.startsWith(GROUP_MODEL_PREFIX) ? this.presets.get(id.slice(GROUP_MODEL_PREFIX.length)) : undefined
    if (preset) return { kind: 'group', preset }
    throw new DomainError('not_found', `The model \`${id}\` does not exist: GET /v1/models lists the models (one per agent, one per group preset)`, {
      code: 'MODEL_NOT_FOUND',
      details: [{ field: '/model' }]
    })
  }

  private entry (id: string): ModelEntry {
    return { id, object: 'model', created: this.created, owned_by: 'smalltalk' }
  }
}
