import { Type, type Static } from 'typebox'
import { AGENT_ID_PATTERN, PROVIDERS } from '../../src/agents/manifest.js'

// The error body is the one every route shares.
export { ErrorBody } from '../sessions/schemas.js'

const Status = Type.Enum(['healthy', 'degraded', 'down'], { description: 'From the agent health monitor' })

export const AgentSummary = Type.Object({
  id: Type.String({ pattern: AGENT_ID_PATTERN }),
  name: Type.String(),
  description: Type.String(),
  provider: Type.Enum(PROVIDERS, {
    description: 'The provider that answers: "echo" when the configured provider has no key or no client in this build'
  }),
  configuredProvider: Type.Enum(PROVIDERS, { description: 'The provider the manifest names' }),
  model: Type.String(),
  expertise: Type.Array(Type.String(), { description: 'Keywords that route messages to this agent' }),
  status: Status
})

export const AgentDetail = Type.Object({
  ...AgentSummary.properties,
  fallback: Type.Union([Type.String(), Type.Null()], { description: 'The agent that answers when this one is down' }),
  health: Type.Object({
    status: Status,
    checkedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'Last health check; null until the first' }),
    message: Type.String()
  })
})

export const AgentList = Type.Object({ agents: Type.Array(AgentSummary) })

export const AgentParams = Type.Object({
  agentId: Type.String({ pattern: AGENT_ID_PATTERN, maxLength: 64, description: 'An agent id from GET /v1/agents' })
})

export type AgentSummary = Static<typeof AgentSummary>
export type AgentDetail = Static<typeof AgentDetail>
