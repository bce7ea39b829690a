import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { AgentInfo } from '../../src/agents/registry.js'
import { AgentDetail, AgentList, AgentParams, ErrorBody, type AgentSummary } from './schemas.js'

function summary (agent: AgentInfo): AgentSummary {
  return {
    id: agent.id,
    name: agent.name,
    description: agent.description,
    provider: agent.effectiveProvider,
    configuredProvider: agent.provider,
    model: agent.model,
    expertise: agent.expertise,
    status: agent.status
  }
}

/** The agents of the manifest, as the orchestrator sees them. Registered with prefix /v1/agents. */
const agentsRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const registry = fastify.agents
  const common = { tags: ['agents'], security: [{ bearerAuth: [] }] }

  fastify.get(
    '/',
    {
      schema: {
        ...common,
        summary: 'List the agents',
        description: '`provider` is the provider that really answers ("echo" when the configured one has no key); `status` comes from the health monitor.',
        response: { 200: AgentList, 401: ErrorBody }
      }
    },
    async () => ({ agents: registry.list().map(summary) })
  )

  fastify.get(
    '/:agentId',
    {
      schema: {
        ...common,
        summary: 'One agent with its health',
        params: AgentParams,
        response: { 200: AgentDetail, 400: ErrorBody, 401: ErrorBody, 404: ErrorBody }
      }
    },
    async (request) => {
      const { agentId } = request.params
      const agent = registry.describe(agentId)
      if (!agent) throw fastify.httpErrors.notFound(`Agent "${agentId}" not found`)
      return { ...summary(agent), fallback: agent.fallback ?? null, health: registry.health(agentId) }
    }
  )
}

export default agentsRoutes
