import t from 'tap'
import { ProviderError } from '../../src/providers/provider.js'
import { chat, collect, definition, KEYS, providerConformance, providerFor, startStub } from './conformance.js'

providerConformance(t, { provider: 'anthropic', key: KEYS.ANTHROPIC_API_KEY, sendsTemperature: false })

t.test('anthropic: the wire request is a streamed message with the system prompt apart and no sampling parameters', async (t) => {
  const stub = await startStub(t)
  await collect(providerFor(t, stub, definition('anthropic')).stream(chat()))
  const request = stub.requests[0]!
  t.equal(request.path, '/v1/messages')
  t.ok(request.headers['anthropic-version'], 'the SDK names its API version')
  t.same(request.body, {
    model: 'model-1',
    max_tokens: 77,
    system: 'You are terse.',
    messages: [
      { role: 'user', content: 'first question' },
      { role: 'assistant', content: 'first answer' },
      { role: 'user', content: 'second question' }
    ],
    stream: true
  }, 'no temperature: API version 2026-10-21 answers 400 to any sampling parameter')
})

t.test('anthropic: history is made acceptable (starts with a user turn, one role per turn, system turns in the system prompt)', async (t) => {
  const stub = await startStub(t)
  await collect(providerFor(t, stub, definition('anthropic')).stream(chat(undefined, {
    systemPrompt: '',
    messages: [
      { role: 'assistant', content: 'an answer whose question fell out of the window' },
      { role: 'user', content: 'a question that got no reply' },
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'the question' }
    ]
  })))
  t.match(stub.requests[0]!.body, { system: 'Be brief.', messages: [{ role: 'user', content: 'a question that got no reply\n\nthe question' }] })
  t.equal((stub.requests[0]!.body as { messages: unknown[] }).messages.length, 1)
})

t.test('anthropic: usage adds the input of message_start to the output of message_delta', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({ text: 'two words', usage: { inputTokens: 12, outputTokens: 2 } })
  const { chunks } = await collect(providerFor(t, stub, definition('anthropic')).stream(chat()))
  t.same(chunks.at(-1), { type: 'usage', inputTokens: 12, outputTokens: 2 })
})

t.test('anthropic: an overloaded_error event mid-stream is a retryable server error', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({ text: ['a', 'b'], streamError: { after: 1, status: 529, message: 'Overloaded' } })
  const { deltas, error } = await collect(providerFor(t, stub, definition('anthropic')).stream(chat()))
  t.same(deltas, ['a'])
  t.ok(error instanceof ProviderError)
  t.match(error, { kind: 'server', retryable: true, message: /overloaded_error: Overloaded/ })
})

t.test('anthropic: the models probe retrieves the model, so a wrong model name shows', async (t) => {
  const stub = await startStub(t)
  const provider = providerFor(t, stub, definition('anthropic'))
  const signal = new AbortController().signal
  await provider.probe({ model: 'model-1', mode: 'models', signal })
  t.equal(stub.requests[0]!.path, '/v1/models/model-1')
  stub.enqueue({ models: ['claude-other'] })
  await t.rejects(provider.probe({ model: 'model-1', mode: 'models', signal }), { name: 'ProviderError', kind: 'bad_request', status: 404 })
})
