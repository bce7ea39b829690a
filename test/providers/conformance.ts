import type { Test } from 'tap'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { createProvider, endpointFor, type ProviderConfig } from '../../src/providers/index.js'
import { ProviderError, type ChatChunk, type ChatRequest, type Provider } from '../../src/providers/provider.js'
import { LlmStub, refusedUrl } from '../support/llm-stub.js'

/**
 * The behaviour every real provider adapter shares, run through its real SDK against the loopback
 * stub: each test file (openai, anthropic, gemini, openai-compatible) calls `providerConformance` and
 * adds what is particular to its wire format.
 */
export interface Subject {
  provider: 'openai' | 'openai-compatible' | 'anthropic' | 'gemini'
  /** The key configured for it (undefined: none). */
  key: string | undefined
  /** Whether the request carries the manifest's temperature (Anthropic's API version refuses it). */
  sendsTemperature: boolean
}

export const KEYS = { OPENAI_API_KEY: 'sk-test-openai-0123456789', ANTHROPIC_API_KEY: 'sk-ant-test-0123456789', GEMINI_API_KEY: 'AIza-test-gemini-0123456789' }

/**
 * Configuration whose every base URL is the stub: no test can reach a real provider. `baseUrlFor`
 * gives the per-agent baseUrl form of the stub for each wire format.
 */
export function stubConfig (stub: LlmStub, extra: ProviderConfig = {}): ProviderConfig {
  return { ...KEYS, OPENAI_BASE_URL: stub.openaiBaseUrl, ANTHROPIC_BASE_URL: stub.anthropicBaseUrl, GEMINI_BASE_URL: stub.geminiBaseUrl, ...extra }
}

export function agentBaseUrl (provider: Subject['provider'], stub: LlmStub, prefix: string): string {
  return provider === 'openai' || provider === 'openai-compatible' ? stub.urlFor(prefix) : `${stub.url}/${prefix}`
}

export function definition (provider: Subject['provider'], extra: Partial<AgentDefinition> = {}): AgentDefinition {
  return { id: 'agent', name: 'Agent', description: '', provider, model: 'model-1', systemPrompt: 'You are terse.', temperature: 0.3, maxTokens: 77, expertise: [], ...extra }
}

/** The provider for an agent, built by the factory; it asserts the endpoint is the loopback stub. */
export function providerFor (t: Test, stub: LlmStub, agent: AgentDefinition, config: ProviderConfig = stubConfig(stub)): Provider {
  t.match(endpointFor(agent, config).baseUrl, /^http:\/\/127\.0\.0\.1:\d+(\/|$)/, 'the test talks to the loopback stub, never to the internet')
  return createProvider(agent, config)
}

export async function startStub (t: Test): Promise<LlmStub> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  return stub
}

export function chat (signal: AbortSignal = new AbortController().signal, extra: Partial<ChatRequest> = {}): ChatRequest {
  return {
    model: 'model-1',
    systemPrompt: 'You are terse.',
    messages: [
      { role: 'user', content: 'first question' },
      { role: 'assistant', content: 'first answer' },
      { role: 'user', content: 'second question' }
    ],
    temperature: 0.3,
    maxTokens: 77,
    signal,
    ...extra
  }
}

export interface Collected {
  chunks: ChatChunk[]
  deltas: string[]
  error: unknown
  ms: number
}

/** Reads a stream to its end or its error; `onChunk` may stop it early by returning false. */
export async function collect (stream: AsyncIterable<ChatChunk>, onChunk?: (chunk: ChatChunk, index: number) => boolean | void): Promise<Collected> {
  const chunks: ChatChunk[] = []
  const started = performance.now()
  let error: unknown
  try {
    for await (const chunk of stream) {
      chunks.push(chunk)
      if (onChunk?.(chunk, chunks.length - 1) === false) break
    }
  } catch (err) {
    error = err
  }
  return { chunks, deltas: chunks.flatMap((c) => (c.type === 'delta' ? [c.text] : [])), error, ms: performance.now() - started }
}

export function providerConformance (t: Test, subject: Subject): void {
  const { provider } = subject
  const agent = definition(provider)

  t.test(`${provider}: streamed deltas in order, then usage`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['Hel', 'lo', ', ', 'wor', 'ld', '!'], usage: { inputTokens: 31, outputTokens: 6 } })
    const { chunks, deltas, error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.error(error)
    t.same(deltas, ['Hel', 'lo', ', ', 'wor', 'ld', '!'], 'each delta as the provider sent it, in order')
    t.equal(deltas.join(''), 'Hello, world!')
    t.same(chunks.at(-1), { type: 'usage', inputTokens: 31, outputTokens: 6 }, 'usage from the provider, last')
    t.equal(stub.requests.length, 1)
    t.equal(stub.requests[0]!.stream, true, 'a streaming request')
  })

  t.test(`${provider}: stream: false asks for the whole answer in one response: one delta, then usage`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['Hel', 'lo', ', ', 'wor', 'ld', '!'], usage: { inputTokens: 31, outputTokens: 6 } })
    const { chunks, deltas, error } = await collect(providerFor(t, stub, agent).stream(chat(undefined, { stream: false })))
    t.error(error)
    t.same(deltas, ['Hello, world!'], 'the whole text as one delta')
    t.same(chunks.at(-1), { type: 'usage', inputTokens: 31, outputTokens: 6 }, 'usage from the provider, last')
    t.equal(stub.requests.length, 1)
    t.equal(stub.requests[0]!.stream, false, 'a request for the whole answer')
    t.equal(stub.requests[0]!.model, 'model-1')
    t.same(stub.requests[0]!.messages.map((m) => m.content), ['first question', 'first answer', 'second question'], 'with the history')
  })

  t.test(`${provider}: stream: false maps errors and aborts as a stream does`, async (t) => {
    const stub = await startStub(t)
    const subjectProvider = providerFor(t, stub, agent)
    for (const [status, kind] of [[401, 'auth'], [429, 'rate_limited'], [503, 'server']] as const) {
      stub.enqueue({ status, headers: status === 429 ? { 'retry-after': '2' } : {} })
      const { deltas, error } = await collect(subjectProvider.stream(chat(undefined, { stream: false })))
      t.equal((error as ProviderError).kind, kind, `${status} → ${kind}`)
      if (status === 429) t.equal((error as ProviderError).retryAfterMs, 2000, 'Retry-After kept')
      t.same(deltas, [])
    }
    stub.enqueue({ hang: true })
    const { error, ms } = await collect(subjectProvider.stream(chat(AbortSignal.timeout(150), { stream: false })))
    t.equal((error as Error).name, 'TimeoutError', "the signal's reason")
    t.ok(ms < 1000, `within the deadline (${Math.round(ms)} ms)`)
    await stub.idle(1000)
    t.equal(stub.inFlight, 0, 'the connection was closed')
  })

  t.test(`${provider}: the request carries the model, system prompt, history, limits and key`, async (t) => {
    const stub = await startStub(t)
    await collect(providerFor(t, stub, agent).stream(chat()))
    const request = stub.requests[0]!
    t.equal(request.protocol, provider === 'openai-compatible' ? 'openai' : provider)
    t.equal(request.model, 'model-1')
    t.equal(request.system, 'You are terse.')
    t.same(request.messages.map((m) => m.content), ['first question', 'first answer', 'second question'])
    t.same(request.messages.map((m) => m.role === 'model' ? 'assistant' : m.role), ['user', 'assistant', 'user'])
    t.equal(request.maxTokens, 77)
    t.equal(request.temperature, subject.sendsTemperature ? 0.3 : undefined)
    t.equal(request.apiKey, subject.key ?? 'no-key')
    t.equal(request.prefix, '', 'the base URL from the environment')
  })

  t.test(`${provider}: a per-agent baseUrl overrides the environment's`, async (t) => {
    const stub = await startStub(t)
    const own = definition(provider, { baseUrl: agentBaseUrl(provider, stub, 'agent-a') })
    const { error } = await collect(providerFor(t, stub, own).stream(chat()))
    t.error(error)
    t.equal(stub.requests[0]!.prefix, '/agent-a')
  })

  const statuses: [number, ProviderError['kind']][] = [
    [400, 'bad_request'], [401, 'auth'], [403, 'auth'], [404, 'bad_request'], [422, 'bad_request'],
    [429, 'rate_limited'], [500, 'server'], [502, 'server'], [503, 'server'], [529, 'server']
  ]
  t.test(`${provider}: each error status maps to its kind, with one request (no retry by the adapter)`, async (t) => {
    const stub = await startStub(t)
    const subjectProvider = providerFor(t, stub, agent)
    for (const [status, kind] of statuses) {
      stub.reset()
      stub.enqueue({ status })
      const { deltas, error } = await collect(subjectProvider.stream(chat()))
      t.ok(error instanceof ProviderError, `${status}: a ProviderError`)
      const failure = error as ProviderError
      t.equal(failure.kind, kind, `${status} → ${kind}`)
      t.equal(failure.status, status)
      t.equal(failure.provider, provider)
      t.equal(failure.retryable, ['rate_limited', 'server'].includes(kind))
      t.match(failure.message, new RegExp(`^${provider} \\(model model-1\\) answered HTTP ${status}`), 'names the provider, the model and the status')
      t.same(deltas, [])
      t.equal(stub.requests.length, 1, `${status}: exactly one request`)
    }
  })

  t.test(`${provider}: 429 with Retry-After in seconds, as an HTTP date, or retry-after-ms`, async (t) => {
    const stub = await startStub(t)
    const subjectProvider = providerFor(t, stub, agent)
    const cases: [Record<string, string>, (ms: number | undefined) => boolean][] = [
      [{ 'retry-after': '7' }, (ms) => ms === 7000],
      [{ 'retry-after': new Date(Date.now() + 30_000).toUTCString() }, (ms) => ms !== undefined && ms > 25_000 && ms <= 30_000],
      [{ 'retry-after-ms': '1500' }, (ms) => ms === 1500],
      [{}, (ms) => ms === undefined]
    ]
    for (const [headers, check] of cases) {
      stub.failNext(1, 429, headers)
      const { error } = await collect(subjectProvider.stream(chat()))
      t.equal((error as ProviderError).kind, 'rate_limited')
      t.ok(check((error as ProviderError).retryAfterMs), `${JSON.stringify(headers)} → ${(error as ProviderError).retryAfterMs}`)
    }
  })

  t.test(`${provider}: a 500 costs exactly one request (the adapter never retries)`, async (t) => {
    const stub = await startStub(t)
    stub.failNext(3, 500)
    const { error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.equal((error as ProviderError).kind, 'server')
    await new Promise((resolve) => setTimeout(resolve, 100))
    t.equal(stub.requests.length, 1, 'one request, even after a while')
  })

  t.test(`${provider}: connection refused is a connection error naming the base URL`, async (t) => {
    const stub = await startStub(t)
    const refused = await refusedUrl()
    const url = provider === 'openai' || provider === 'openai-compatible' ? refused : refused.replace(/\/v1$/, '')
    const { error, ms } = await collect(providerFor(t, stub, definition(provider, { baseUrl: url })).stream(chat()))
    t.ok(error instanceof ProviderError)
    t.equal((error as ProviderError).kind, 'connection')
    t.ok((error as ProviderError).retryable)
    t.match((error as ProviderError).message, /connection refused \(ECONNREFUSED\)/)
    t.ok((error as ProviderError).message.includes(url), 'the base URL is named')
    t.ok(ms < 2000, 'at once, no retry')
  })

  t.test(`${provider}: a stream cut after K deltas yields the K deltas, then a connection error`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['a', 'b', 'c', 'd', 'e'], cutAfter: 3 })
    const { deltas, error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.same(deltas, ['a', 'b', 'c'])
    t.equal((error as ProviderError).kind, 'connection')
    t.equal(stub.requests.length, 1)
  })

  t.test(`${provider}: a stream that ends cleanly before its end marker is a connection error`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['a', 'b', 'c', 'd'], endAfter: 2 })
    const { deltas, chunks, error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.same(deltas, ['a', 'b'])
    t.notOk(chunks.some((c) => c.type === 'usage'), 'no usage for an incomplete reply')
    t.equal((error as ProviderError).kind, 'connection')
    t.match((error as ProviderError).message, /the stream ended before .*; the reply is incomplete/)
  })

  t.test(`${provider}: an error event inside a started stream`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['a', 'b', 'c'], streamError: { after: 1, status: 500, message: 'upstream exploded' } })
    const { deltas, error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.same(deltas, ['a'])
    t.equal((error as ProviderError).kind, 'server')
    t.match((error as ProviderError).message, /mid-stream.*upstream exploded/)
  })

  t.test(`${provider}: an event that is not JSON is an invalid response (not retryable)`, async (t) => {
    const stub = await startStub(t)
    const body = provider === 'anthropic' ? 'event: message_start\ndata: {not json\n\n' : provider === 'gemini' ? 'data: {not json\r\n\r\n' : 'data: {not json\n\n'
    stub.enqueue({ raw: { contentType: 'text/event-stream', body } })
    const { error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.ok(error instanceof ProviderError, String(error))
    t.equal((error as ProviderError).kind, 'invalid_response')
    t.notOk((error as ProviderError).retryable)
  })

  t.test(`${provider}: an abort mid-stream rethrows the signal's reason at once and closes the connection`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['a', 'b', 'c', 'd'], deltaDelayMs: 5000 })
    const controller = new AbortController()
    const reason = new DOMException('deadline', 'TimeoutError')
    let abortedAt = 0
    const { deltas, error } = await collect(providerFor(t, stub, agent).stream(chat(controller.signal)), (chunk) => {
      if (chunk.type === 'delta') {
        setTimeout(() => {
          abortedAt = performance.now()
          controller.abort(reason)
        }, 50)
      }
    })
    t.equal(error, reason, 'the very reason, not a ProviderError')
    t.same(deltas, ['a'])
    t.ok(performance.now() - abortedAt < 500, 'promptly')
    await stub.idle(1000)
    t.equal(stub.inFlight, 0, 'the stub saw the connection close')
  })

  t.test(`${provider}: an abort before the first byte (a hung provider) rethrows the reason`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ hang: true })
    const { error, ms } = await collect(providerFor(t, stub, agent).stream(chat(AbortSignal.timeout(150))))
    t.equal((error as Error).name, 'TimeoutError')
    t.notOk(error instanceof ProviderError)
    t.ok(ms < 1000, `within the deadline (${Math.round(ms)} ms)`)
    await stub.idle(1000)
  })

  t.test(`${provider}: an already aborted signal sends nothing`, async (t) => {
    const stub = await startStub(t)
    const reason = new DOMException('gone', 'AbortError')
    const { error } = await collect(providerFor(t, stub, agent).stream(chat(AbortSignal.abort(reason))))
    t.equal(error, reason)
    t.equal(stub.requests.length, 0)
  })

  t.test(`${provider}: a consumer that stops reading closes the connection`, async (t) => {
    const stub = await startStub(t)
    stub.enqueue({ text: ['a', 'b', 'c', 'd'], deltaDelayMs: 5000 })
    const { deltas } = await collect(providerFor(t, stub, agent).stream(chat()), () => false)
    t.same(deltas, ['a'])
    await stub.idle(1000)
  })

  t.test(`${provider}: the key never appears in an error message, even when the provider echoes it`, async (t) => {
    const stub = await startStub(t)
    const key = subject.key ?? 'no-key-placeholder-never-sent'
    stub.enqueue({ status: 401, errorMessage: `Incorrect API key provided: ${key}` })
    const { error } = await collect(providerFor(t, stub, agent).stream(chat()))
    t.equal((error as ProviderError).kind, 'auth')
    t.notOk((error as Error).message.includes(key), (error as Error).message)
    t.notOk(String((error as Error).stack).includes(key))
    t.notOk(String((error as Error).cause ?? '').includes(key))
    if (subject.key) t.match((error as Error).message, /\[redacted\]/)
  })

  t.test(`${provider}: probe in both modes`, async (t) => {
    const stub = await startStub(t)
    const subjectProvider = providerFor(t, stub, agent)
    const signal = new AbortController().signal
    await subjectProvider.probe({ model: 'model-1', mode: 'models', signal })
    t.equal(stub.requests[0]!.method, 'GET')
    t.match(stub.requests[0]!.kind, /^models?$/)
    await subjectProvider.probe({ model: 'model-1', mode: 'completion', signal })
    t.equal(stub.requests[1]!.kind, 'chat')
    t.equal(stub.requests[1]!.maxTokens, 1, 'one token')
    t.equal(stub.requests[1]!.stream, false)
    t.equal(stub.requests[1]!.model, 'model-1')

    for (const mode of ['models', 'completion'] as const) {
      stub.enqueue({ status: 401 })
      await t.rejects(subjectProvider.probe({ model: 'model-1', mode, signal }), { name: 'ProviderError', kind: 'auth', status: 401 }, `${mode}: 401`)
      stub.enqueue({ status: 503 })
      await t.rejects(subjectProvider.probe({ model: 'model-1', mode, signal }), { name: 'ProviderError', kind: 'server', status: 503 }, `${mode}: 503`)
      stub.enqueue({ hang: true })
      await t.rejects(subjectProvider.probe({ model: 'model-1', mode, signal: AbortSignal.timeout(100) }), { name: 'TimeoutError' }, `${mode}: the signal's reason`)
    }
    await stub.idle(1000)
    t.equal(stub.requests.length, 8, 'one request per probe')
  })
}
