/** One agent of the manifest (AGENTS_FILE), after validation. */
export interface AgentDefinition {
  id: string
  name: string
  description: string
  provider: 'openai' | 'anthropic' | 'gemini' | 'openai-compatible' | 'echo'
  model: string
  systemPrompt: string
  temperature: number
  maxTokens: number
  expertise: string[]
  fallback?: string
  baseUrl?: string
  /** MCP tools the agent may call: `<server id>` (all its tools) or `<server id>/<tool name>`; [] for none. */
  tools?: string[]
  /** The most tool steps (model asks, service calls) of one reply before it must answer (1 to 20, default 5). */
  maxToolSteps?: number
}

export type AgentStatus = 'healthy' | 'degraded' | 'down'

/** Why an agent answers a message: shown in the SSE `agent` event and the agent.selected event. */
export interface AgentSelection {
  agent: AgentDefinition
  reason: 'requested' | 'expertise' | 'router' | 'default' | 'fallback'
  /** Expertise keywords of the agent found in the message, when reason is 'expertise'. */
  matched: string[]
  score: number
}
