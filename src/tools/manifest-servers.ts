import { Type, type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import type { McpServerConfig } from './tools.js'

/** The tool steps of one reply when an agent names none, and the most it may name (DESIGN section 14). */
export const DEFAULT_MAX_TOOL_STEPS = 5
export const MAX_TOOL_STEPS = 20

/** Server ids appear in agents' `tools:`, in GET /v1/tools and in metric labels: URL-safe, like agent ids. */
const SERVER_ID_PATTERN = '^[a-z0-9][a-z0-9_-]*$'
const ENV_NAME = '^[A-Za-z_][A-Za-z0-9_]*$'
/** `${NAME}` in a header value: replaced by that environment variable's value. */
const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g

const ServerEntry = Type.Object(
  {
    id: Type.String({ pattern: SERVER_ID_PATTERN, maxLength: 64 }),
    transport: Type.Enum(['stdio', 'http']),
    command: Type.Optional(Type.String({ minLength: 1 })),
    args: Type.Optional(Type.Array(Type.String())),
    env: Type.Optional(Type.Array(Type.String({ pattern: ENV_NAME }))),
    url: Type.Optional(Type.String({ minLength: 1 })),
    headers: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Type.String())),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 600_000 })),
    allow: Type.Optional(Type.Array(Type.String({ minLength: 1 })))
  },
  { additionalProperties: false }
)
const SERVER_FIELDS = Object.keys(ServerEntry.properties)
const checkServer = Compile(ServerEntry)

/**
 * The manifest's `mcpServers:` list, validated: each problem names the server and the field. Header
 * values have their `${ENV_VAR}` placeholders replaced from `environment` (a variable that is not set
 * is a problem: a server would otherwise be called without its credentials).
 */
export function parseMcpServers (entries: unknown, environment: Record<string, string | undefined>): McpServerConfig[] | { problems: string[] } {
  if (entries === undefined || entries === null) return []
  if (!Array.isArray(entries)) return { problems: ['"mcpServers" must be a list of MCP servers'] }
  const problems: string[] = []
  const servers: McpServerConfig[] = []
  entries.forEach((entry: unknown, index) => {
    const label = `MCP server ${index + 1}${isMapping(entry) && typeof entry.id === 'string' ? ` (${JSON.stringify(entry.id)})` : ''}`
    const found: string[] = []
    if (!isMapping(entry)) {
      problems.push(`${label}: must be a mapping of fields (${SERVER_FIELDS.join(', ')})`)
      return
    }
    for (const error of checkServer.Errors(entry)) {
      if (error.keyword === 'required') {
        for (const field of (error.params as { requiredProperties: string[] }).requiredProperties) found.push(`${field} is required`)
      } else if (error.keyword === 'additionalProperties') {
        for (const field of (error.params as { additionalProperties: string[] }).additionalProperties) found.push(`unknown field "${field}" (the fields are ${SERVER_FIELDS.join(', ')})`)
      } else if (error.keyword !== 'boolean') {
        const field = error.instancePath.split('/').slice(1).join('.')
        const hint = field === 'transport' ? 'must be stdio or http' : field.startsWith('env') ? 'must list names of environment variables' : field === 'id' ? 'must be URL-safe: lowercase letters, digits, "-" and "_"' : error.message
        found.push(`${field} ${hint}`)
      }
    }
    if (found.length === 0) {
      const server = entry as Static<typeof ServerEntry>
      if (server.transport === 'stdio') {
        if (server.command === undefined) found.push('command is required for transport stdio')
        for (const field of ['url', 'headers'] as const) if (server[field] !== undefined) found.push(`${field} is for transport http, not stdio`)
      } else {
        if (server.url === undefined) found.push('url is required for transport http')
        else if (!isHttpUrl(server.url)) found.push(`url must be an http:// or https:// URL (got ${JSON.stringify(server.url)})`)
        for (const field of ['command', 'args', 'env'] as const) if (server[field] !== undefined) found.push(`${field} is for transport stdio, not http`)
      }
      if (servers.some((other) => other.id === server.id)) found.push(`id "${server.id}" is already used by another MCP server`)
      const headers: Record<string, string> = {}
      for (const [name, value] of Object.entries(server.headers ?? {})) {
        headers[name] = value.replace(PLACEHOLDER, (_, variable: string) => {
          const set = environment[variable]
          if (set === undefined || set === '') found.push(`headers.${name} uses \${${variable}}, which is not set in the environment`)
          return set ?? ''
        })
      }
      if (found.length === 0) servers.push(toConfig(server, headers))
    }
    problems.push(...found.map((problem) => `${label}: ${problem}`))
  })
  return problems.length > 0 ? { problems } : servers
}

function toConfig (entry: Static<typeof ServerEntry>, headers: Record<string, string>): McpServerConfig {
  const config: McpServerConfig = { id: entry.id, transport: entry.transport }
  if (entry.command !== undefined) config.command = entry.command
  if (entry.args !== undefined) config.args = entry.args
  if (entry.env !== undefined) config.env = entry.env
  if (entry.url !== undefined) config.url = entry.url
  if (entry.headers !== undefined) config.headers = headers
  if (entry.timeoutMs !== undefined) config.timeoutMs = entry.timeoutMs
  if (entry.allow !== undefined) config.allow = entry.allow
  return config
}

/**
 * An agent's `tools:` references: each `<server id>` (all its tools) or `<server id>/<tool name>`, the
 * server one of `servers`, the tool within its `allow` list when it has one. Problems name the entry.
 */
export function checkToolRefs (refs: string[], servers: McpServerConfig[]): string[] {
  const problems: string[] = []
  for (const ref of refs) {
    const slash = ref.indexOf('/')
    const serverId = slash === -1 ? ref : ref.slice(0, slash)
    const tool = slash === -1 ? undefined : ref.slice(slash + 1)
    const server = servers.find((candidate) => candidate.id === serverId)
    if (!server) {
      const known = servers.length > 0 ? ` (MCP servers: ${servers.map((s) => s.id).join(', ')})` : ' (the manifest has no mcpServers)'
      problems.push(`tools: "${ref}" names no MCP server of this manifest${known}`)
    } else if (tool === '') {
      problems.push(`tools: "${ref}" must be "<server id>" or "<server id>/<tool name>"`)
    } else if (tool !== undefined && server.allow !== undefined && !server.allow.includes(tool)) {
      problems.push(`tools: "${ref}": tool "${tool}" is not in the allow list of MCP server "${serverId}" (${server.allow.join(', ')})`)
    }
  }
  if (new Set(refs).size !== refs.length) problems.push('tools must be distinct')
  return problems
}

function isMapping (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function isHttpUrl (value: string): boolean {
  try {
    const url = new URL(value)
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== ''
  } catch {
    return false
  }
}
