import type { AgentDefinition } from '../agents/agent.js'
import type { Message } from '../messages/message-store.js'
import { contextTurnOf, describeExchange, exchangeOf, type ContextTurn } from '../tools/tool-steps.js'

/**
 * What one speaker of a group is sent: the shared history with every message attributed. The user's
 * messages are user turns; the speaker's own earlier messages are its assistant turns; every other
 * agent's message is a user turn that starts with "[Name]: " and carries the name (OpenAI's `name`
 * field). The Anthropic and Gemini adapters merge consecutive user turns into one, as those
 * formats expect, so each agent's words stay labelled there too.
 */
export function groupTurns (history: Message[], speaker: AgentDefinition, nameOf: (agentId: string) => string): ContextTurn[] {
  return history.map((message): ContextTurn => {
    // Tool exchanges are rendered per speaker: its own in its provider's tool format, others' in words.
    if (message.role === 'tool') return contextTurnOf(message)
    if (message.role !== 'assistant' || message.agent === undefined) return { role: 'user', content: message.content }
    if (message.agent === speaker.id) return { role: 'assistant', content: message.content }
    const name = nameOf(message.agent)
    return { role: 'user', content: `[${name}]: ${message.content}`, name }
  })
}

/** The speaker's own system prompt, then a line naming the group and its role in it. */
export function groupSystemPrompt (speaker: AgentDefinition, members: AgentDefinition[], groupName: string | undefined): string {
  const others = members.filter((agent) => agent.id !== speaker.id).map((agent) => agent.name)
  const group = groupName ? `the group conversation "${groupName}"` : 'a group conversation'
  const line =
    `You are ${speaker.name} in ${group} with the user and ${others.join(', ')}. ` +
    'Messages from the other agents start with their name in brackets. ' +
    `Reply as ${speaker.name} only, without a name prefix, building on what was said before you.`
  return speaker.systemPrompt === '' ? line : `${speaker.systemPrompt}\n\n${line}`
}

/** The conversation as one text, each message with its speaker: what the manager reads. */
export function transcript (history: Message[], nameOf: (agentId: string) => string, maxCharsPerMessage = 2000): string {
  return history
    .map((message) => {
      const speaker = (message.role === 'assistant' || message.role === 'tool') && message.agent !== undefined ? nameOf(message.agent) : 'User'
      const exchange = exchangeOf(message)
      const content = exchange ? describeExchange(exchange) : message.content
      const text = content.length > maxCharsPerMessage ? `${content.slice(0, maxCharsPerMessage)}…` : content
      return `[${speaker}]: ${text}`
    })
    .join('\n\n')
}
