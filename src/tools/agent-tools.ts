import type { ToolDefinition } from '../providers/provider.js'
import type { ServerSnapshot } from './tools.js'

/** One tool an agent may call now: where it lives, and how its model is told of it. */
export interface AgentTool {
  server: string
  /** The tool's name on its server. */
  tool: string
  /** `definition.name` is the name the model calls it by (see agentToolset). */
  definition: ToolDefinition
}

const MODEL_NAME = /^[a-zA-Z0-9_-]{1,64}$/

/**
 * The tools an agent may call now: its manifest `tools:` refs (`<server>`: all of that server's tools,
 * `<server>/<tool>`: that one) over what the connected servers offer at this moment; a server that is
 * down offers nothing. The model knows a tool by its own name, or by `<server>__<tool>` when two of
 * the agent's servers have a tool of that name or the name is not one every provider accepts.
 */
export function agentToolset (refs: readonly string[], servers: readonly ServerSnapshot[]): AgentTool[] {
  if (refs.length === 0) return []
  const picked: Array<{ server: string; info: ServerSnapshot['tools'][number] }> = []
  for (const server of servers) {
    if (server.status !== 'connected') continue
    const all = refs.includes(server.id)
    for (const info of server.tools) {
      if (all || refs.includes(`${server.id}/${info.name}`)) picked.push({ server: server.id, info })
    }
  }
  const count = new Map<string, number>()
  for (const { info } of picked) count.set(info.name, (count.get(info.name) ?? 0) + 1)
  return picked.map(({ server, info }) => {
    const own = MODEL_NAME.test(info.name) && count.get(info.name) === 1
    const name = own ? info.name : `${server}__${info.name}`.replace(/[^a-zA-Z0-9_-]/g, '_').slice(0, 64)
    return { server, tool: info.name, definition: { name, description: info.description, inputSchema: info.inputSchema } }
  })
}

/** `<server>/<tool>` for each tool an agent may call now (GET /v1/tools). */
export const toolRefsOf = (refs: readonly string[], servers: readonly ServerSnapshot[]): string[] =>
  agentToolset(refs, servers).map((tool) => `${tool.server}/${tool.tool}`)
