import type { FastifyBaseLogger } from 'fastify'
import type { LlmMetrics } from '../metrics/llm-metrics.js'
import type { AgentDefinition } from './agent.js'
import { deadline, type ProviderGuard } from './provider-guard.js'
import type { AgentRegistry } from './registry.js'

export interface LlmRouterOptions {
  agents: AgentRegistry
  guard: ProviderGuard
  metrics: LlmMetrics
  log: FastifyBaseLogger
  /** The manifest agent that routes (ROUTER_AGENT). */
  routerAgentId: string
  /** How long the router may take (ROUTER_TIMEOUT_MS) before scoring decides instead. */
  timeoutMs: number
  shutdownSignal: AbortSignal
}

const INSTRUCTIONS =
  'You route a user message to the one agent best suited to answer it. ' +
  'Reply with the id of that agent exactly as listed, and nothing else.'

/**
 * ROUTER=llm: asks the router agent's model which of the candidates should answer. Any failure (an
 * error, a breaker open, the ROUTER_TIMEOUT_MS deadline, an answer naming no candidate) returns
 * undefined and expertise scoring decides; the router never costs a reply more than its timeout.
 */
export class LlmRouter {
  constructor (private readonly options: LlmRouterOptions) {}

  async pick (content: string, candidates: AgentDefinition[]): Promise<AgentDefinition | undefined> {
    const { agents, guard, metrics, log } = this.options
    const router = agents.get(this.options.routerAgentId)
    if (!router || candidates.length === 0) return undefined
    if (candidates.length === 1) return candidates[0]
    const routerDeadline = deadline(this.options.timeoutMs, this.options.shutdownSignal)
    const signal = routerDeadline.signal
    try {
      const { text } = await guard.run({
        agent: router,
        provider: agents.providerFor(router),
        request: {
          model: router.model,
          systemPrompt: INSTRUCTIONS,
          messages: [{ role: 'user', content: routingPrompt(content, candidates) }],
          temperature: 0,
          maxTokens: 20,
          // Only the whole answer matters: one response, no token stream.
          stream: false
        },
        signal,
        deadlineAt: routerDeadline.at,
        onDelta: () => undefined,
        // One attempt: a retry would rarely fit in the router's short deadline.
        maxRetries: 0,
        // A slow answer to a routing question is not a failing model: other agents may reply with it.
        timeoutCounts: false
      })
      const chosen = parseChoice(text, candidates)
      if (chosen) {
        metrics.routerDecisions.inc({ outcome: 'ok' })
        return chosen
      }
      log.warn({ router: router.id, answer: text.slice(0, 100) }, 'the LLM router named no candidate agent; scoring decides')
    } catch (err) {
      log.warn({ router: router.id, err: { name: (err as Error).name, message: (err as Error).message } }, 'the LLM router failed; scoring decides')
    } finally {
      routerDeadline.dispose()
    }
    metrics.routerDecisions.inc({ outcome: 'fallback' })
    return undefined
  }
}

function routingPrompt (content: string, candidates: AgentDefinition[]): string {
  const list = candidates
    .map((agent) => `- ${agent.id}: ${agent.name}. ${agent.description}${agent.expertise.length ? ` (expertise: ${agent.expertise.join(', ')})` : ''}`)
    .join('\n')
  return `Agents:\n${list}\n\nUser message:\n${content}\n\nThe id of the agent that should answer:`
}

/** The candidate whose id the answer names first (as a whole word, any case), if any. */
export function parseChoice (answer: string, candidates: AgentDefinition[]): AgentDefinition | undefined {
  const text = answer.toLowerCase()
  let best: { agent: AgentDefinition; at: number } | undefined
  for (const agent of candidates) {
    const id = agent.id.toLowerCase()
    let from = 0
    for (;;) {
      const at = text.indexOf(id, from)
      if (at < 0) break
      const before = text[at - 1]
      const after = text[at + id.length]
      if (!isIdChar(before) && !isIdChar(after)) {
        // A longer id containing this one (coder vs coder-pro) wins where both match at the same place.
        if (!best || at < best.at || (at === best.at && id.length > best.agent.id.length)) best = { agent, at }
        break
      }
      from = at + 1
    }
  }
  return best?.agent
}

function isIdChar (char: string | undefined): boolean {
  return char !== undefined && /[\p{L}\p{N}_-]/u.test(char)
}
