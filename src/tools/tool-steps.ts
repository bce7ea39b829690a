import type { Message } from '../messages/message-store.js'
import type { ChatTurn, ToolCallRequest, ToolDefinition } from '../providers/provider.js'
import type { AgentTool } from './agent-tools.js'
import type { ToolCatalog, ToolOutcomeKind } from './tools.js'

/**
 * One tool call of a reply and its result (DESIGN section 14): what a `role: "tool"` message stores,
 * `content` the result text and the rest its metadata.
 */
export interface ToolExchange {
  /** The model's call id. */
  callId: string
  /** The manifest server id ('' when the model asked for a tool the agent does not have). */
  server: string
  /** The tool's own name on its server (the name the model used when it is not one of the agent's). */
  tool: string
  arguments: Record<string, unknown>
  content: string
  isError: boolean
  outcome: ToolOutcomeKind | 'refused'
  latencyMs: number
  /** The reply's tool step (from 1): the calls of one model answer share it. */
  step: number
}

/** A turn of the model's context: a message as a ChatTurn, or a stored tool exchange of an agent. */
export type ContextTurn = ChatTurn | { role: 'exchange'; agent: string; exchange: ToolExchange }

/** How a stored tool message keeps its exchange: `content` is the result, the rest is metadata. */
export function exchangeMetadata (exchange: ToolExchange): Record<string, unknown> {
  const { callId, tool, server, arguments: args, isError, latencyMs, outcome, step } = exchange
  return { callId, tool, server, arguments: args, isError, latencyMs, outcome, step }
}

/** The exchange a stored tool message holds (undefined for any other message, or metadata not ours). */
export function exchangeOf (message: Message): ToolExchange | undefined {
  if (message.role !== 'tool') return undefined
  const m = message.metadata
  if (typeof m.callId !== 'string' || typeof m.tool !== 'string') return undefined
  return {
    callId: m.callId,
    server: typeof m.server === 'string' ? m.server : '',
    tool: m.tool,
    arguments: isObject(m.arguments) ? m.arguments : {},
    content: message.content,
    isError: m.isError === true,
    outcome: (typeof m.outcome === 'string' ? m.outcome : m.isError === true ? 'error' : 'ok') as ToolExchange['outcome'],
    latencyMs: typeof m.latencyMs === 'number' ? m.latencyMs : message.latencyMs ?? 0,
    step: typeof m.step === 'number' ? m.step : 0
  }
}

/** A stored message as a context turn: a tool message becomes its agent's exchange. */
export function contextTurnOf (message: Message): ContextTurn {
  const exchange = exchangeOf(message)
  if (exchange) return { role: 'exchange', agent: message.agent ?? '', exchange }
  return { role: message.role === 'tool' ? 'user' : message.role, content: message.content }
}

/** The tool definitions the model is sent, under the names it knows them by. */
export const toolDefinitions = (toolset: AgentTool[]): ToolDefinition[] => toolset.map((tool) => tool.definition)

/** An exchange in words, for a model that cannot see it as a tool call (another agent's, or a tool it lacks). */
export function describeExchange (exchange: ToolExchange): string {
  const target = exchange.server === '' ? exchange.tool : `${exchange.server}/${exchange.tool}`
  return `[tool call ${target} ${JSON.stringify(exchange.arguments)} -> ${exchange.isError ? 'error: ' : ''}${exchange.content}]`
}

/**
 * The context as `agentId`'s model is sent it. The agent's own exchanges whose tools it has (all of
 * a step's) go in the provider's tool format: an assistant turn asking for the step's calls, then one
 * tool turn per result. Any other exchange (another agent's, a tool it no longer has, a step cut by
 * the context window) is a user turn in words. Call ids are made safe for every provider
 * (Anthropic's ^[a-zA-Z0-9_-]+$) and unique in the request: echo's and Gemini's made-up ids repeat
 * from one reply to the next.
 */
export function renderTurns (turns: ContextTurn[], agentId: string, toolset: AgentTool[]): ChatTurn[] {
  const out: ChatTurn[] = []
  const usedIds = new Set<string>()
  const uniqueId = (id: string): string => {
    const base = id.replace(/[^a-zA-Z0-9_-]/g, '_').slice(0, 60) || 'call'
    let candidate = base
    for (let n = 2; usedIds.has(candidate); n++) candidate = `${base}_${n}`
    usedIds.add(candidate)
    return candidate
  }
  for (let i = 0; i < turns.length;) {
    const turn = turns[i] as ContextTurn
    if (turn.role !== 'exchange') {
      out.push(turn)
      i++
      continue
    }
    // The exchanges of one step of one agent, together.
    const step: Array<{ agent: string; exchange: ToolExchange }> = []
    while (i < turns.length) {
      const next = turns[i] as ContextTurn
      if (next.role !== 'exchange' || next.agent !== turn.agent || next.exchange.step !== turn.exchange.step) break
      step.push(next)
      i++
    }
    // A refused call (server '') keeps the name the model used: the model sees its own call answered.
    const names = step.map(({ exchange }) => exchange.server === '' ? exchange.tool : toolset.find((tool) => tool.server === exchange.server && tool.tool === exchange.tool)?.definition.name)
    if (turn.agent === agentId && names.every((name) => name !== undefined)) {
      const ids = step.map(({ exchange }) => uniqueId(exchange.callId))
      out.push({ role: 'assistant', content: '', toolCalls: step.map(({ exchange }, j) => ({ id: ids[j] as string, name: names[j] as string, arguments: exchange.arguments })) })
      step.forEach(({ exchange }, j) => out.push({ role: 'tool', content: exchange.content, toolResult: { callId: ids[j] as string, name: names[j] as string, isError: exchange.isError } }))
    } else {
      out.push({ role: 'user', content: step.map(({ exchange }) => describeExchange(exchange)).join('\n') })
    }
  }
  return out
}

/** A call the model asked for, and the agent's tool it names (undefined: not one of the agent's). */
export interface PlannedCall {
  request: ToolCallRequest
  target: AgentTool | undefined
}

export const planCalls = (calls: ToolCallRequest[], toolset: AgentTool[]): PlannedCall[] =>
  calls.map((request) => ({ request, target: toolset.find((tool) => tool.definition.name === request.name) }))

/**
 * Runs a step's calls at once (the model asked for them together), each through the catalog, which
 * never throws; a call the agent may not make, or whose arguments were not a JSON object, is refused
 * without reaching a server, as an error result the model can act on.
 */
export async function runCalls (catalog: ToolCatalog, planned: PlannedCall[], step: number, signal: AbortSignal): Promise<ToolExchange[]> {
  return Promise.all(planned.map(async ({ request, target }): Promise<ToolExchange> => {
    const base = { callId: request.id, arguments: request.arguments, step }
    if (!target) {
      return { ...base, server: '', tool: request.name, content: `Tool ${request.name} is not one of this agent's tools; it was not called`, isError: true, outcome: 'refused', latencyMs: 0 }
    }
    const named = { ...base, server: target.server, tool: target.tool }
    if (request.argumentsError !== undefined) {
      return { ...named, content: `The arguments were not a JSON object (${request.argumentsError}); the tool was not called`, isError: true, outcome: 'invalid_arguments', latencyMs: 0 }
    }
    const outcome = await catalog.call(target.server, target.tool, request.arguments, signal)
    return { ...named, content: outcome.content, isError: outcome.isError, outcome: outcome.outcome, latencyMs: Math.round(outcome.latencyMs) }
  }))
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** A tool call as the answers show it (JSON `toolCalls`, the idempotent replay). */
export interface ToolCallView {
  callId: string
  tool: string
  server: string
  arguments: Record<string, unknown>
  isError: boolean
  content: string
  /** In a group round: whose turn called it. */
  agent?: string
}

export function toolCallView (exchange: ToolExchange, agent?: string): ToolCallView {
  const { callId, tool, server, arguments: args, isError, content } = exchange
  return { callId, tool, server, arguments: args, isError, content, ...(agent === undefined ? {} : { agent }) }
}
