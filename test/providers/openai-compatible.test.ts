import t from 'tap'
import { chat, collect, definition, KEYS, providerConformance, providerFor, startStub, stubConfig } from './conformance.js'

// The openai-compatible provider through OPENAI_BASE_URL (with OPENAI_API_KEY), as a Groq or vLLM
// deployment behind one URL is configured; its own-baseUrl form is tested below.
providerConformance(t, { provider: 'openai-compatible', key: KEYS.OPENAI_API_KEY, sendsTemperature: true })

t.test('openai-compatible: max_tokens (what Ollama and vLLM know), named after the manifest', async (t) => {
  const stub = await startStub(t)
  const provider = providerFor(t, stub, definition('openai-compatible'))
  t.equal(provider.name, 'openai-compatible')
  await collect(provider.stream(chat()))
  t.match(stub.requests[0]!.body, { max_tokens: 77, stream: true, stream_options: { include_usage: true } })
  t.notOk('max_completion_tokens' in (stub.requests[0]!.body as object))
})

t.test('openai-compatible: a server with its own baseUrl gets a placeholder key, never OPENAI_API_KEY', async (t) => {
  const stub = await startStub(t)
  const ollama = definition('openai-compatible', { model: 'llama3.2', baseUrl: stub.urlFor('ollama') })
  const { error } = await collect(providerFor(t, stub, ollama).stream(chat(undefined, { model: 'llama3.2' })))
  t.error(error)
  t.equal(stub.requests[0]!.prefix, '/ollama')
  t.equal(stub.requests[0]!.headers.authorization, 'Bearer no-key')
  t.notMatch(JSON.stringify(stub.requests[0]!.headers), KEYS.OPENAI_API_KEY)
})

t.test('openai-compatible: no key at all is fine (a local server)', async (t) => {
  const stub = await startStub(t)
  const config = { OPENAI_BASE_URL: stub.openaiBaseUrl }
  const { error } = await collect(providerFor(t, stub, definition('openai-compatible'), config).stream(chat()))
  t.error(error)
  t.equal(stub.requests[0]!.apiKey, 'no-key')
})

t.test('openai-compatible: a server that ignores stream_options sends no usage chunk, and the reply still completes', async (t) => {
  const stub = await startStub(t)
  stub.enqueue({ text: 'no usage here', noUsage: true })
  const { deltas, chunks, error } = await collect(providerFor(t, stub, definition('openai-compatible'), stubConfig(stub)).stream(chat()))
  t.error(error)
  t.equal(deltas.join(''), 'no usage here')
  t.notOk(chunks.some((c) => c.type === 'usage'))
})

t.test('openai-compatible: the models probe lists the models (vLLM and LM Studio have no GET /models/{id})', async (t) => {
  const stub = await startStub(t)
  await providerFor(t, stub, definition('openai-compatible')).probe({ model: 'model-1', mode: 'models', signal: new AbortController().signal })
  t.equal(stub.requests[0]!.path, '/v1/models')
  t.equal(stub.requests[0]!.kind, 'models')
})
