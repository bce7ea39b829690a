/**
 * The contract between the reply loop and the MCP servers of the manifest (DESIGN section 14): the
 * loop asks the catalog which tools a server offers now and calls them; McpServers (mcp-servers.ts)
 * implements it over the official @modelcontextprotocol/sdk client.
 */

/** One `mcpServers:` entry of the agents manifest, validated. */
export interface McpServerConfig {
  /** URL-safe, unique: agents name it in `tools:` and metrics label by it. */
  id: string
  transport: 'stdio' | 'http'
  /** stdio: the program the service starts, and its arguments. */
  command?: string
  args?: string[]
  /** stdio: names of the service's environment variables passed to the server (no other is). */
  env?: string[]
  /** http: the streamable-HTTP endpoint. */
  url?: string
  /** http: header name to value, each value's `${ENV_VAR}` already replaced from the environment. */
  headers?: Record<string, string>
  /** A call's timeout for this server's tools, instead of TOOL_TIMEOUT_MS. */
  timeoutMs?: number
  /** The only tools of the server that are offered (default: all). */
  allow?: string[]
}

export type ServerStatus = 'connected' | 'connecting' | 'down'

/** A tool as the server lists it (tools/list), its name the server's own. */
export interface ToolInfo {
  name: string
  description: string
  /** JSON Schema of the arguments, type object. */
  inputSchema: Record<string, unknown>
}

export interface ServerSnapshot {
  id: string
  status: ServerStatus
  /** What the server offers now (after `allow`); empty unless connected. */
  tools: ToolInfo[]
  /** Why the server is down or reconnecting (no secrets: never its headers or environment). */
  error?: string
}

/**
 * How a call ended: ok; error (the tool answered isError, or the server failed the call); timeout;
 * invalid_arguments (refused before the call: not an object, or not valid against the inputSchema);
 * unavailable (the server is not connected, or has no such tool); cancelled (the reply was aborted:
 * shutdown past the drain deadline, LLM_TIMEOUT_MS).
 */
export type ToolOutcomeKind = 'ok' | 'error' | 'timeout' | 'invalid_arguments' | 'unavailable' | 'cancelled'

export interface ToolCallOutcome {
  /** The result text for the model: text content joined, other content summarised, cut at TOOL_RESULT_MAX_CHARS. */
  content: string
  isError: boolean
  outcome: ToolOutcomeKind
  latencyMs: number
}

export interface ToolCatalog {
  /** Every manifest server, with its status and the tools it offers now. */
  servers(): ServerSnapshot[]
  /**
   * Calls `tool` of server `serverId`. Never throws: every failure (validation, timeout, a server
   * that is down or dies mid-call, an abort of `signal`) is an outcome with isError true and a
   * content that says what happened, in words the model can act on.
   */
  call(serverId: string, tool: string, args: Record<string, unknown>, signal: AbortSignal): Promise<ToolCallOutcome>
}
