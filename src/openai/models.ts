import type { AgentDefinition } from '../agents/agent.js'
import type { AgentRegistry } from '../agents/registry.js'
import { DomainError } from '../domain-errors.js'

/** One entry of `GET /v1/models`, in OpenAI's shape. */
export interface ModelEntry {
  id: string
  object: 'model'
  created: number
  owned_by: string
}

/** What a model id of the OpenAI-compatible API names: an agent (group presets are another kind). */
export type ModelTarget = { kind: 'agent'; agent: AgentDefinition }

/**
 * Maps the `model` of an OpenAI request to what answers it. Each agent is a model whose id is the
 * agent's id; every model is listed with the same `created` (when the manifest was loaded).
 */
export class ModelResolver {
  constructor (
    private readonly agents: AgentRegistry,
    /** Unix seconds. */
    private readonly created: number
  ) {}

  list (): ModelEntry[] {
    return this.agents.definitions().map((agent) => this.entry(agent.id))
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
    throw new DomainError('not_found', `The model \`${id}\` does not exist: GET /v1/models lists the models (one per agent)`, {
      code: 'MODEL_NOT_FOUND',
      details: [{ field: '/model' }]
    })
  }

  private entry (id: string): ModelEntry {
    return { id, object: 'model', created: this.created, owned_by: 'smalltalk' }
  }
}
