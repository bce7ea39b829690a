import type { AgentDefinition } from '../agents/agent.js'
import { expertiseScores } from '../agents/router.js'

/** Why an agent speaks a turn: the agent.selected event's `reason`. */
export type SpeakerReason = 'round-robin' | 'expertise' | 'manager' | 'mention'

/**
 * The agents a message mentions (`@coder`, or `@Name` for a one-word name; any case), in the
 * order mentioned, each once, only the group's own.
 */
export function mentionedAgents (content: string, agents: AgentDefinition[]): AgentDefinition[] {
  const found: AgentDefinition[] = []
  for (const match of content.matchAll(/(?:^|[^\p{L}\p{N}_@])@([\p{L}\p{N}_-]+)/gu)) {
    const word = (match[1] as string).toLowerCase()
    const agent = agents.find((candidate) => candidate.id.toLowerCase() === word || candidate.name.toLowerCase() === word)
    if (agent && !found.includes(agent)) found.push(agent)
  }
  return found
}

/** The first agent after `last` in the group's order (wrapping around) that may speak; from the first one when there is no `last`. */
export function nextInTurn (agents: AgentDefinition[], last: string | undefined, maySpeak: (agent: AgentDefinition) => boolean): AgentDefinition | undefined {
  const start = last === undefined ? 0 : agents.findIndex((agent) => agent.id === last) + 1
  for (let i = 0; i < agents.length; i++) {
    const agent = agents[(start + i) % agents.length] as AgentDefinition
    if (maySpeak(agent)) return agent
  }
  return undefined
}

/** The agent that may speak whose expertise keywords best match `latest` (the newest message); ties in the group's order. */
export function bestByExpertise (agents: AgentDefinition[], latest: string, maySpeak: (agent: AgentDefinition) => boolean): AgentDefinition | undefined {
  const scores = expertiseScores(latest, agents)
  let best: { agent: AgentDefinition; score: number } | undefined
  agents.forEach((agent, index) => {
    const score = scores[index] as number
    if (maySpeak(agent) && (!best || score > best.score)) best = { agent, score }
  })
  return best?.agent
}
