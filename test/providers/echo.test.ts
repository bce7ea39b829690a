import t from 'tap'
import { EchoProvider } from '../../src/providers/echo.js'
import type { ChatChunk, ChatRequest } from '../../src/providers/provider.js'

function request (content: string, extra: Partial<ChatRequest> = {}): ChatRequest {
  return {
    model: 'gpt-4o-mini',
    systemPrompt: 'You are a helpful assistant.',
    messages: [
      { role: 'user', content: 'earlier question' },
      { role: 'assistant', content: 'earlier answer' },
      { role: 'user', content }
    ],
    temperature: 0.7,
    maxTokens: 100,
    signal: new AbortController().signal,
    ...extra
  }
}

async function collect (stream: AsyncIterable<ChatChunk>): Promise<ChatChunk[]> {
  const chunks: ChatChunk[] = []
  for await (const chunk of stream) chunks.push(chunk)
  return chunks
}

const deltas = (chunks: ChatChunk[]) => chunks.flatMap((chunk) => (chunk.type === 'delta' ? [chunk.text] : []))

t.test('answers the last user message, one delta per word, then usage', async (t) => {
  const chunks = await collect(new EchoProvider().stream(request('What is the capital of France?')))
  t.same(deltas(chunks), ['Echo', ' (gpt-4o-mini):', ' What', ' is', ' the', ' capital', ' of', ' France?'])
  t.same(chunks.at(-1), { type: 'usage', inputTokens: 5 + 2 + 2 + 6, outputTokens: 8 })
  t.equal(chunks.filter((chunk) => chunk.type === 'usage').length, 1, 'one usage chunk, last')
  t.equal(new EchoProvider().name, 'echo')
})

t.test('deterministic: the same request gives the same chunks', async (t) => {
  const provider = new EchoProvider()
  const content = 'Same input, same output.'
  t.same(await collect(provider.stream(request(content))), await collect(provider.stream(request(content))))
})

t.test('the deltas concatenate to the reply text exactly, whitespace and Unicode included', async (t) => {
  const samples = [
    'plain words',
    '  leading and trailing spaces  ',
    'tabs\tand\nnew lines\r\n\r\nand blank lines\n',
    '   ',
    "Robert'); DROP TABLE chat_messages;-- \"quoted\" `tick` \\ backslash %s $1",
    'emoji 👩‍👩‍👧‍👦 🚀🔥 flags 🇫🇷🇯🇵 and skin tones 👍🏽',
    '中文没有空格也要原样返回，日本語のテキスト、한국어 텍스트',
    'שלום עולם مرحبا بالعالم mixed RTL ‏and LTR‎',
    'zero\u200bwidth\u00a0nbsp\u2028line separator \ufeffBOM e\u0301 combining',
    'lone surrogate \ud800 kept'
  ]
  for (const [i, content] of samples.entries()) {
    const chunks = await collect(new EchoProvider().stream(request(content)))
    const text = deltas(chunks).join('')
    // Compared as code points and named by index: some samples would garble the TAP output.
    t.ok(text === `Echo (gpt-4o-mini): ${content}`, `sample ${i}: the deltas add up to the reply`)
    t.ok(text === EchoProvider.replyText(request(content)), `sample ${i}: replyText agrees`)
    t.ok(deltas(chunks).every((delta) => delta.length > 0), `sample ${i}: no empty delta`)
  }
})

t.test('a message of N words streams about N deltas (100 for the SSE benchmark)', async (t) => {
  const words = Array.from({ length: 98 }, (_, i) => `word${i}`).join(' ')
  const chunks = await collect(new EchoProvider().stream(request(words)))
  t.equal(deltas(chunks).length, 100, '98 words + "Echo" + "(model):"')
  t.match(chunks.at(-1), { type: 'usage', outputTokens: 100 })
})

t.test('with no user message the reply is the bare prefix', async (t) => {
  const chunks = await collect(new EchoProvider().stream(request('x', { messages: [], systemPrompt: '' })))
  t.equal(deltas(chunks).join(''), 'Echo (gpt-4o-mini): ')
  t.same(chunks.at(-1), { type: 'usage', inputTokens: 0, outputTokens: 2 })
})

t.test('tokenDelayMs paces the deltas', async (t) => {
  const provider = new EchoProvider({ tokenDelayMs: 20 })
  const started = Date.now()
  const chunks = await collect(provider.stream(request('one two three')))
  const elapsed = Date.now() - started
  t.equal(deltas(chunks).length, 5)
  t.ok(elapsed >= 4 * 20 - 5, `4 pauses of 20 ms between 5 deltas (took ${elapsed} ms)`)
})

t.test('abort while waiting between deltas: rejects promptly with the reason, no more deltas', async (t) => {
  const controller = new AbortController()
  const provider = new EchoProvider({ tokenDelayMs: 10_000 })
  const received: string[] = []
  const reason = new Error('reply deadline passed')
  const started = Date.now()
  const consuming = (async () => {
    for await (const chunk of provider.stream(request('one two three', { signal: controller.signal }))) {
      if (chunk.type === 'delta') {
        received.push(chunk.text)
        setTimeout(() => controller.abort(reason), 20)
      }
    }
  })()
  await t.rejects(consuming, reason)
  t.ok(Date.now() - started < 1000, 'well before the 10 s pause would end')
  t.same(received, ['Echo'])
})

t.test('abort without a delay: the next chunk is the abort', async (t) => {
  const controller = new AbortController()
  const stream = new EchoProvider().stream(request('one two three', { signal: controller.signal }))[Symbol.asyncIterator]()
  t.same(await stream.next(), { value: { type: 'delta', text: 'Echo' }, done: false })
  controller.abort()
  await t.rejects(stream.next(), { name: 'AbortError' })
  t.same(await stream.next(), { value: undefined, done: true }, 'finished: nothing after the abort')
})

t.test('an already aborted signal yields nothing', async (t) => {
  const controller = new AbortController()
  const reason = new Error('shutting down')
  controller.abort(reason)
  await t.rejects(collect(new EchoProvider({ tokenDelayMs: 5 }).stream(request('hi', { signal: controller.signal }))), reason)
})

t.test('split and countWords', async (t) => {
  t.same(EchoProvider.split(''), [])
  t.same(EchoProvider.split('  '), ['  '])
  t.same(EchoProvider.split(' a  b '), [' a', '  b '])
  t.equal(EchoProvider.countWords(' a  b\nc '), 3)
  t.equal(EchoProvider.countWords(''), 0)
})

const TOOLS = [
  { name: 'calculator__evaluate', description: 'Evaluates an arithmetic expression', inputSchema: { type: 'object', properties: { expression: { type: 'string' } } } },
  { name: 'clock__now', description: 'The current time', inputSchema: { type: 'object', properties: {} } }
]

const toolCalls = (chunks: ChatChunk[]) => chunks.flatMap((chunk) => (chunk.type === 'tool_calls' ? [chunk.calls] : []))

t.test('tools offered and a /tool line: one text-less tool_calls chunk, then usage', async (t) => {
  const chunks = await collect(new EchoProvider().stream(request('/tool calculator__evaluate {"expression":"2+3"}', { tools: TOOLS })))
  t.same(chunks.map((chunk) => chunk.type), ['tool_calls', 'usage'], 'no text')
  t.same(toolCalls(chunks), [[{ id: 'echo_call_1', name: 'calculator__evaluate', arguments: { expression: '2+3' } }]])
})

t.test('several /tool lines ask for parallel calls; a name without its server prefix is the offered one; arguments are optional', async (t) => {
  const message = '/tool evaluate {"expression": "6*7"}\n\n  /tool clock/now  \n/tool clock__now {}\n/tool weather {"city":"Paris"}'
  const [calls] = toolCalls(await collect(new EchoProvider().stream(request(message, { tools: TOOLS }))))
  t.same(calls, [
    { id: 'echo_call_1', name: 'calculator__evaluate', arguments: { expression: '6*7' } },
    { id: 'echo_call_2', name: 'clock__now', arguments: {} },
    { id: 'echo_call_3', name: 'clock__now', arguments: {} },
    { id: 'echo_call_4', name: 'weather', arguments: { city: 'Paris' } }
  ], 'an unknown tool is asked for as given: the service refuses it with an error result')
  t.same(EchoProvider.toolCalls(request(message, { tools: TOOLS })), calls, 'toolCalls agrees with the stream')
})

t.test('/tool arguments that are not a JSON object give argumentsError', async (t) => {
  const [calls] = toolCalls(await collect(new EchoProvider().stream(request('/tool evaluate {"expression":\n/tool evaluate [1]', { tools: TOOLS }))))
  t.match(calls, [
    { id: 'echo_call_1', name: 'calculator__evaluate', arguments: {}, argumentsError: /not valid JSON/ },
    { id: 'echo_call_2', name: 'calculator__evaluate', arguments: {}, argumentsError: /an array, not a JSON object/ }
  ])
})

t.test('no tools offered, a line that is not a /tool line, or a last turn that is not the user\'s: a plain echo', async (t) => {
  for (const [label, extra] of [
    ['no tools', { messages: [{ role: 'user', content: '/tool clock__now' }] }],
    ['empty tools', { tools: [], messages: [{ role: 'user', content: '/tool clock__now' }] }],
    ['a line that is not a /tool line', { tools: TOOLS, messages: [{ role: 'user', content: '/tool clock__now\nand tell me a joke' }] }],
    ['a tool word mid-sentence', { tools: TOOLS, messages: [{ role: 'user', content: 'please /tool clock__now' }] }]
  ] as [string, Partial<ChatRequest>][]) {
    const chunks = await collect(new EchoProvider().stream(request('unused', extra)))
    t.same(toolCalls(chunks), [], `${label}: no tool call`)
    t.equal(deltas(chunks).join(''), `Echo (gpt-4o-mini): ${extra.messages!.at(-1)!.content}`, label)
  }
})

t.test('after the results: one line per result of the last step, as word deltas', async (t) => {
  const messages: ChatRequest['messages'] = [
    { role: 'user', content: '/tool clock__now' },
    { role: 'assistant', content: '', toolCalls: [{ id: 'echo_call_1', name: 'clock__now', arguments: {} }] },
    { role: 'tool', content: '12:00', toolResult: { callId: 'echo_call_1', name: 'clock__now', isError: false } },
    { role: 'assistant', content: '', toolCalls: [{ id: 'echo_call_1', name: 'calculator__evaluate', arguments: {} }, { id: 'echo_call_2', name: 'weather', arguments: {} }] },
    { role: 'tool', content: '5', toolResult: { callId: 'echo_call_1', name: 'calculator__evaluate', isError: false } },
    { role: 'tool', content: 'unknown tool weather', toolResult: { callId: 'echo_call_2', name: 'weather', isError: true } }
  ]
  const chunks = await collect(new EchoProvider().stream(request('unused', { tools: TOOLS, messages })))
  const text = 'Echo (gpt-4o-mini): calculator__evaluate -> 5\nweather -> unknown tool weather'
  t.equal(deltas(chunks).join(''), text, 'the last step only')
  t.ok(deltas(chunks).length > 1, 'word deltas')
  t.same(toolCalls(chunks), [])
  t.equal(EchoProvider.replyText({ model: 'gpt-4o-mini', messages }), text, 'replyText agrees')
  t.match(chunks.at(-1), { type: 'usage', outputTokens: EchoProvider.countWords(text) })
})

t.test('a tool call respects an aborted signal', async (t) => {
  const controller = new AbortController()
  controller.abort(new Error('shutting down'))
  await t.rejects(collect(new EchoProvider().stream(request('/tool clock__now', { tools: TOOLS, signal: controller.signal }))), { message: 'shutting down' })
})
