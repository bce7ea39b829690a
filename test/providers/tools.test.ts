import t from 'tap'
import type { ChatChunk, ChatTurn, ToolCallRequest, ToolDefinition } from '../../src/providers/provider.js'
import { chat, collect, definition, providerFor, startStub, type Subject } from './conformance.js'

/**
 * Tool calls through each adapter's real SDK against the loopback stub, streamed and whole: the
 * tools offered in the provider's format, calls read back (assembled from their deltas when
 * streamed), and a follow-up request whose tool exchange is in the provider's format.
 */

const TOOLS: ToolDefinition[] = [
  { name: 'calc__add', description: 'Adds two numbers', inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] } },
  { name: 'clock__now', description: 'The current time', inputSchema: { type: 'object', properties: {} } }
]

/** A history that ends with one tool step of two calls and their results (the second an error). */
const EXCHANGE: ChatTurn[] = [
  { role: 'user', content: 'add 2 and 3, and what time is it?' },
  {
    role: 'assistant',
    content: 'Let me check.',
    toolCalls: [
      { id: 'call_a', name: 'calc__add', arguments: { a: 2, b: 3 } },
      { id: 'call_b', name: 'clock__now', arguments: {} }
    ]
  },
  { role: 'tool', content: '5', toolResult: { callId: 'call_a', name: 'calc__add', isError: false } },
  { role: 'tool', content: 'clock server is down', toolResult: { callId: 'call_b', name: 'clock__now', isError: true } }
]

const PROVIDERS: Subject['provider'][] = ['openai', 'openai-compatible', 'anthropic', 'gemini']

function toolCallsOf (chunks: ChatChunk[]): ToolCallRequest[][] {
  return chunks.flatMap((chunk) => (chunk.type === 'tool_calls' ? [chunk.calls] : []))
}

/** The ids a provider's calls get from the stub: its own for OpenAI and Anthropic, made up for Gemini (which sends none). */
function expectedIds (provider: Subject['provider']): string[] {
  if (provider === 'anthropic') return ['toolu_stub_1', 'toolu_stub_2']
  if (provider === 'gemini') return ['call_1', 'call_2']
  return ['call_stub_1', 'call_stub_2']
}

for (const provider of PROVIDERS) {
  for (const stream of [true, false]) {
    const mode = stream ? 'streamed' : 'whole'
    const agent = definition(provider)

    t.test(`${provider} ${mode}: the tools are offered in the provider's format`, async (t) => {
      const stub = await startStub(t)
      const { error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS })))
      t.error(error)
      const request = stub.requests[0]!
      t.same(request.tools, TOOLS.map((tool) => ({ name: tool.name, description: tool.description, inputSchema: tool.inputSchema })), 'every tool, normalised back')
      const body = request.body as { tools: unknown[] }
      const [add] = TOOLS
      if (provider === 'anthropic') t.same(body.tools[0], { name: add!.name, description: add!.description, input_schema: add!.inputSchema })
      else if (provider === 'gemini') {
        t.equal(body.tools.length, 1, 'one Gemini tool holding every declaration')
        t.same((body.tools[0] as { functionDeclarations: unknown[] }).functionDeclarations[0], { name: add!.name, description: add!.description, parametersJsonSchema: add!.inputSchema })
      } else t.same(body.tools[0], { type: 'function', function: { name: add!.name, description: add!.description, parameters: add!.inputSchema } })
    })

    t.test(`${provider} ${mode}: a request without tools sends no tools field`, async (t) => {
      const stub = await startStub(t)
      for (const tools of [undefined, []]) {
        stub.reset()
        const { error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, ...(tools ? { tools } : {}) })))
        t.error(error)
        t.notOk('tools' in (stub.requests[0]!.body as object), `tools ${JSON.stringify(tools)}: no tools field`)
        t.equal(stub.requests[0]!.tools, undefined)
      }
    })

    t.test(`${provider} ${mode}: one call comes back after the text as one tool_calls chunk, before usage`, async (t) => {
      const stub = await startStub(t)
      stub.enqueue({ text: 'Let me add.', toolCalls: [{ name: 'calc__add', arguments: { a: 2, b: 3 } }], usage: { inputTokens: 20, outputTokens: 9 } })
      const { chunks, deltas, error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS })))
      t.error(error)
      t.equal(deltas.join(''), 'Let me add.', 'the text before the call')
      t.same(chunks.map((chunk) => chunk.type).filter((type, i, all) => type !== all[i - 1]), ['delta', 'tool_calls', 'usage'], 'text, then the calls, then usage')
      t.same(toolCallsOf(chunks), [[{ id: expectedIds(provider)[0], name: 'calc__add', arguments: { a: 2, b: 3 } }]])
      t.same(chunks.at(-1), { type: 'usage', inputTokens: 20, outputTokens: 9 })
    })

    t.test(`${provider} ${mode}: two parallel calls and no text are a valid answer: one chunk, both calls in order`, async (t) => {
      const stub = await startStub(t)
      stub.enqueue({ toolCalls: [{ name: 'calc__add', arguments: { a: 1, b: { nested: [1, 2, '"quoted"'] } } }, { name: 'clock__now', arguments: {} }] })
      const { chunks, deltas, error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS })))
      t.error(error, 'tool calls without text are not an empty answer')
      t.same(deltas, [])
      const calls = toolCallsOf(chunks)
      t.equal(calls.length, 1, 'one tool_calls chunk')
      t.same(calls[0], [
        { id: expectedIds(provider)[0], name: 'calc__add', arguments: { a: 1, b: { nested: [1, 2, '"quoted"'] } } },
        { id: expectedIds(provider)[1], name: 'clock__now', arguments: {} }
      ], 'each call assembled whole, its arguments parsed')
      t.equal(chunks.at(-1)!.type, 'usage')
    })

    t.test(`${provider} ${mode}: arguments that are not a JSON object give {} and argumentsError, never a failure`, async (t) => {
      const stub = await startStub(t)
      stub.enqueue({ toolCalls: [{ name: 'calc__add', arguments: '{"a": 2, "b":' }, { name: 'calc__add', arguments: '[1, 2]' }, { name: 'clock__now', arguments: { ok: true } }] })
      const { chunks, error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS })))
      t.error(error)
      const [broken, array, fine] = toolCallsOf(chunks)[0]!
      t.same(broken!.arguments, {})
      // Whole Anthropic and Gemini answers carry the input as a value: a text that is not JSON arrives as a string.
      t.match(broken!.argumentsError, provider === 'gemini' || (provider === 'anthropic' && !stream) ? /a string, not a JSON object/ : /not valid JSON/)
      t.same(array!.arguments, {})
      t.match(array!.argumentsError, /an array, not a JSON object/)
      t.same(fine, { id: expectedIds(provider)[0].replace(/1$/, '3'), name: 'clock__now', arguments: { ok: true } }, 'the other calls unaffected')
    })

    t.test(`${provider} ${mode}: the follow-up request carries the tool exchange in the provider's format`, async (t) => {
      const stub = await startStub(t)
      const messages: ChatTurn[] = [...EXCHANGE, { role: 'user', content: 'thanks' }]
      const { error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS, messages })))
      t.error(error)
      const request = stub.requests[0]!
      const body = request.body as { messages?: unknown[]; contents?: unknown[] }
      if (provider === 'anthropic') {
        t.same(body.messages, [
          { role: 'user', content: 'add 2 and 3, and what time is it?' },
          {
            role: 'assistant',
            content: [
              { type: 'text', text: 'Let me check.' },
              { type: 'tool_use', id: 'call_a', name: 'calc__add', input: { a: 2, b: 3 } },
              { type: 'tool_use', id: 'call_b', name: 'clock__now', input: {} }
            ]
          },
          {
            role: 'user',
            content: [
              { type: 'tool_result', tool_use_id: 'call_a', content: '5', is_error: false },
              { type: 'tool_result', tool_use_id: 'call_b', content: 'clock server is down', is_error: true },
              { type: 'text', text: 'thanks' }
            ]
          }
        ], 'every result of the step in the one user turn after the tool_use turn, the next user text after them')
      } else if (provider === 'gemini') {
        t.same(body.contents, [
          { role: 'user', parts: [{ text: 'add 2 and 3, and what time is it?' }] },
          {
            role: 'model',
            parts: [
              { text: 'Let me check.' },
              { functionCall: { id: 'call_a', name: 'calc__add', args: { a: 2, b: 3 } }, thoughtSignature: 'skip_thought_signature_validator' },
              { functionCall: { id: 'call_b', name: 'clock__now', args: {} } }
            ]
          },
          {
            role: 'user',
            parts: [
              { functionResponse: { id: 'call_a', name: 'calc__add', response: { result: '5' } } },
              { functionResponse: { id: 'call_b', name: 'clock__now', response: { error: 'clock server is down' } } },
              { text: 'thanks' }
            ]
          }
        ], 'functionCall parts in the model turn, functionResponse parts in the user turn after it')
      } else {
        t.same(body.messages, [
          { role: 'system', content: 'You are terse.' },
          { role: 'user', content: 'add 2 and 3, and what time is it?' },
          {
            role: 'assistant',
            content: 'Let me check.',
            tool_calls: [
              { id: 'call_a', type: 'function', function: { name: 'calc__add', arguments: '{"a":2,"b":3}' } },
              { id: 'call_b', type: 'function', function: { name: 'clock__now', arguments: '{}' } }
            ]
          },
          { role: 'tool', tool_call_id: 'call_a', content: '5' },
          { role: 'tool', tool_call_id: 'call_b', content: 'Error: clock server is down' },
          { role: 'user', content: 'thanks' }
        ], 'the assistant turn with tool_calls, then one role tool message per call, in order (an error result says so in its text)')
      }
      const normalised = request.messages.filter((m) => m.toolCalls || m.toolResults)
      t.same(normalised.flatMap((m) => m.toolCalls?.map((call) => [call.id, call.name, call.arguments]) ?? []), [['call_a', 'calc__add', { a: 2, b: 3 }], ['call_b', 'clock__now', {}]], 'the stub records the calls sent')
      t.same(normalised.flatMap((m) => m.toolResults?.map((result) => [result.callId, result.content.replace(/^Error: /, '')]) ?? []), [['call_a', '5'], ['call_b', 'clock server is down']], 'and the results')
    })

    t.test(`${provider} ${mode}: a history that ends with the results asks the model to go on; an assistant turn of calls only has no text`, async (t) => {
      const stub = await startStub(t)
      const messages: ChatTurn[] = [
        EXCHANGE[0]!,
        { ...EXCHANGE[1]!, content: '', toolCalls: [EXCHANGE[1]!.toolCalls![0]!] },
        EXCHANGE[2]!
      ]
      const { error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream, tools: TOOLS, messages })))
      t.error(error)
      const body = stub.requests[0]!.body as { messages?: { role: string; content: unknown }[]; contents?: { role: string; parts: unknown[] }[] }
      if (provider === 'anthropic') {
        t.same(body.messages!.at(-2), { role: 'assistant', content: [{ type: 'tool_use', id: 'call_a', name: 'calc__add', input: { a: 2, b: 3 } }] })
        t.same(body.messages!.at(-1), { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'call_a', content: '5', is_error: false }] })
      } else if (provider === 'gemini') {
        t.same(body.contents!.at(-2)!.parts, [{ functionCall: { id: 'call_a', name: 'calc__add', args: { a: 2, b: 3 } }, thoughtSignature: 'skip_thought_signature_validator' }])
        t.same(body.contents!.at(-1), { role: 'user', parts: [{ functionResponse: { id: 'call_a', name: 'calc__add', response: { result: '5' } } }] })
      } else {
        t.match(body.messages!.at(-2), { role: 'assistant', content: null, tool_calls: [{ id: 'call_a' }] }, 'content null when the turn only asks for tools')
        t.same(body.messages!.at(-1), { role: 'tool', tool_call_id: 'call_a', content: '5' })
      }
    })
  }
}

t.test('a call without its result and a result without its call are left out (the providers refuse them)', async (t) => {
  const stub = await startStub(t)
  const messages: ChatTurn[] = [
    { role: 'user', content: 'q1' },
    // Its reply failed after the model asked: no result was stored for call_x.
    { role: 'assistant', content: 'Checking.', toolCalls: [{ id: 'call_x', name: 'calc__add', arguments: {} }] },
    { role: 'user', content: 'q2' },
    { role: 'assistant', content: '', toolCalls: [{ id: 'call_y', name: 'calc__add', arguments: {} }, { id: 'call_z', name: 'clock__now', arguments: {} }] },
    { role: 'tool', content: 'only y answered', toolResult: { callId: 'call_y', name: 'calc__add', isError: false } },
    { role: 'tool', content: 'answers nothing', toolResult: { callId: 'call_w', name: 'calc__add', isError: false } },
    { role: 'user', content: 'q3' }
  ]
  for (const provider of PROVIDERS) {
    stub.reset()
    const { error } = await collect(providerFor(t, stub, definition(provider)).stream(chat(undefined, { tools: TOOLS, messages })))
    t.error(error)
    const sent = stub.requests[0]!.messages
    t.same(sent.flatMap((m) => m.toolCalls?.map((call) => call.id) ?? []), ['call_y'], `${provider}: only the answered call`)
    t.same(sent.flatMap((m) => m.toolResults?.map((result) => result.callId) ?? []), ['call_y'], `${provider}: only the result that answers a call`)
    t.ok(sent.some((m) => m.content.includes('Checking.')), `${provider}: the text of the turn whose call was left out stays`)
  }
})

t.test('anthropic and gemini: a window that starts inside a tool exchange starts at the next user message', async (t) => {
  const stub = await startStub(t)
  const messages: ChatTurn[] = [...EXCHANGE.slice(1), { role: 'user', content: 'next question' }]
  for (const provider of ['anthropic', 'gemini'] as const) {
    stub.reset()
    const { error } = await collect(providerFor(t, stub, definition(provider)).stream(chat(undefined, { tools: TOOLS, messages })))
    t.error(error)
    t.same(stub.requests[0]!.messages.map((m) => [m.role, m.content, m.toolCalls, m.toolResults]), [['user', 'next question', undefined, undefined]], provider)
  }
})

t.test('the stub streams arguments in fragments, so the adapters are seen assembling them', async (t) => {
  const stub = await startStub(t)
  stub.setDefault({ toolCalls: [{ name: 'calc__add', arguments: { a: 2, b: 3 } }] })
  const post = async (path: string, body: unknown, headers: Record<string, string> = {}) =>
    (await fetch(`${stub.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })).text()
  const openai = await post('/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'x' }], stream: true })
  const pieces = [...openai.matchAll(/"arguments":"((?:[^"\\]|\\.)+)"/g)].map((match) => JSON.parse(`"${match[1]}"`) as string)
  t.ok(pieces.length >= 2, `OpenAI: ${pieces.length} fragments`)
  t.equal(pieces.join(''), '{"a":2,"b":3}')
  t.match(openai, /"finish_reason":"tool_calls"/)
  const anthropic = await post('/v1/messages', { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], stream: true }, { 'anthropic-version': '2023-06-01' })
  t.ok((anthropic.match(/input_json_delta/g) ?? []).length >= 2, 'Anthropic: 2+ input_json_delta pieces')
  t.match(anthropic, /"stop_reason":"tool_use"/)
  t.notMatch(anthropic, /"type":"text"/, 'no text block when the answer is only tool calls')
  const gemini = await post('/v1beta/models/m:streamGenerateContent?alt=sse', { contents: [{ role: 'user', parts: [{ text: 'x' }] }] })
  t.match(gemini, /"functionCall":\{"name":"calc__add","args":\{"a":2,"b":3\}\}/, 'Gemini: a functionCall part without id')
})

t.test('openai-compatible: calls sent whole without an index, or with the name repeated in every piece, are read as they are', async (t) => {
  const stub = await startStub(t)
  const chunk = (delta: unknown, finish: string | null = null) =>
    `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`
  const body =
    chunk({ role: 'assistant', tool_calls: [{ id: 'a', type: 'function', function: { name: 'calc__add', arguments: '{"a":1}' } }] }) +
    chunk({ tool_calls: [{ id: 'b', type: 'function', function: { name: 'clock__now', arguments: '{}' } }] }) +
    chunk({ tool_calls: [{ index: 7, id: 'c', type: 'function', function: { name: 'calc__add', arguments: '{"a":' } }] }) +
    chunk({ tool_calls: [{ index: 7, id: 'c', type: 'function', function: { name: 'calc__add', arguments: '2}' } }] }) +
    chunk({}, 'tool_calls') + 'data: [DONE]\n\n'
  stub.enqueue({ raw: { contentType: 'text/event-stream', body } })
  const { chunks, error } = await collect(providerFor(t, stub, definition('openai-compatible')).stream(chat(undefined, { tools: TOOLS })))
  t.error(error)
  t.same(toolCallsOf(chunks), [[
    { id: 'a', name: 'calc__add', arguments: { a: 1 } },
    { id: 'b', name: 'clock__now', arguments: {} },
    { id: 'c', name: 'calc__add', arguments: { a: 2 } }
  ]])
})

t.test('openai-compatible: a server that sends calls without ids gets call_<n> ids, unique in the answer', async (t) => {
  const stub = await startStub(t)
  const completion = {
    id: 'x',
    object: 'chat.completion',
    created: 1,
    model: 'm',
    choices: [{ index: 0, finish_reason: 'tool_calls', message: { role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'clock__now', arguments: '' } }, { type: 'function', function: { name: 'clock__now', arguments: '{}' } }] } }]
  }
  stub.enqueue({ raw: { contentType: 'application/json', body: JSON.stringify(completion) } })
  const { chunks, error } = await collect(providerFor(t, stub, definition('openai-compatible')).stream(chat(undefined, { tools: TOOLS, stream: false })))
  t.error(error)
  t.same(toolCallsOf(chunks), [[{ id: 'call_1', name: 'clock__now', arguments: {} }, { id: 'call_2', name: 'clock__now', arguments: {} }]])
})

t.test('gemini: a functionCall that has an id keeps it, streamed and whole', async (t) => {
  const stub = await startStub(t)
  for (const stream of [true, false]) {
    stub.enqueue({ toolCalls: [{ id: 'gem-1', name: 'clock__now', arguments: {} }, { name: 'clock__now', arguments: {} }] })
    const { chunks, error } = await collect(providerFor(t, stub, definition('gemini')).stream(chat(undefined, { tools: TOOLS, stream })))
    t.error(error)
    t.same(toolCallsOf(chunks)[0]!.map((call) => call.id), ['gem-1', 'call_2'], stream ? 'streamed' : 'whole')
  }
})
