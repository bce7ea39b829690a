import t from 'tap'
import { ProviderError } from '../../src/providers/provider.js'
import { chat, collect, definition, KEYS, providerConformance, providerFor, startStub } from './conformance.js'

providerConformance(t, { provider: 'openai', key: KEYS.OPENAI_API_KEY, sendsTemperature: true })

t.test('openai: the wire request is a streamed chat completion with usage and max_completion_tokens', async (t) => {
  const stub = await startStub(t)
  await collect(providerFor(t, stub, definition('openai')).stream(chat()))
  const request = stub.requests[0]!
  t.equal(request.path, '/v1/chat/completions')
  t.equal(request.headers.authorization, `Bearer ${KEYS.OPENAI_API_KEY}`)
  t.match(request.body, {
    model: 'model-1',
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'first question' },
      { role: 'assistant', content: 'first answer' },
      { role: 'user', content: 'second question' }
    ],
    temperature: 0.3,
    max_completion_tokens: 77,
    stream: true,
    stream_options: { include_usage: true }
  })
  t.notOk('max_tokens' in (request.body as object), 'OpenAI reasoning models refuse max_tokens')
})

t.test('openai: an empty system prompt sends no system message', async (t) => {
  const stub = await startStub(t)
  await collect(providerFor(t, stub, definition('openai')).stream(chat(undefined, { systemPrompt: '' })))
  t.same((stub.requests[0]!.body as { messages: { role: string }[] }).messages.map((m) => m.role), ['user', 'assistant', 'user'])
})

t.test('openai: the models probe lists the models; the completion probe asks for one token', async (t) => {
  const stub = await startStub(t)
  const provider = providerFor(t, stub, definition('openai'))
  const signal = new AbortController().signal
  await provider.probe({ model: 'model-1', mode: 'models', signal })
  t.equal(stub.requests[0]!.path, '/v1/models', 'GET /v1/models: every OpenAI-compatible server has it')
  await provider.probe({ model: 'model-1', mode: 'completion', signal })
  t.match(stub.requests[1]!.body, { model: 'model-1', max_completion_tokens: 1, stream: false })
})

t.test('openai: a 200 that is not an event stream is an invalid response', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({ raw: { contentType: 'text/html', body: '<html><body>Please log in to the proxy</body></html>' } })
  const { error } = await collect(providerFor(t, stub, definition('openai')).stream(chat()))
  t.ok(error instanceof ProviderError)
  t.equal((error as ProviderError).kind, 'invalid_response')
  t.notOk((error as ProviderError).retryable)
})
