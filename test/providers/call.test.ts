import t from 'tap'
import { alternatingTurns, pairedToolTurns, toolCallFromJson, toolCallFromValue } from '../../src/providers/call.js'
import type { ChatTurn } from '../../src/providers/provider.js'

const call = (id: string) => ({ id, name: 'calc__add', arguments: { a: 1 } })
const result = (id: string, content: string, isError = false): ChatTurn => ({ role: 'tool', content, toolResult: { callId: id, name: 'calc__add', isError } })

t.test('alternatingTurns: two tool steps in a row alternate, each step\'s results in one user turn', async (t) => {
  const { system, turns } = alternatingTurns('Be terse.', [
    { role: 'user', content: 'q' },
    { role: 'assistant', content: '', toolCalls: [call('1'), call('2')] },
    result('1', 'r1'),
    result('2', 'r2', true),
    { role: 'assistant', content: 'one more', toolCalls: [call('3')] },
    result('3', 'r3'),
    { role: 'assistant', content: 'done' }
  ])
  t.equal(system, 'Be terse.')
  t.same(turns.map((turn) => [turn.role, turn.text, turn.toolCalls.map((c) => c.id), turn.toolResults.map((r) => [r.callId, r.content, r.isError])]), [
    ['user', 'q', [], []],
    ['assistant', '', ['1', '2'], []],
    ['user', '', [], [['1', 'r1', false], ['2', 'r2', true]]],
    ['assistant', 'one more', ['3'], []],
    ['user', '', [], [['3', 'r3', false]]],
    ['assistant', 'done', [], []]
  ])
})

t.test('alternatingTurns: plain turns of one role still merge, a user text joins the results before it, never across an exchange', async (t) => {
  const { turns } = alternatingTurns('', [
    { role: 'user', content: 'a' },
    { role: 'user', content: 'b' },
    { role: 'assistant', content: 'thinking' },
    { role: 'assistant', content: 'asking', toolCalls: [call('1')] },
    result('1', 'r1'),
    { role: 'user', content: 'and then?' },
    { role: 'user', content: 'hello?' }
  ])
  t.same(turns.map((turn) => [turn.role, turn.text, turn.toolCalls.length, turn.toolResults.length]), [
    ['user', 'a\n\nb', 0, 0],
    ['assistant', 'thinking\n\nasking', 1, 0],
    ['user', 'and then?\n\nhello?', 0, 1]
  ])
})

t.test('pairedToolTurns: unanswered calls and results that answer nothing are left out, system turns stay', async (t) => {
  const kept = pairedToolTurns([
    { role: 'user', content: 'q' },
    { role: 'assistant', content: '', toolCalls: [call('lost')] },
    { role: 'system', content: 'note' },
    result('lost', 'too late'),
    { role: 'assistant', content: 'text stays', toolCalls: [call('x')] },
    { role: 'user', content: 'q2' },
    result('orphan', 'nobody asked')
  ])
  t.same(kept, [
    { role: 'user', content: 'q' },
    { role: 'system', content: 'note' },
    { role: 'assistant', content: 'text stays' },
    { role: 'user', content: 'q2' }
  ])
})

t.test('toolCallFromJson and toolCallFromValue: an object, nothing, or an argumentsError that says why', async (t) => {
  t.same(toolCallFromJson('c', 'n', '{"a":[1]}'), { id: 'c', name: 'n', arguments: { a: [1] } })
  t.same(toolCallFromJson('c', 'n', '  '), { id: 'c', name: 'n', arguments: {} }, 'no arguments: {}')
  t.match(toolCallFromJson('c', 'n', '{"a":'), { arguments: {}, argumentsError: /not valid JSON/ })
  t.match(toolCallFromJson('c', 'n', 'null'), { arguments: {}, argumentsError: /null, not a JSON object/ })
  t.match(toolCallFromJson('c', 'n', '"text"'), { arguments: {}, argumentsError: /a string, not a JSON object/ })
  t.match(toolCallFromJson('c', 'n', '42'), { arguments: {}, argumentsError: /a number, not a JSON object/ })
  t.same(toolCallFromValue('c', 'n', undefined), { id: 'c', name: 'n', arguments: {} }, 'Gemini leaves args out')
  t.match(toolCallFromValue('c', 'n', '{"a":1}'), { arguments: {}, argumentsError: /a string/ }, 'a value is never parsed again')
  t.same(toolCallFromValue('c', 'n', { a: 1 }), { id: 'c', name: 'n', arguments: { a: 1 } })
})
