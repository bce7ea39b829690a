import type { FastifyBaseLogger } from 'fastify'
import type { AgentDefinition } from '../agents/agent.js'
import { parseChoice } from '../agents/llm-router.js'
import { deadline, type ProviderGuard } from '../agents/provider-guard.js'
import type { AgentRegistry } from '../agents/registry.js'

/** What the manager's answer came to: a speaker, the end of the round, or nothing usable. */
export type ManagerDecision =
  | { kind: 'speaker'; agent: AgentDefinition }
  | { kind: 'finish' }
  | { kind: 'fallback'; why: 'no_candidate' | 'excluded' | 'error' }

export interface ManagerOptions {
  agents: AgentRegistry
  guard: ProviderGuard
  log: FastifyBaseLogger
  /** GROUP_MANAGER_TIMEOUT_MS: how long one decision may take. */
  timeoutMs: number
}

const INSTRUCTIONS =
  'You manage a group conversation between a user and several AI agents. Decide who speaks next. ' +
  'Reply with the id of one candidate exactly as listed, or FINISH when the user\'s last message has been fully answered. ' +
  'Reply with nothing else.'

/**
 * The manager strategy: the manager agent's model is asked, with the conversation and the
 * candidates, who speaks next or whether the round is finished. One attempt within
 * GROUP_MANAGER_TIMEOUT_MS (a slow manager does not count against its agent's health); any answer
 * that names no candidate, names an agent that may not speak now, or fails is a `fallback`: the
 * round goes on by round-robin, so a manager can never loop or stall a round.
 */
export class GroupManager {
  constructor (private readonly options: ManagerOptions) {}

  async decide (manager: AgentDefinition, conversation: string, members: AgentDefinition[], candidates: AgentDefinition[], mayFinish: boolean, signal: AbortSignal): Promise<ManagerDecision> {
    const { agents, guard, log } = this.options
    const managerDeadline = deadline(this.options.timeoutMs, signal)
    try {
      const { text } = await guard.run({
        agent: manager,
        provider: agents.providerFor(manager),
        request: {
          model: manager.model,
          systemPrompt: INSTRUCTIONS,
          messages: [{ role: 'user', content: prompt(conversation, candidates, mayFinish) }],
          temperature: 0,
          maxTokens: 20,
          stream: false
        },
        signal: managerDeadline.signal,
        deadlineAt: managerDeadline.at,
        onDelta: () => undefined,
        maxRetries: 0,
        timeoutCounts: false
      })
      const named = parseChoice(text, members)
      if (named && candidates.includes(named)) return { kind: 'speaker', agent: named }
      if (named) {
        log.warn({ manager: manager.id, named: named.id }, 'the group manager named an agent that may not speak now; round-robin picks')
        return { kind: 'fallback', why: 'excluded' }
      }
      if (mayFinish && /\bfinish(ed)?\b/i.test(text)) return { kind: 'finish' }
      log.warn({ manager: manager.id, answer: text.slice(0, 100) }, 'the group manager named no candidate; round-robin picks')
      return { kind: 'fallback', why: 'no_candidate' }
    } catch (err) {
      log.warn({ manager: manager.id, err: { name: (err as Error).name, message: (err as Error).message } }, 'the group manager failed; round-robin picks')
      return { kind: 'fallback', why: 'error' }
    } finally {
      managerDeadline.dispose()
    }
  }
}

function prompt (conversation: string, candidates: AgentDefinition[], mayFinish: boolean): string {
  const list = candidates
    .map((agent) => `- ${agent.id}: ${agent.name}. ${agent.description}${agent.expertise.length ? ` (expertise: ${agent.expertise.join(', ')})` : ''}`)
    .join('\n')
  const ask = mayFinish ? 'The id of the agent that speaks next, or FINISH:' : 'The id of the agent that speaks next:'
  return `Conversation so far:\n${conversation}\n\nCandidates:\n${list}\n\n${ask}`
}
