import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { toolRefsOf } from '../../src/tools/agent-tools.js'
import { ErrorBody, ToolList } from './schemas.js'

/** The MCP servers of the manifest and the tools each agent can call now. Registered with prefix /v1/tools. */
const toolsRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get(
    '/',
    {
      schema: {
        tags: ['tools'],
        security: [{ bearerAuth: [] }],
        summary: 'List the MCP servers, their tools and the agents\' tools',
        description: 'A server that is down or still connecting offers no tools until it connects; `error` says why.',
        response: { 200: ToolList, 401: ErrorBody }
      }
    },
    async () => {
      const servers = fastify.tools.servers()
      const agents: Record<string, string[]> = {}
      for (const agent of fastify.agents.list()) agents[agent.id] = toolRefsOf(agent.tools ?? [], servers)
      return { servers, agents }
    }
  )
}

export default toolsRoutes
