import t from 'tap'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { groupTurns, groupSystemPrompt, transcript } from '../../src/groups/group-context.js'
import { bestByExpertise, mentionedAgents, nextInTurn } from '../../src/groups/speakers.js'
import type { Message } from '../../src/messages/message-store.js'

const agent = (id: string, expertise: string[] = [], name = id[0]!.toUpperCase() + id.slice(1)): AgentDefinition => ({
  id, name, description: '', provider: 'echo', model: 'echo', systemPrompt: `You are ${name}.`, temperature: 0, maxTokens: 10, expertise
})
const team = [agent('assistant', ['plan']), agent('coder', ['code', 'bug']), agent('writer', ['poem', 'essay'])]
const everyone = () => true

t.test('round-robin: in order after the last speaker, wrapping, skipping who may not speak', async (t) => {
  t.equal(nextInTurn(team, undefined, everyone)?.id, 'assistant', 'from the first')
  t.equal(nextInTurn(team, 'assistant', everyone)?.id, 'coder')
  t.equal(nextInTurn(team, 'writer', everyone)?.id, 'assistant', 'wraps around')
  t.equal(nextInTurn(team, 'assistant', (a) => a.id !== 'coder')?.id, 'writer', 'skips one that may not speak')
  t.equal(nextInTurn(team, 'gone', everyone)?.id, 'assistant', 'a last speaker no longer in the group: from the first')
  t.equal(nextInTurn(team, 'assistant', () => false), undefined, 'nobody may speak')
})

t.test('expertise: the best match with the newest message among who may speak, ties in order', async (t) => {
  t.equal(bestByExpertise(team, 'a bug in my code', everyone)?.id, 'coder')
  t.equal(bestByExpertise(team, 'a bug in my code', (a) => a.id !== 'coder')?.id, 'assistant', 'the one who just spoke excluded: a tie at 0, first in order')
  t.equal(bestByExpertise(team, 'write an essay and a poem about a bug', everyone)?.id, 'writer', 'two keywords beat one')
  t.equal(bestByExpertise(team, 'hello', () => false), undefined)
})

t.test('mentions: @id or @Name in the order mentioned, once each, the group\'s agents only', async (t) => {
  t.same(mentionedAgents('@writer then @CODER, and @writer again; @nobody', team).map((a) => a.id), ['writer', 'coder'])
  t.same(mentionedAgents('mail me at someone@coder.com', team), [], 'an address is not a mention')
  t.same(mentionedAgents('@Assistant?', team).map((a) => a.id), ['assistant'], 'by name, any case')
})

t.test('context: the speaker\'s own turns as assistant, everyone else\'s as labelled user turns', async (t) => {
  const at = '2026-12-02T00:00:00.000Z'
  const history: Message[] = [
    { id: '1', seq: 1, role: 'user', content: 'Hi', metadata: {}, createdAt: at },
    { id: '2', seq: 2, role: 'assistant', content: 'Plan first', agent: 'assistant', metadata: {}, createdAt: at },
    { id: '3', seq: 3, role: 'assistant', content: 'Code next', agent: 'coder', metadata: {}, createdAt: at }
  ]
  const nameOf = (id: string) => team.find((a) => a.id === id)!.name
  t.same(groupTurns(history, team[1]!, nameOf), [
    { role: 'user', content: 'Hi' },
    { role: 'user', content: '[Assistant]: Plan first', name: 'Assistant' },
    { role: 'assistant', content: 'Code next' }
  ])
  t.equal(groupSystemPrompt(team[1]!, team, 'review-panel'), 'You are Coder.\n\nYou are Coder in the group conversation "review-panel" with the user and Assistant, Writer. Messages from the other agents start with their name in brackets. Reply as Coder only, without a name prefix, building on what was said before you.')
  t.equal(transcript(history, nameOf, 5), '[User]: Hi\n\n[Assistant]: Plan …\n\n[Coder]: Code …', 'each message with its speaker, long ones cut')
})
