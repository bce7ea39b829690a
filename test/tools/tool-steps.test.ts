import t from 'tap'
import { agentToolset, toolRefsOf } from '../../src/tools/agent-tools.js'
import { describeExchange, exchangeOf, renderTurns, type ContextTurn, type ToolExchange } from '../../src/tools/tool-steps.js'
import type { ServerSnapshot } from '../../src/tools/tools.js'

const schema = { type: 'object', properties: {} }
const servers: ServerSnapshot[] = [
  { id: 'math', status: 'connected', tools: [{ name: 'add', description: 'Adds', inputSchema: schema }, { name: 'echo', description: 'Echoes', inputSchema: schema }] },
  { id: 'text', status: 'connected', tools: [{ name: 'echo', description: 'Echoes text', inputSchema: schema }, { name: 'bad name!', description: 'Odd', inputSchema: schema }] },
  { id: 'down', status: 'down', tools: [], error: 'connection refused' }
]

t.test('agentToolset: refs over what connected servers offer; clashing or unusable names get the server prefix', async (t) => {
  t.same(agentToolset([], servers), [], 'no refs, no tools')
  const all = agentToolset(['math', 'text', 'down'], servers)
  t.same(all.map((tool) => [tool.server, tool.tool, tool.definition.name]), [
    ['math', 'add', 'add'],
    ['math', 'echo', 'math__echo'],
    ['text', 'echo', 'text__echo'],
    ['text', 'bad name!', 'text__bad_name_']
  ])
  t.same(agentToolset(['math/echo'], servers).map((tool) => tool.definition.name), ['echo'], 'one tool: its own name')
  t.same(toolRefsOf(['math/add', 'text'], servers), ['math/add', 'text/echo', 'text/bad name!'])
  t.same(toolRefsOf(['down'], servers), [], 'a server that is down offers nothing')
})

const exchange = (callId: string, step: number, over: Partial<ToolExchange> = {}): ToolExchange => ({
  callId, server: 'math', tool: 'add', arguments: { a: 1, b: 2 }, content: '3', isError: false, outcome: 'ok', latencyMs: 4, step, ...over
})

t.test('renderTurns: the agent\'s own exchanges in tool format, one assistant turn per step; others\' in words', async (t) => {
  const toolset = agentToolset(['math'], servers)
  const turns: ContextTurn[] = [
    { role: 'user', content: 'add twice' },
    { role: 'exchange', agent: 'calc', exchange: exchange('call 1', 1) },
    { role: 'exchange', agent: 'calc', exchange: exchange('call_2', 1, { isError: true, content: 'boom' }) },
    { role: 'exchange', agent: 'calc', exchange: exchange('call 1', 2) },
    { role: 'assistant', content: 'done' },
    { role: 'exchange', agent: 'other', exchange: exchange('x', 1) }
  ]
  const rendered = renderTurns(turns, 'calc', toolset)
  t.same(rendered, [
    { role: 'user', content: 'add twice' },
    { role: 'assistant', content: '', toolCalls: [{ id: 'call_1', name: 'add', arguments: { a: 1, b: 2 } }, { id: 'call_2', name: 'add', arguments: { a: 1, b: 2 } }] },
    { role: 'tool', content: '3', toolResult: { callId: 'call_1', name: 'add', isError: false } },
    { role: 'tool', content: 'boom', toolResult: { callId: 'call_2', name: 'add', isError: true } },
    { role: 'assistant', content: '', toolCalls: [{ id: 'call_1_2', name: 'add', arguments: { a: 1, b: 2 } }] },
    { role: 'tool', content: '3', toolResult: { callId: 'call_1_2', name: 'add', isError: false } },
    { role: 'assistant', content: 'done' },
    { role: 'user', content: '[tool call math/add {"a":1,"b":2} -> 3]' }
  ], 'ids safe and unique; another agent\'s call in words')
  t.same(renderTurns(turns.slice(1, 3), 'calc', []), [{ role: 'user', content: '[tool call math/add {"a":1,"b":2} -> 3]\n[tool call math/add {"a":1,"b":2} -> error: boom]' }], 'without the tools: words')
})

t.test('exchangeOf: a tool message\'s metadata back to its exchange; other messages are none', async (t) => {
  const base = { id: 'm', seq: 3, content: '3', createdAt: '2026-12-03T00:00:00.000Z', agent: 'calc', latencyMs: 4 }
  const metadata = { callId: 'c', tool: 'add', server: 'math', arguments: { a: 1 }, isError: false, latencyMs: 4, outcome: 'ok', step: 1 }
  t.same(exchangeOf({ ...base, role: 'tool', metadata }), { callId: 'c', server: 'math', tool: 'add', arguments: { a: 1 }, content: '3', isError: false, outcome: 'ok', latencyMs: 4, step: 1 })
  t.equal(exchangeOf({ ...base, role: 'assistant', metadata }), undefined)
  t.equal(exchangeOf({ ...base, role: 'tool', metadata: { note: 'not ours' } }), undefined)
  t.equal(describeExchange(exchange('c', 1, { server: '', tool: 'nope', isError: true, content: 'not one of this agent\'s tools' })), '[tool call nope {"a":1,"b":2} -> error: not one of this agent\'s tools]')
})
