import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition, AgentSelection } from '../agents/agent.js'
import { deadline, type ProviderGuard } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import type { ChatTurn } from '../providers/provider.js'
import type { DomainError } from '../domain-errors.js'
import type { SpeakerReason } from '../groups/speakers.js'
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
}

/** What the model answered, and which agent it was (a fallback when the chosen one failed). */
export interface Answer {
  agent: AgentDefinition
  providerName: string
  text: string
  usage: { inputTokens: number; outputTokens: number }
  /** The agent that was selected and failed before its first delta, when a fallback answered. */
  fallbackFrom: AgentDefinition | undefined
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

  async produce (first: AgentDefinition, context: ChatTurn[], sink: ReplySink, options: ProduceOptions = {}): Promise<Answer> {
    const { agents, guard, llmMetrics, log } = this.options
    const messages = options.priorTurns?.length ? [...options.priorTurns, ...context] : context
    const replyDeadline = deadline(this.options.llmTimeoutMs, options.signal ?? this.options.shutdownSignal)
    const { signal } = replyDeadline
    const tried = new Set<string>()
    const failures: unknown[] = []
    let agent = first
    let sent = false
    try {
      for (;;) {
        tried.add(agent.id)
        const provider = agents.providerFor(agent)
        try {
          const { text, usage } = await guard.run({
            agent,
            provider,
            request: {
              model: agent.model,
              systemPrompt: [options.systemPrompt ?? agent.systemPrompt, options.systemText].filter(Boolean).join('\n\n'),
              messages,
              temperature: options.temperature ?? agent.temperature,
              maxTokens: options.maxTokens ?? agent.maxTokens,
              stream: sink.live
            },
            signal,
            deadlineAt: replyDeadline.at,
            onDelta: (text) => {
              sent = true
              return sink.delta(text)
            }
          })
          return { agent, providerName: provider.name, text, usage, fallbackFrom: agent === first ? undefined : first }
        } catch (err) {
          failures.push(err)
          const next = sent || signal.aborted || options.useFallbacks === false ? undefined : this.nextFallback(agent, tried)
          if (!next) throw new ProduceFailed(failures, sent)
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
