import t from 'tap'
import { ProviderError } from '../../src/providers/provider.js'
import { chat, collect, definition, KEYS, providerConformance, providerFor, startStub } from './conformance.js'

providerConformance(t, { provider: 'gemini', key: KEYS.GEMINI_API_KEY, sendsTemperature: true })

t.test('gemini: the wire request is streamGenerateContent over SSE with systemInstruction and generationConfig', async (t) => {
  const stub = await startStub(t)
  await collect(providerFor(t, stub, definition('gemini')).stream(chat()))
  const request = stub.requests[0]!
  t.equal(request.path, '/v1beta/models/model-1:streamGenerateContent')
  t.equal(request.query.alt, 'sse')
  t.equal(request.headers['x-goog-api-key'], KEYS.GEMINI_API_KEY)
  t.match(request.body, {
    contents: [
      { role: 'user', parts: [{ text: 'first question' }] },
      { role: 'model', parts: [{ text: 'first answer' }] },
      { role: 'user', parts: [{ text: 'second question' }] }
    ],
    systemInstruction: { parts: [{ text: 'You are terse.' }] },
    generationConfig: { temperature: 0.3, maxOutputTokens: 77 }
  })
})

t.test('gemini: a 429 with Google\'s RetryInfo in the body gives retryAfterMs', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({
    status: 429,
    errorBody: { error: { code: 429, message: 'Quota exceeded', status: 'RESOURCE_EXHAUSTED', details: [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '37s' }] } }
  })
  const { error } = await collect(providerFor(t, stub, definition('gemini')).stream(chat()))
  t.ok(error instanceof ProviderError)
  t.match(error, { kind: 'rate_limited', retryAfterMs: 37_000, message: /Quota exceeded/ })
})

t.test('gemini: the SDK does not reopen a cut stream by itself (automatic continuation is off)', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({ text: ['a', 'b', 'c'], cutAfter: 1 })
  const { error } = await collect(providerFor(t, stub, definition('gemini')).stream(chat()))
  t.equal((error as ProviderError).kind, 'connection')
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.equal(stub.requests.length, 1)
})

t.test('gemini: the models probe gets the model; the completion probe asks for one token', async (t) => {
  const stub = await startStub(t)
  const provider = providerFor(t, stub, definition('gemini'))
  const signal = new AbortController().signal
  await provider.probe({ model: 'model-1', mode: 'models', signal })
  t.equal(stub.requests[0]!.path, '/v1beta/models/model-1')
  await provider.probe({ model: 'model-1', mode: 'completion', signal })
  t.equal(stub.requests[1]!.path, '/v1beta/models/model-1:generateContent')
  t.match(stub.requests[1]!.body, { generationConfig: { maxOutputTokens: 1 } })
})

t.test('gemini: finishReason MALFORMED_FUNCTION_CALL (no parts) is an invalid response, streamed and whole, not an empty answer', async (t) => {
  const answer = { candidates: [{ content: { role: 'model', parts: [] }, finishReason: 'MALFORMED_FUNCTION_CALL', index: 0 }], usageMetadata: { promptTokenCount: 5, candidatesTokenCount: 0, totalTokenCount: 5 } }
  for (const stream of [true, false]) {
    const stub = await startStub(t)
    stub.enqueue(stream ? { raw: { contentType: 'text/event-stream', body: `data: ${JSON.stringify(answer)}\r\n\r\n` } } : { raw: { contentType: 'application/json', body: JSON.stringify(answer) } })
    const { deltas, error } = await collect(providerFor(t, stub, definition('gemini')).stream({ ...chat(), stream }))
    t.same(deltas, [], `stream ${stream}: no text`)
    t.ok(error instanceof ProviderError, `stream ${stream}: ${String(error)}`)
    t.match(error, { kind: 'invalid_response', message: /MALFORMED_FUNCTION_CALL/ })
  }
})
