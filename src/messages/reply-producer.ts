import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition, AgentSelection } from '../agents/agent.js'
import { deadline, type Deadline, type ProviderGuard } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import type { ChatTurn } from '../providers/provider.js'
import type { DomainError } from '../domain-errors.js'
import type { SpeakerReason } from '../groups/speakers.js'
import { agentToolset } from '../tools/agent-tools.js'
import { DEFAULT_MAX_TOOL_STEPS } from '../tools/manifest-servers.js'
import { planCalls, renderTurns, runCalls, toolDefinitions, type ContextTurn, type PlannedCall, type ToolExchange } from '../tools/tool-steps.js'
import type { ToolCatalog } from '../tools/tools.js'
import type { Message } from './message-store.js'

/** Who answers a message, and why: the SSE `agent` event. */
export interface AgentAnnouncement {
  agent: string
  name: string
  reason: AgentSelection['reason'] | SpeakerReason
  matched: string[]
  provider: string
  model: string
  /** In a group round: the turn's number, from 1. */
  turn?: number
}

/**
 * Where a reply goes as it is produced: the JSON route ignores the parts, the SSE route streams them.
 * A sink whose client went away keeps accepting calls (and drops them): the reply is finished and
 * stored regardless.
 */
export interface ReplySink {
  /** Whether deltas reach a client as they come (SSE). When not (JSON), the provider is asked for the whole answer at once. */
  readonly live: boolean
  message(message: Message): Promise<void> | void
  agent(selection: AgentAnnouncement): Promise<void> | void
  delta(text: string): Promise<void> | void
  /** In a group round: a turn's reply, stored. */
  turn?(message: Message): Promise<void> | void
  /** In a group round: turn `turn` failed; the round goes on. */
  turnFailed?(turn: number, failure: DomainError): Promise<void> | void
  /** The model asked for a tool call (SSE `tool_call`), before it runs. */
  toolCall?(call: { callId: string; tool: string; server: string; arguments: Record<string, unknown> }): Promise<void> | void
  /** A tool call's result, stored (SSE `tool_result`), before the next model step. */
  toolResult?(result: { callId: string; isError: boolean; content: string }): Promise<void> | void
}

/**
 * Where a reply's tool steps are kept: the session's rows under the reply's lease, or (a stateless
 * OpenAI-compatible request, a stateless round) nowhere. `finished` throws when they cannot be
 * stored (the lease lost, the session ended): the reply stops there, nothing more is called.
 */
export interface ToolStepStore {
  /** The calls about to run: their tool.called events. */
  called(agent: AgentDefinition, calls: PlannedCall[]): Promise<void>
  /** A step's results, stored in order as `role: "tool"` messages, before the model is asked again. */
  finished(agent: AgentDefinition, exchanges: ToolExchange[]): Promise<void>
}

/** What the model answered, and which agent it was (a fallback when the chosen one failed). */
export interface Answer {
  agent: AgentDefinition
  providerName: string
  text: string
  usage: { inputTokens: number; outputTokens: number }
  /** The agent that was selected and failed before its first delta, when a fallback answered. */
  fallbackFrom: AgentDefinition | undefined
  /** The reply's tool calls in order, each with the agent that made it (empty: no tool was called). */
  toolCalls: StoredToolCall[]
}

export interface StoredToolCall {
  agent: string
  exchange: ToolExchange
}

/** How one reply departs from an agent's defaults (a group turn's, an OpenAI-compatible request's). */
export interface ProduceOptions {
  /** Instead of the agent's own system prompt. */
  systemPrompt?: string
  /** After the system prompt: the caller's own system text (the OpenAI-compatible API). */
  systemText?: string | undefined
  /** Instead of the agent's temperature and maxTokens. */
  temperature?: number | undefined
  maxTokens?: number | undefined
  /** Turns of context before the messages given to produce (a caller's earlier turns, kept nowhere). */
  priorTurns?: ChatTurn[] | undefined
  /** Whether the agent's fallback chain may answer when it fails (default true; a group turn: false). */
  useFallbacks?: boolean
  /** The deadline's parent (default the shutdown signal): a group round's own deadline. */
  signal?: AbortSignal
  /** Where tool steps are stored; without one, the agent is offered no tools. */
  toolSteps?: ToolStepStore | undefined
}

/** Every agent tried failed: the failures in order, and whether text had reached the client. */
export class ProduceFailed extends Error {
  constructor (
    readonly failures: unknown[],
    readonly afterFirstDelta: boolean
  ) {
    super('the reply could not be produced')
  }
}

export interface ProducerOptions {
  agents: AgentRegistry
  /** Retries and circuit breakers around every provider call. */
  guard: ProviderGuard
  llmMetrics: LlmMetrics
  log: FastifyBaseLogger
  /** LLM_TIMEOUT_MS: bounds the whole reply, retries and fallbacks included. */
  llmTimeoutMs: number
  /** Aborted when the service shuts down past its drain deadline: running replies end with an error. */
  shutdownSignal: AbortSignal
  /** The MCP servers' tools (absent: no agent has tools). */
  tools?: ToolCatalog | undefined
  /** Observes the tool steps of each reply that had tools to call. */
  toolMetrics?: { observeSteps(steps: number): void } | undefined
}

/**
 * Produces one reply: the chosen agent through the provider guard (retries, breaker); when it fails
 * before any delta reached the client, the next agent up its `fallback` chain answers, all within one
 * LLM_TIMEOUT_MS deadline. A failure after a delta was sent ends the reply (never restarted, so the
 * client never sees two different beginnings). Throws ProduceFailed.
 */
export class ReplyProducer {
  constructor (private readonly options: ProducerOptions) {}

  announce (agent: AgentDefinition, reason: AgentAnnouncement['reason'], matched: string[]): AgentAnnouncement {
    return { agent: agent.id, name: agent.name, reason, matched, provider: this.options.agents.providerFor(agent).name, model: agent.model }
  }

  async produce (first: AgentDefinition, context: ContextTurn[], sink: ReplySink, options: ProduceOptions = {}): Promise<Answer> {
    const { llmMetrics, log } = this.options
    const turns: ContextTurn[] = options.priorTurns?.length ? [...options.priorTurns, ...context] : context
    const replyDeadline = deadline(this.options.llmTimeoutMs, options.signal ?? this.options.shutdownSignal)
    const { signal } = replyDeadline
    const tried = new Set<string>()
    const failures: unknown[] = []
    // Tool calls already made (and stored) in this reply: a fallback goes on from them, never repeats them.
    const toolCalls: StoredToolCall[] = []
    const progress = { sent: false }
    let agent = first
    try {
      for (;;) {
        tried.add(agent.id)
        try {
          const { text, usage, providerName } = await this.answerWithTools(agent, turns, toolCalls, sink, options, replyDeadline, progress)
          return { agent, providerName, text, usage, fallbackFrom: agent === first ? undefined : first, toolCalls }
        } catch (err) {
          failures.push(err)
          const next = progress.sent || signal.aborted || options.useFallbacks === false || err instanceof ToolStepsNotStored ? undefined : this.nextFallback(agent, tried)
          if (!next) throw new ProduceFailed(failures.map((failure) => failure instanceof ToolStepsNotStored ? failure.cause : failure), progress.sent)
          llmMetrics.fallbacks.inc({ agent: agent.id, fallback: next.id })
          log.warn({ agent: agent.id, fallback: next.id, err: { name: (err as Error).name, message: (err as Error).message } }, 'agent failed before its first token; its fallback answers')
          await sink.agent(this.announce(next, 'fallback', []))
          agent = next
        }
      }
    } finally {
      replyDeadline.dispose()
    }
  }

  /**
   * One agent's answer: a model step, and while the model asks for tool calls (and the agent may
   * make more), the calls run, their results are stored, and the model is asked again with them;
   * every step within the reply's deadline. Past `maxToolSteps` the text so far is the answer, with
   * a line that says the limit was reached.
   */
  private async answerWithTools (
    agent: AgentDefinition,
    turns: ContextTurn[],
    toolCalls: StoredToolCall[],
    sink: ReplySink,
    options: ProduceOptions,
    replyDeadline: Deadline,
    progress: { sent: boolean }
  ): Promise<{ text: string; usage: Answer['usage']; providerName: string }> {
    const { agents, guard, tools: catalog } = this.options
    const provider = agents.providerFor(agent)
    const store = options.toolSteps
    // An agent without tools (most replies) never reads the servers' snapshots.
    const toolset = store && catalog && agent.tools?.length ? agentToolset(agent.tools, catalog.servers()) : []
    const maxSteps = agent.maxToolSteps ?? DEFAULT_MAX_TOOL_STEPS
    const onDelta = (text: string) => {
      progress.sent = true
      return sink.delta(text)
    }
    const usage = { inputTokens: 0, outputTokens: 0 }
    let text = ''
    let steps = 0
    for (;;) {
      const context = [...turns, ...toolCalls.map((call): ContextTurn => ({ role: 'exchange', agent: call.agent, exchange: call.exchange }))]
      const result = await guard.run({
        agent,
        provider,
        request: {
          model: agent.model,
          systemPrompt: [options.systemPrompt ?? agent.systemPrompt, options.systemText].filter(Boolean).join('\n\n'),
          messages: renderTurns(context, agent.id, toolset),
          temperature: options.temperature ?? agent.temperature,
          maxTokens: options.maxTokens ?? agent.maxTokens,
          stream: sink.live,
          ...(toolset.length > 0 ? { tools: toolDefinitions(toolset) } : {})
        },
        signal: replyDeadline.signal,
        deadlineAt: replyDeadline.at,
        onDelta
      })
      text += result.text
      usage.inputTokens += result.usage.inputTokens
      usage.outputTokens += result.usage.outputTokens
      if (result.toolCalls.length === 0 || toolset.length === 0 || !store || !catalog) break
      if (steps >= maxSteps) {
        const note = `${text === '' ? '' : '\n\n'}[${agent.name} reached its limit of ${maxSteps} tool step${maxSteps === 1 ? '' : 's'} (maxToolSteps) before a final answer.]`
        await onDelta(note)
        text += note
        break
      }
      steps += 1
      const planned = planCalls(result.toolCalls, toolset)
      await store.called(agent, planned)
      for (const { request, target } of planned) await sink.toolCall?.({ callId: request.id, tool: target?.tool ?? request.name, server: target?.server ?? '', arguments: request.arguments })
      const exchanges = await runCalls(catalog, planned, steps, replyDeadline.signal)
      await store.finished(agent, exchanges).catch((err: unknown) => {
        throw new ToolStepsNotStored(err)
      })
      for (const exchange of exchanges) toolCalls.push({ agent: agent.id, exchange })
      for (const exchange of exchanges) await sink.toolResult?.({ callId: exchange.callId, isError: exchange.isError, content: exchange.content })
    }
    if (toolset.length > 0) this.options.toolMetrics?.observeSteps(steps)
    return { text, usage, providerName: provider.name }
  }

  /** The first agent along `agent`'s fallback chain that is not down and was not tried yet. */
  private nextFallback (agent: AgentDefinition, tried: Set<string>): AgentDefinition | undefined {
    const { agents } = this.options
    const seen = new Set<string>([agent.id])
    let next = agent.fallback === undefined ? undefined : agents.get(agent.fallback)
    while (next && !seen.has(next.id)) {
      if (!tried.has(next.id) && !agents.isDown(next.id)) return next
      seen.add(next.id)
      next = next.fallback === undefined ? undefined : agents.get(next.fallback)
    }
    return undefined
  }
}

/** A tool step's results could not be stored (the lease lost, the session ended): the reply stops, no fallback. */
class ToolStepsNotStored extends Error {
  constructor (override readonly cause: unknown) {
    super('the tool step could not be stored', { cause })
  }
}
