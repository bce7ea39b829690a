import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js'
import { ErrorCode, McpError, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js'
import type { FastifyBaseLogger } from 'fastify'
import { systemClock, type Clock } from '../clock.js'
import { UNKNOWN_LABEL, type ToolMetrics } from '../metrics/tool-metrics.js'
import { SERVICE_VERSION } from '../paths.js'
import { SchemaCheck } from './schema-check.js'
import { cut, resultText, type ToolResult } from './tool-result.js'
import type { McpServerConfig, ServerSnapshot, ServerStatus, ToolCallOutcome, ToolCatalog, ToolInfo, ToolOutcomeKind } from './tools.js'

export interface Backoff {
  /** The wait before the first reconnect; it doubles after each failure... */
  initialMs: number
  /** ...up to this. */
  maxMs: number
  /** A connection that has stayed up this long starts the next failure's back-off from initialMs again. */
  healthyMs: number
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000, healthyMs: 60_000 }

export interface McpServersOptions {
  servers: readonly McpServerConfig[]
  /** The service's environment: stdio servers get PATH, HOME and the variables their `env:` names, nothing else. */
  environment: Readonly<Record<string, string | undefined>>
  log: FastifyBaseLogger
  /** TOOL_TIMEOUT_MS: a call's deadline unless its server's timeoutMs says otherwise. */
  toolTimeoutMs: number
  /** TOOL_RESULT_MAX_CHARS */
  resultMaxChars: number
  metrics?: ToolMetrics
  clock?: Clock
  backoff?: Backoff
  /** Bounds `initialize` and `tools/list` of one connection attempt. */
  connectTimeoutMs?: number
  /** Bounds close(): the SDK ends a stdio child with stdin closed, then SIGTERM, then SIGKILL. */
  closeTimeoutMs?: number
}

/**
 * The manifest's MCP servers over the official SDK client (DESIGN section 14): one connection per
 * server, supervised (a server that fails or exits is connected again with back-off), and the tool
 * catalog the reply loop reads and calls through.
 */
export class McpServers implements ToolCatalog {
  private readonly connections: Map<string, ServerConnection>
  private readonly schemaCheck = new SchemaCheck()

  constructor (private readonly options: McpServersOptions) {
    this.connections = new Map(options.servers.map((config) => [config.id, new ServerConnection(config, options)]))
  }

  /** Starts connecting every server and returns at once: a server that is down never holds up start-up. */
  start (): void {
    for (const connection of this.connections.values()) connection.start()
  }

  servers (): ServerSnapshot[] {
    return [...this.connections.values()].map((connection) => connection.snapshot())
  }

  async call (serverId: string, tool: string, args: Record<string, unknown>, signal: AbortSignal): Promise<ToolCallOutcome> {
    const started = performance.now()
    const connection = this.connections.get(serverId)
    const info = connection?.tool(tool)
    const finish = (outcome: ToolOutcomeKind, content: string): ToolCallOutcome => {
      const latencyMs = Math.round((performance.now() - started) * 100) / 100
      this.options.metrics?.recordCall(connection ? serverId : UNKNOWN_LABEL, info ? tool : UNKNOWN_LABEL, outcome, latencyMs)
      const level = outcome === 'ok' ? 'debug' : 'info'
      this.options.log[level]({ server: serverId, tool, outcome, latencyMs }, 'tool call finished')
      this.options.log.debug({ server: serverId, tool, arguments: args, content }, 'tool call result')
      return { content: cut(content, this.options.resultMaxChars), isError: outcome !== 'ok', outcome, latencyMs }
    }

    if (!connection) return finish('unavailable', `There is no MCP server "${serverId}".`)
    const client = connection.connectedClient()
    if (!client) {
      const why = connection.snapshot().error
      return finish('unavailable', `MCP server "${serverId}" is not connected${why ? ` (${why})` : ''}; its tools cannot be called now.`)
    }
    if (!info) return finish('unavailable', `MCP server "${serverId}" has no tool "${tool}" (its tools: ${connection.toolNames().join(', ') || 'none'}).`)
    if (typeof args !== 'object' || args === null || Array.isArray(args)) return finish('invalid_arguments', 'The arguments must be a JSON object.')
    let problems: string | undefined
    try {
      problems = this.schemaCheck.problems(info.inputSchema, args)
    } catch (err) {
      return finish('error', `The input schema of tool "${tool}" cannot be checked (${(err as Error).message}); the tool was not called.`)
    }
    if (problems) return finish('invalid_arguments', `Invalid arguments for tool "${tool}": ${problems}. The tool was not called.`)
    if (signal.aborted) return finish('cancelled', 'The tool call was cancelled before it started.')

    const timeoutMs = connection.config.timeoutMs ?? this.options.toolTimeoutMs
    const deadline = new AbortController()
    const cancelDeadline = (this.options.clock ?? systemClock).setTimeout(() => deadline.abort(), timeoutMs)
    this.options.log.debug({ server: serverId, tool, arguments: args }, 'tool call')
    try {
      // The SDK's own request timeout is set past ours, so the deadline that fires is the one we name.
      const result = await client.callTool({ name: tool, arguments: args }, undefined, {
        signal: AbortSignal.any([signal, deadline.signal]),
        timeout: timeoutMs + 60_000
      }) as ToolResult & { isError?: boolean }
      return finish(result.isError === true ? 'error' : 'ok', resultText(result))
    } catch (err) {
      if (deadline.signal.aborted) return finish('timeout', `Tool "${tool}" did not answer within ${timeoutMs} ms.`)
      if (signal.aborted) return finish('cancelled', `The call of tool "${tool}" was cancelled.`)
      // A JSON-RPC error is the server answering; anything else (a closed pipe, a refused HTTP
      // connection) means it is gone: an http server has no process whose exit would tell us.
      if (!(err instanceof McpError) || err.code === ErrorCode.ConnectionClosed) connection.failed((err as Error).message)
      return finish('error', `Tool "${tool}" failed: ${(err as Error).message}`)
    } finally {
      cancelDeadline()
    }
  }

  /** Stops reconnecting and closes every connection (stdio children are ended), within closeTimeoutMs. */
  async close (): Promise<void> {
    await Promise.all([...this.connections.values()].map((connection) => connection.close()))
  }
}

/** One manifest server: its client, its status, and the reconnect loop around them. */
class ServerConnection {
  private status: ServerStatus = 'connecting'
  private error: string | undefined
  private tools: ToolInfo[] = []
  private client: Client | undefined
  /** Each attempt's number: the close of an older client must not take down a newer one. */
  private attempt = 0
  private failures = 0
  private closed = false
  private cancelRetry: (() => void) | undefined
  private cancelHealthy: (() => void) | undefined
  private readonly log: FastifyBaseLogger
  private readonly clock: Clock
  private readonly backoff: Backoff

  constructor (readonly config: McpServerConfig, private readonly options: McpServersOptions) {
    this.log = options.log.child({ mcpServer: config.id })
    this.clock = options.clock ?? systemClock
    this.backoff = options.backoff ?? DEFAULT_BACKOFF
  }

  start (): void {
    void this.connect()
  }

  snapshot (): ServerSnapshot {
    const snapshot: ServerSnapshot = { id: this.config.id, status: this.status, tools: this.status === 'connected' ? this.tools : [] }
    if (this.error !== undefined && this.status !== 'connected') snapshot.error = this.error
    return snapshot
  }

  connectedClient (): Client | undefined {
    return this.status === 'connected' ? this.client : undefined
  }

  tool (name: string): ToolInfo | undefined {
    return this.status === 'connected' ? this.tools.find((tool) => tool.name === name) : undefined
  }

  toolNames (): string[] {
    return this.tools.map((tool) => tool.name)
  }

  private async connect (): Promise<void> {
    const attempt = ++this.attempt
    this.status = 'connecting'
    const client = new Client({ name: 'smalltalk-server', version: SERVICE_VERSION })
    this.client = client
    client.onerror = (err) => this.log.debug({ err: err.message }, 'MCP transport error')
    client.setNotificationHandler(ToolListChangedNotificationSchema, async () => {
      try {
        await this.list(client, attempt)
        this.log.info({ tools: this.toolNames() }, 'MCP server changed its tools')
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'MCP server announced new tools but could not list them')
      }
    })
    try {
      const timeout = this.options.connectTimeoutMs ?? 10_000
      await client.connect(this.transport(), { timeout })
      // Only now: a failed connect rejects with its own reason, which says more than "closed".
      client.onclose = () => this.lost(attempt, 'the connection closed')
      await this.list(client, attempt)
      if (attempt !== this.attempt) return
      if (this.closed) {
        await client.close()
        return
      }
      this.status = 'connected'
      this.error = undefined
      this.options.metrics?.setServerUp(this.config.id, true)
      this.cancelHealthy = this.clock.setTimeout(() => (this.failures = 0), this.backoff.healthyMs)
      this.log.info({ tools: this.toolNames() }, `MCP server "${this.config.id}" connected`)
    } catch (err) {
      this.lost(attempt, (err as Error).message)
    }
  }

  private transport (): Transport {
    if (this.config.transport === 'http') {
      return new StreamableHTTPClientTransport(new URL(this.config.url!), { requestInit: { headers: this.config.headers ?? {} } })
    }
    const transport = new StdioClientTransport({
      command: this.config.command!,
      args: this.config.args ?? [],
      cwd: process.cwd(),
      env: this.childEnvironment(),
      stderr: 'pipe'
    })
    transport.stderr?.on('data', (chunk: Buffer) => this.log.debug({ stderr: chunk.toString('utf8').trimEnd() }, 'MCP server stderr'))
    return transport
  }

  /** PATH and HOME (to find and run the program) and the variables the manifest names: never the rest. */
  private childEnvironment (): Record<string, string> {
    const environment = this.options.environment
    const env: Record<string, string> = {}
    const path = environment.PATH ?? process.env.PATH
    if (path !== undefined) env.PATH = path
    if (environment.HOME !== undefined) env.HOME = environment.HOME
    for (const name of this.config.env ?? []) {
      const value = environment[name]
      if (value !== undefined) env[name] = value
    }
    return env
  }

  private async list (client: Client, attempt: number): Promise<void> {
    const tools: ToolInfo[] = []
    let cursor: string | undefined
    do {
      const page = await client.listTools(cursor === undefined ? {} : { cursor }, { timeout: this.options.connectTimeoutMs ?? 10_000 })
      for (const tool of page.tools) {
        if (this.config.allow && !this.config.allow.includes(tool.name)) continue
        tools.push({ name: tool.name, description: tool.description ?? '', inputSchema: tool.inputSchema as Record<string, unknown> })
      }
      cursor = page.nextCursor
    } while (cursor !== undefined)
    if (attempt === this.attempt) this.tools = tools
  }

  /** A call found the server unreachable. */
  failed (reason: string): void {
    this.lost(this.attempt, reason)
  }

  /** The attempt failed or its connection ended: the server is down until the next attempt succeeds. */
  private lost (attempt: number, reason: string): void {
    if (attempt !== this.attempt || this.closed || this.status === 'down') return
    const wasConnected = this.status === 'connected'
    this.status = 'down'
    this.error = reason
    this.cancelHealthy?.()
    this.options.metrics?.setServerUp(this.config.id, false)
    const client = this.client
    this.client = undefined
    // Ends a child that is still running (a failed initialize) and frees the transport.
    void client?.close().catch(() => {})
    const delay = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** this.failures)
    this.failures++
    this.log.warn({ err: reason, retryInMs: delay }, `MCP server "${this.config.id}" is down${wasConnected ? '' : ' (could not connect)'}: ${reason}`)
    this.cancelRetry = this.clock.setTimeout(() => {
      this.cancelRetry = undefined
      if (!this.closed) void this.connect()
    }, delay)
  }

  async close (): Promise<void> {
    this.closed = true
    this.cancelRetry?.()
    this.cancelHealthy?.()
    this.status = 'down'
    this.error = 'the service is shutting down'
    const client = this.client
    this.client = undefined
    if (!client) return
    const bound = new Promise<void>((resolve) => this.clock.setTimeout(resolve, this.options.closeTimeoutMs ?? 5_000))
    await Promise.race([client.close().catch(() => {}), bound])
  }
}
