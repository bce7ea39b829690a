import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { ServerSnapshot } from '../../src/tools/tools.js'
import { ErrorBody, ToolList } from './schemas.js'

/**
 * An agent's `tools:` references over what the servers offer now: `<server>` is every tool that server
 * offers, `<server>/<tool>` that one tool if it is offered. A server that is down offers nothing.
 */
export function expandToolRefs (refs: readonly string[], servers: readonly ServerSnapshot[]): string[] {
  const expanded: string[] = []
  for (const ref of refs) {
    const slash = ref.indexOf('/')
    const serverId = slash === -1 ? ref : ref.slice(0, slash)
    const offered = servers.find((server) => server.id === serverId)?.tools.map((tool) => tool.name) ?? []
    const names = slash === -1 ? offered : offered.filter((name) => name === ref.slice(slash + 1))
    for (const name of names) {
      const qualified = `${serverId}/${name}`
      if (!expanded.includes(qualified)) expanded.push(qualified)
    }
  }
  return expanded
}

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
      for (const agent of fastify.agents.list()) agents[agent.id] = expandToolRefs(agent.tools ?? [], servers)
      return { servers, agents }
    }
  )
}

export default toolsRoutes
