import promClient, { type Registry } from 'prom-client'
import type { ToolOutcomeKind } from '../tools/tools.js'

export const TOOL_OUTCOMES: readonly ToolOutcomeKind[] = ['ok', 'error', 'timeout', 'invalid_arguments', 'unavailable', 'cancelled']

/** The label of a server or tool that the manifest does not know (a model may name anything). */
export const UNKNOWN_LABEL = '(unknown)'

/**
 * The tool metrics (DESIGN section 14). Server labels come from the manifest, tool labels from what
 * the servers list (a call to a tool no server offers is labelled "(unknown)"), so the sets stay bounded.
 */
export class ToolMetrics {
  /** One tools/call (or its refusal before the call), by outcome. */
  readonly calls: promClient.Counter<'server' | 'tool' | 'outcome'>
  /** Time of a call, from the request to its result, whatever the outcome. */
  readonly duration: promClient.Histogram<'server' | 'tool'>
  /** Tool steps (model turns that asked for tools) of one reply: observed by the reply loop. */
  readonly stepsPerReply: promClient.Histogram
  private readonly serverUp: promClient.Gauge<'server'>

  constructor (registry: Registry, serverIds: readonly string[]) {
    const registers = [registry]
    this.calls = new promClient.Counter({
      name: 'smalltalk_tool_calls_total',
      help: 'MCP tool calls, by server, tool and outcome (ok, error, timeout, invalid_arguments, unavailable, cancelled)',
      labelNames: ['server', 'tool', 'outcome'],
      registers
    })
    this.duration = new promClient.Histogram({
      name: 'smalltalk_tool_call_duration_seconds',
      help: 'Duration of MCP tool calls, from the request to the result',
      labelNames: ['server', 'tool'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers
    })
    this.stepsPerReply = new promClient.Histogram({
      name: 'smalltalk_tool_steps_per_reply',
      help: 'Tool steps of the replies that had tools to use (0: the model answered without calling one)',
      buckets: [0, 1, 2, 3, 5, 10, 20],
      registers
    })
    this.serverUp = new promClient.Gauge({
      name: 'smalltalk_mcp_server_up',
      help: 'MCP server of the manifest: 1 connected, 0 connecting or down',
      labelNames: ['server'],
      registers
    })
    for (const server of serverIds) this.serverUp.set({ server }, 0)
  }

  recordCall (server: string, tool: string, outcome: ToolOutcomeKind, latencyMs: number): void {
    this.calls.inc({ server, tool, outcome })
    this.duration.observe({ server, tool }, latencyMs / 1000)
  }

  setServerUp (server: string, up: boolean): void {
    this.serverUp.set({ server }, up ? 1 : 0)
  }

  /** The reply loop, once per reply of an agent that has tools. */
  observeSteps (steps: number): void {
    this.stepsPerReply.observe(steps)
  }
}
