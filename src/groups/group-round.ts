import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition } from '../agents/agent.js'
import { deadline } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'
import { DomainError } from '../domain-errors.js'
import type { NewEvent } from '../events/event-log.js'
import type { Message } from '../messages/message-store.js'
import { describeReplyFailure } from '../messages/reply-failure.js'
import type { ReplyProducer, ReplySink } from '../messages/reply-producer.js'
import type { Lease, NewReply, ReplyRepository, StoredReply } from '../messages/reply-repository.js'
import type { Failure } from '../domain-errors.js'
import type { GroupMetrics, StopReason } from '../metrics/group-metrics.js'
import { leaseToolSteps, type ToolMessageRepository } from '../messages/tool-step-store.js'
import { toolCallView, type ToolCallView } from '../tools/tool-steps.js'
import { groupSystemPrompt, groupTurns, transcript } from './group-context.js'
import type { GroupSettings, Strategy } from './group-settings.js'
import type { GroupManager } from './manager.js'
import { bestByExpertise, mentionedAgents, nextInTurn, type SpeakerReason } from './speakers.js'

/** A round's answer (JSON `{ message, replies, round }`; SSE `done` carries `{ replies, round }`). */
export interface RoundResult {
  message: Message
  replies: Message[]
  round: { turns: number; stop: StopReason }
  /** The turns' tool calls and results, in order, each with the agent whose turn called it. */
  toolCalls: ToolCallView[]
}

export interface GroupRoundOptions {
  agents: AgentRegistry
  producer: ReplyProducer
  replies: ReplyRepository
  manager: GroupManager
  metrics: GroupMetrics
  log: FastifyBaseLogger
  llmTimeoutMs: number
  /** GROUP_ROUND_TIMEOUT_MS. */
  roundTimeoutMs: number
  /** How long the lease lasts from each turn on: the next turn's deadline, its manager call and a margin. */
  leaseMs: number
  /** Aborted at the shutdown deadline: the turn running then ends. */
  shutdownSignal: AbortSignal
  /** True once shutdown has begun: no new turn starts. */
  shuttingDown: () => boolean
  /** Writes a stored turn to the cache (history list, session record), in order. */
  cacheTurn: (stored: { session: Lease['session']; reply: Message }) => Promise<void>
  /** Writes a turn's stored tool messages to the cached history, in order. */
  cacheToolMessages: (sessionId: string, messages: Message[]) => Promise<void>
}

/**
 * Where a round's turns go: the session's rows under its lease (ReplyRepository), or, for a
 * stateless round (the OpenAI-compatible API's group models), nowhere but the answer.
 */
export interface RoundStore extends ToolMessageRepository {
  record(events: NewEvent[]): Promise<void>
  storeTurn(lease: Lease, reply: NewReply, renewMs: number): Promise<StoredReply | undefined>
  renewLease(lease: Lease, renewMs: number): Promise<boolean>
  whyNotStored(lease: Lease): Promise<Failure>
}

export interface RoundInput {
  tenant: string
  lease: Lease
  /** The messages before the user message, oldest first (CONTEXT_MESSAGES - 1 at most). */
  before: Message[]
  contextMessages: number
  sink: ReplySink
  /** The agent the client named (`agent` in the body): it speaks first, like a mention. */
  requested?: string | undefined
  /** Default: the session's rows (the options' `replies`), each turn written to the cache too. */
  store?: RoundStore | undefined
}

/** A round that cannot go on: the answer is this failure (the turns stored so far stay stored). */
export class RoundFailed extends Error {
  constructor (
    readonly failure: DomainError,
    /** The events and outcome to record when the lease is released. */
    readonly result: { turns: number; stop: StopReason; replies: Message[] }
  ) {
    super(failure.message)
  }
}

type Choice = { agent: AgentDefinition; reason: SpeakerReason; outcome: 'ok' | 'fallback' } | { finish: true } | undefined

/**
 * One round of a group session (DESIGN section 9), under the session's lease, which the caller took
 * with the user message and releases afterwards: agents take turns until `maxTurns`, the
 * termination keyword, the manager's FINISH, GROUP_ROUND_TIMEOUT_MS, shutdown, or until nobody is
 * left who may speak. Each turn's reply is committed (and the lease renewed) before it is sent; a
 * failed turn is an agent.failed event, an `error` for the client, and the round goes on.
 */
export class GroupRound {
  constructor (private readonly options: GroupRoundOptions) {}

  async run (input: RoundInput): Promise<RoundResult> {
    const { agents, producer, metrics } = this.options
    const replies = input.store ?? this.options.replies
    const persistent = input.store === undefined
    const { lease, sink, tenant } = input
    const session = lease.session
    const group = session.group as GroupSettings
    const members = session.agents.filter((id) => agents.has(id)).map((id) => agents.get(id) as AgentDefinition)
    const nameOf = (id: string) => agents.get(id)?.name ?? id
    const history = [...input.before, lease.message]
    const stored: Message[] = []
    const toolCalls: ToolCallView[] = []
    // A turn's tool messages join the shared history (and the cache) as they are stored, before its reply.
    const toolSteps = leaseToolSteps(replies, tenant, lease, async (messages) => {
      if (persistent) await this.options.cacheToolMessages(session.id, messages)
      history.push(...messages)
    })
    const failed = new Set<string>()
    const spoke = new Set<string>()
    const named = members.find((agent) => agent.id === input.requested)
    const mentions = [...(named ? [named] : []), ...mentionedAgents(lease.message.content, members).filter((agent) => agent !== named)]
    // Round-robin continues after the session's last speaker; "just spoke" is within the round.
    let lastSpeaker = [...input.before].reverse().find((message) => message.role === 'assistant')?.agent
    let spokeLast: string | undefined
    let lastFailure: DomainError | undefined
    let turns = 0
    let stop: StopReason | undefined

    await replies.record([{ type: 'round.started', tenant, sessionId: session.id, data: { messageId: lease.message.id, strategy: group.strategy, maxTurns: group.maxTurns, agents: members.map((agent) => agent.id) } }])
    const roundDeadline = deadline(this.options.roundTimeoutMs, this.options.shutdownSignal)
    const stopOf = (): StopReason | undefined => {
      if (this.options.shuttingDown() || this.options.shutdownSignal.aborted) return 'shutdown'
      if (roundDeadline.signal.aborted) return 'timeout'
      return undefined
    }
    try {
      while (stop === undefined) {
        stop = stopOf() ?? (turns >= group.maxTurns ? 'max_turns' : undefined)
        if (stop) break
        const maySpeak = (agent: AgentDefinition) => !agents.isDown(agent.id) && !failed.has(agent.id) && (group.allowRepeat || agent.id !== spokeLast)
        const choice = await this.choose(group, members, mentions, history.slice(-input.contextMessages), lastSpeaker, maySpeak, (agent) => spoke.has(agent.id), turns > 0, roundDeadline.signal)
        if (!choice) {
          stop = 'error'
          break
        }
        if ('finish' in choice) {
          stop = 'manager'
          break
        }
        const { agent, reason } = choice
        turns += 1
        metrics.selections.inc({ strategy: reason, outcome: choice.outcome })
        const selection = { agent: agent.id, data: { reason, turn: turns, strategy: group.strategy, ...(choice.outcome === 'fallback' ? { fallbackFrom: 'manager' } : {}) } }
        await sink.agent({ ...producer.announce(agent, reason, []), turn: turns })
        const started = performance.now()
        try {
          const answer = await producer.produce(agent, groupTurns(history.slice(-input.contextMessages), agent, nameOf), sink, {
            systemPrompt: groupSystemPrompt(agent, members, group.preset),
            useFallbacks: false,
            signal: roundDeadline.signal,
            toolSteps
          })
          toolCalls.push(...answer.toolCalls.map((call) => toolCallView(call.exchange, call.agent)))
          const turn = await replies.storeTurn(lease, {
            content: answer.text,
            agent: agent.id,
            provider: answer.providerName,
            model: agent.model,
            usage: answer.usage,
            latencyMs: Math.round(performance.now() - started),
            selection
          }, this.options.leaseMs)
          if (!turn) {
            // Deleted, expired, or the lease lost meanwhile: nothing more is stored.
            throw new RoundFailed(DomainError.from(await replies.whyNotStored(lease)), { turns, stop: 'error', replies: stored })
          }
          if (persistent) await this.options.cacheTurn(turn)
          stored.push(turn.reply)
          history.push(turn.reply)
          await sink.turn?.(turn.reply)
          lastSpeaker = agent.id
          spokeLast = agent.id
          spoke.add(agent.id)
          if (group.terminationKeyword && answer.text.toLowerCase().includes(group.terminationKeyword.toLowerCase())) stop = 'keyword'
        } catch (err) {
          if (err instanceof RoundFailed) throw err
          const failure = this.turnFailure(err, agent, lease, stopOf())
          lastFailure = failure
          failed.add(agent.id)
          await replies.record([
            { type: 'agent.selected', tenant, sessionId: session.id, agentId: agent.id, data: selection.data },
            { type: 'agent.failed', tenant, sessionId: session.id, agentId: agent.id, data: { turn: turns, code: failure.code, message: failure.message } }
          ])
          if (!(await replies.renewLease(lease, this.options.leaseMs))) {
            throw new RoundFailed(DomainError.from(await replies.whyNotStored(lease)), { turns, stop: 'error', replies: stored })
          }
          await sink.turnFailed?.(turns, failure)
          if (members.every((member) => failed.has(member.id) || agents.isDown(member.id))) stop = 'error'
        }
      }
    } finally {
      roundDeadline.dispose()
    }

    if (stored.length === 0 && lastFailure) stop = 'error'
    const round = { turns, stop }
    if (stop === 'shutdown') {
      throw new RoundFailed(
        new DomainError('unavailable', `The server is shutting down: the round stopped after ${turns} turn${turns === 1 ? '' : 's'}, ${stored.length} stored. Post again to go on.`, {
          code: 'SHUTTING_DOWN',
          retryAfterSeconds: 1,
          details: { messageId: lease.message.id, round }
        }),
        { ...round, replies: stored }
      )
    }
    if (stored.length === 0 && lastFailure) throw new RoundFailed(lastFailure, { ...round, replies: stored })
    return { message: lease.message, replies: stored, round, toolCalls }
  }

  /** The events that end a round (its lease is released with them). */
  finishedEvents (tenant: string, lease: Lease, round: { turns: number; stop: StopReason }): NewEvent[] {
    this.options.metrics.rounds.inc({ stop: round.stop })
    this.options.metrics.turnsPerRound.observe(round.turns)
    return [{ type: 'round.finished', tenant, sessionId: lease.session.id, data: { messageId: lease.message.id, turns: round.turns, stop: round.stop } }]
  }

  /** The next speaker: a mentioned agent first, then the strategy's choice among those who may speak. */
  private async choose (
    group: GroupSettings,
    members: AgentDefinition[],
    mentions: AgentDefinition[],
    history: Message[],
    lastSpeaker: string | undefined,
    maySpeak: (agent: AgentDefinition) => boolean,
    spokeThisRound: (agent: AgentDefinition) => boolean,
    mayFinish: boolean,
    signal: AbortSignal
  ): Promise<Choice> {
    while (mentions.length > 0) {
      const agent = mentions.shift() as AgentDefinition
      if (maySpeak(agent)) return { agent, reason: 'mention', outcome: 'ok' }
    }
    const strategy: Strategy = group.strategy
    if (strategy === 'expertise') {
      const agent = bestByExpertise(members, (history.at(-1) as Message).content, maySpeak)
      return agent && { agent, reason: 'expertise', outcome: 'ok' }
    }
    // In turn after the last speaker, those who have not spoken this round first (after mentions).
    const roundRobin = nextInTurn(members, lastSpeaker, (agent) => maySpeak(agent) && !spokeThisRound(agent)) ?? nextInTurn(members, lastSpeaker, maySpeak)
    if (strategy === 'round-robin' || !roundRobin) return roundRobin && { agent: roundRobin, reason: 'round-robin', outcome: 'ok' }
    const manager = this.options.agents.get(group.manager as string)
    const candidates = members.filter(maySpeak)
    if (!manager) return { agent: roundRobin, reason: 'round-robin', outcome: 'fallback' }
    const nameOf = (id: string) => this.options.agents.get(id)?.name ?? id
    const decision = await this.options.manager.decide(manager, transcript(history, nameOf), members, candidates, mayFinish, signal)
    if (decision.kind === 'speaker') return { agent: decision.agent, reason: 'manager', outcome: 'ok' }
    if (decision.kind === 'finish') return { finish: true }
    return { agent: roundRobin, reason: 'round-robin', outcome: 'fallback' }
  }

  private turnFailure (err: unknown, agent: AgentDefinition, lease: Lease, stop: StopReason | undefined): DomainError {
    if (stop === 'timeout') {
      return new DomainError('timeout', `The round reached GROUP_ROUND_TIMEOUT_MS (${this.options.roundTimeoutMs} ms) during ${agent.id}'s turn`, { code: 'ROUND_TIMEOUT', details: { messageId: lease.message.id } })
    }
    return describeReplyFailure(err, { agent, messageId: lease.message.id, llmTimeoutMs: this.options.llmTimeoutMs, shuttingDown: stop === 'shutdown', log: this.options.log })
  }
}
