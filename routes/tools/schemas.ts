import { Type, type Static } from 'typebox'

export { ErrorBody } from '../sessions/schemas.js'

export const ToolSummary = Type.Object({
  name: Type.String({ description: "The tool's name on its server" }),
  description: Type.String(),
  inputSchema: Type.Record(Type.String(), Type.Unknown(), { description: 'JSON Schema of the arguments (type object), as the server lists it' })
})

export const ServerSummary = Type.Object({
  id: Type.String({ description: 'The MCP server id of the agents manifest (`mcpServers:`)' }),
  status: Type.Enum(['connected', 'connecting', 'down']),
  tools: Type.Array(ToolSummary, { description: 'What the server offers now (after its `allow` list); empty unless connected' }),
  error: Type.Optional(Type.String({ description: 'Why the server is down or reconnecting' }))
})

export const ToolList = Type.Object({
  servers: Type.Array(ServerSummary),
  agents: Type.Record(Type.String(), Type.Array(Type.String()), {
    description: 'Per agent, the tools it can call now, as "<server id>/<tool name>": its manifest `tools:` over what the servers offer'
  })
})

export type ToolList = Static<typeof ToolList>
