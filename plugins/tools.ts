import fp from 'fastify-plugin'
import { ToolMetrics } from '../src/metrics/tool-metrics.js'
import { McpServers } from '../src/tools/mcp-servers.js'
import type { ToolCatalog } from '../src/tools/tools.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The manifest's MCP servers and their tools (DESIGN section 14): the reply loop calls through it. */
    tools: ToolCatalog & { close(): Promise<void> }
    /** Tool calls, latency, steps per reply and server status, in the registry the ops instance serves. */
    toolMetrics: ToolMetrics
  }
}

/**
 * Connects the manifest's MCP servers once the app is ready, without waiting for any of them (a server
 * that is down only means its tools are not offered), and closes them, children included, on close.
 */
export default fp(
  async function tools (fastify) {
    const configs = fastify.mcpServerConfigs
    const metrics = new ToolMetrics(fastify.metricsRegistry, configs.map((config) => config.id))
    const servers = new McpServers({
      servers: configs,
      environment: fastify.environment,
      log: fastify.log,
      toolTimeoutMs: fastify.config.TOOL_TIMEOUT_MS,
      resultMaxChars: fastify.config.TOOL_RESULT_MAX_CHARS,
      metrics
    })
    fastify.decorate('tools', servers)
    fastify.decorate('toolMetrics', metrics)
    fastify.addHook('onReady', async () => servers.start())
    fastify.addHook('onClose', async () => servers.close())
  },
  { name: 'tools', dependencies: ['config', 'metrics', 'agents'] }
)
