import t, { type Test } from 'tap'
import pino from 'pino'
import { Registry } from 'prom-client'
import type { AgentDefinition } from '../../src/agents/agent.js'
import { CircuitOpenError, ProviderGuard, deadline, type Deadline, type ProviderGuardOptions, type TrafficSample } from '../../src/agents/provider-guard.js'
import { AgentRegistry } from '../../src/agents/registry.js'
import { LlmMetrics } from '../../src/metrics/llm-metrics.js'
import { ProviderError } from '../../src/providers/provider.js'
import { LlmStub } from '../support/llm-stub.js'
import { ManualClock } from '../support/manual-clock.js'

// The guard around provider calls, driving the real OpenAI SDK adapter against a loopback stub that
// speaks the OpenAI wire format: retries before the first token only, Retry-After, the deadline,
// the circuit breaker (open, half-open probe, closed again) and the metrics it keeps. Backoffs,
// cool-downs and deadlines run on a manual clock: the tests move time instead of waiting for it.

const NEVER = new AbortController().signal

function agent (overrides: Partial<AgentDefinition> = {}): AgentDefinition {
  return {
    id: 'a',
    name: 'A',
    description: 'test agent',
    provider: 'openai',
    model: 'model-a',
    systemPrompt: 'Be brief.',
    temperature: 0.5,
    maxTokens: 100,
    expertise: [],
    ...overrides
  }
}

interface Setup {
  stub: LlmStub
  clock: ManualClock
  guard: ProviderGuard
  registry: Registry
  agents: AgentRegistry
  traffic: Array<{ agent: string } & TrafficSample>
  call(options?: { deadline?: Deadline; deltas?: string[]; maxRetries?: number; agentId?: string; timeoutCounts?: boolean }): Promise<{ text: string; usage: { inputTokens: number; outputTokens: number } }>
  metric(name: string, labels: Record<string, string>): Promise<number | undefined>
}

async function setup (t: Test, options: Partial<ProviderGuardOptions> = {}, definitions: AgentDefinition[] = [agent()]): Promise<Setup> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const agents = new AgentRegistry(definitions, { OPENAI_API_KEY: 'sk-guard-test', OPENAI_BASE_URL: stub.openaiBaseUrl })
  // The SDK loaded first, as the app does before it reports ready: no test waits on a cold import.
  await agents.preload()
  const registry = new Registry()
  const clock = new ManualClock()
  const metrics = new LlmMetrics(
    registry,
    agents.list().map((a) => ({ id: a.id, provider: a.effectiveProvider, model: a.model }))
  )
  const guard = new ProviderGuard({
    metrics,
    log: pino({ level: 'silent' }),
    maxRetries: 2,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 40,
    breakerFailures: 3,
    breakerCooldownMs: 300,
    clock,
    ...options
  })
  const traffic: Setup['traffic'] = []
  guard.onTraffic((id, sample) => traffic.push({ agent: id, ...sample }))
  return {
    stub,
    clock,
    guard,
    registry,
    agents,
    traffic,
    call (callOptions = {}) {
      const definition = agents.get(callOptions.agentId ?? 'a') as AgentDefinition
      return guard.run({
        agent: definition,
        provider: agents.providerFor(definition),
        request: { model: definition.model, systemPrompt: definition.systemPrompt, messages: [{ role: 'user', content: 'hello' }], temperature: 0.5, maxTokens: 100 },
        signal: callOptions.deadline?.signal ?? NEVER,
        ...(callOptions.deadline ? { deadlineAt: callOptions.deadline.at } : {}),
        onDelta: (text) => { callOptions.deltas?.push(text) },
        ...(callOptions.maxRetries === undefined ? {} : { maxRetries: callOptions.maxRetries }),
        ...(callOptions.timeoutCounts === undefined ? {} : { timeoutCounts: callOptions.timeoutCounts })
      })
    },
    async metric (name, labels) {
      const found = (await registry.getSingleMetric(name)?.get())?.values.find((v) =>
        Object.entries(labels).every(([key, value]) => String((v.labels as Record<string, unknown>)[key]) === value)
      )
      return found?.value
    }
  }
}

t.test('a successful call streams its deltas and is counted with its tokens', async (t) => {
  const s = await setup(t)
  s.stub.enqueue({ text: 'one two three', usage: { inputTokens: 7, outputTokens: 3 } })
  const deltas: string[] = []
  const result = await s.call({ deltas })
  t.equal(result.text, 'one two three')
  t.same(deltas.join(''), 'one two three')
  t.ok(deltas.length >= 3, 'several deltas, as they arrived')
  t.same(result.usage, { inputTokens: 7, outputTokens: 3 })
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'ok' }), 1)
  t.equal(await s.metric('smalltalk_llm_tokens_total', { provider: 'openai', model: 'model-a', kind: 'input' }), 7)
  t.equal(await s.metric('smalltalk_llm_tokens_total', { provider: 'openai', model: 'model-a', kind: 'output' }), 3)
  t.equal(await s.metric('smalltalk_llm_time_to_first_token_seconds', { provider: 'openai', model: 'model-a', le: '+Inf' }), 1)
  t.match(s.traffic, [{ agent: 'a', ok: true }])
})

t.test('retryable errors are retried with backoff until a call succeeds', async (t) => {
  const s = await setup(t)
  s.stub.failNext(2, 500)
  s.stub.setDefault({ text: 'finally' })
  const result = await s.clock.runUntil(s.call())
  t.equal(result.text, 'finally')
  t.equal(s.stub.chatRequests().length, 3, 'two failures, then the success')
  t.equal(await s.metric('smalltalk_llm_retries_total', { provider: 'openai', model: 'model-a' }), 2)
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'error' }), 2)
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'ok' }), 1)
  t.same(s.traffic.map((sample) => sample.ok), [false, false, true], 'each attempt reaches the health monitor')
})

t.test('retries stop after LLM_MAX_RETRIES and the last error is thrown', async (t) => {
  const s = await setup(t, { breakerFailures: 10 })
  s.stub.failNext(5, 503)
  const err = await s.clock.runUntil(s.call()).catch((e: unknown) => e)
  t.ok(err instanceof ProviderError && err.kind === 'server' && err.status === 503, 'the provider error')
  t.equal(s.stub.chatRequests().length, 3, 'the first attempt and 2 retries')
})

t.test('errors that a retry cannot fix are not retried', async (t) => {
  for (const [status, kind] of [
    [401, 'auth'],
    [403, 'auth'],
    [400, 'bad_request'],
    [404, 'bad_request']
  ] as const) {
    const s = await setup(t)
    s.stub.failNext(1, status)
    s.stub.setDefault({ text: 'not reached' })
    const err = await s.call().catch((e: unknown) => e)
    t.ok(err instanceof ProviderError && err.kind === kind, `${status} → ${kind}`)
    t.equal(s.stub.chatRequests().length, 1, `${status}: one request`)
  }
})

t.test('a 429 waits for its Retry-After before the retry', async (t) => {
  const s = await setup(t)
  s.stub.failNext(1, 429, { 'retry-after': '1' })
  s.stub.setDefault({ text: 'after the wait' })
  const call = s.call()
  await s.clock.waitForTimer(1000)
  t.same(s.clock.pending, [1000], 'one wait: the second the provider asked for (longer than the backoff)')
  s.clock.advance(999)
  t.equal(s.stub.chatRequests().length, 1, 'no retry before it is over')
  s.clock.advance(1)
  t.equal((await call).text, 'after the wait')
  t.equal(s.stub.chatRequests().length, 2)
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'rate_limited' }), 1)
})

t.test('a Retry-After beyond the deadline fails at once instead of waiting', async (t) => {
  const s = await setup(t)
  s.stub.failNext(1, 429, { 'retry-after': '30' })
  const started = s.clock.now()
  const err = await s.call({ deadline: deadline(2_000, NEVER, s.clock) }).catch((e: unknown) => e)
  t.ok(err instanceof ProviderError && err.kind === 'rate_limited', 'the 429 is the answer')
  t.equal(s.clock.now(), started, 'it came with the clock standing still: no wait')
  t.same(s.clock.pending, [2_000], 'nothing but the deadline itself was set')
  t.equal(s.stub.chatRequests().length, 1)
})

t.test('no retry once a delta was sent: a cut stream fails the call', async (t) => {
  const s = await setup(t)
  s.stub.enqueue({ text: 'alpha beta gamma delta epsilon', cutAfter: 2 })
  s.stub.setDefault({ text: 'must not be used' })
  const deltas: string[] = []
  const err = await s.call({ deltas }).catch((e: unknown) => e)
  t.ok(err instanceof ProviderError && err.kind === 'connection', `a connection error (${String(err)})`)
  t.equal(deltas.length, 2, 'the two deltas before the cut')
  t.equal(s.stub.chatRequests().length, 1, 'never restarted')
})

t.test('the deadline ends a call to a provider that never answers', async (t) => {
  const s = await setup(t)
  s.stub.enqueue({ hang: true })
  const call = s.call({ deadline: deadline(300, NEVER, s.clock) }).catch((e: unknown) => e)
  await s.stub.waitForRequests(1)
  s.clock.advance(300)
  t.equal(((await call) as Error).name, 'TimeoutError')
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'timeout' }), 1)
  await s.stub.idle()
  t.equal(s.stub.inFlight, 0, 'the hung request was abandoned by the client')
})

t.test('a shutdown cancels a call without counting against the provider', async (t) => {
  const s = await setup(t, { breakerFailures: 1 })
  s.stub.enqueue({ hang: true })
  const shutdown = new AbortController()
  const call = s.call({ deadline: deadline(10_000, shutdown.signal, s.clock) }).catch((e: unknown) => e)
  await s.stub.waitForRequests(1)
  shutdown.abort(new DOMException('shutting down', 'AbortError'))
  const err = await call
  t.equal((err as Error).name, 'AbortError')
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'cancelled' }), 1)
  t.equal(s.guard.breakerState(s.agents.get('a') as AgentDefinition, 'openai'), 'closed', 'the breaker did not count it')
  t.same(s.traffic, [], 'nor did the health monitor')
})

t.test("a caller's deadline that does not judge the provider counts neither in the breaker nor in the traffic; the reply's own does", async (t) => {
  const s = await setup(t, { maxRetries: 0, breakerFailures: 2 })
  const a = s.agents.get('a') as AgentDefinition
  s.stub.setDefault({ hang: true })
  const timedOut = async (timeoutCounts?: boolean) => {
    const call = s.call({ deadline: deadline(100, NEVER, s.clock), ...(timeoutCounts === undefined ? {} : { timeoutCounts }) }).catch((e: unknown) => e)
    await s.stub.waitForRequests(s.stub.requests.length + 1)
    s.clock.advance(100)
    return call
  }
  for (let i = 0; i < 3; i++) t.equal(((await timedOut(false)) as Error).name, 'TimeoutError', 'the caller gets its timeout')
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'timeout' }), 3, 'counted as timeouts in the metrics')
  t.equal(s.guard.breakerState(a, 'openai'), 'closed', 'not by the breaker')
  t.same(s.traffic, [], 'nor by the health monitor')

  for (let i = 0; i < 2; i++) t.equal(((await timedOut()) as Error).name, 'TimeoutError')
  t.equal(s.guard.breakerState(a, 'openai'), 'open', "the reply's deadline (LLM_TIMEOUT_MS) judges the provider")
  t.match(s.traffic, [{ ok: false, errorKind: 'timeout' }, { ok: false, errorKind: 'timeout' }])
})

t.test('the breaker opens after consecutive failures, probes after its cool-down, and closes on success', async (t) => {
  const s = await setup(t, { maxRetries: 0, breakerFailures: 3, breakerCooldownMs: 300 })
  const a = s.agents.get('a') as AgentDefinition
  s.stub.failNext(3, 500)
  for (let i = 0; i < 3; i++) await t.rejects(s.call(), ProviderError)
  t.equal(s.guard.breakerState(a, 'openai'), 'open')
  t.equal(await s.metric('smalltalk_llm_circuit_state', { provider: 'openai', model: 'model-a', state: 'open' }), 1)
  t.equal(await s.metric('smalltalk_llm_circuit_state', { provider: 'openai', model: 'model-a', state: 'closed' }), 0)

  const refused = await s.call().catch((e: unknown) => e)
  t.ok(refused instanceof CircuitOpenError, 'refused while open')
  t.ok((refused as CircuitOpenError).retryAfterMs > 0 && (refused as CircuitOpenError).retryAfterMs <= 1000)
  t.equal(s.stub.chatRequests().length, 3, 'the refused call never reached the provider')
  t.equal(await s.metric('smalltalk_llm_requests_total', { provider: 'openai', model: 'model-a', outcome: 'circuit_open' }), 1)

  s.clock.advance(299)
  t.ok((await s.call().catch((e: unknown) => e)) instanceof CircuitOpenError, 'still refused 1 ms before the cool-down ends')
  s.clock.advance(1)
  // Half-open: the probe call goes through; a concurrent call is refused rather than queued behind it.
  let answer!: () => void
  s.stub.enqueue({ text: 'recovered', until: new Promise<void>((resolve) => { answer = resolve }) })
  const probe = s.call()
  await s.stub.waitForRequests(4)
  t.equal(s.guard.breakerState(a, 'openai'), 'half_open')
  t.ok((await s.call().catch((e: unknown) => e)) instanceof CircuitOpenError, 'a second call during the probe is refused')
  answer()
  t.equal((await probe).text, 'recovered')
  t.equal(s.guard.breakerState(a, 'openai'), 'closed')
  t.equal(await s.metric('smalltalk_llm_circuit_state', { provider: 'openai', model: 'model-a', state: 'closed' }), 1)
})

t.test('a failed half-open probe opens the breaker again', async (t) => {
  const s = await setup(t, { maxRetries: 0, breakerFailures: 2, breakerCooldownMs: 200 })
  const a = s.agents.get('a') as AgentDefinition
  s.stub.failNext(3, 502)
  for (let i = 0; i < 2; i++) await t.rejects(s.call(), ProviderError)
  s.clock.advance(200)
  await t.rejects(s.call(), ProviderError, 'the probe fails')
  t.equal(s.guard.breakerState(a, 'openai'), 'open')
  t.ok((await s.call().catch((e: unknown) => e)) instanceof CircuitOpenError, 'refused again')
  s.clock.advance(199)
  t.ok((await s.call().catch((e: unknown) => e)) instanceof CircuitOpenError, 'for a whole new cool-down')
  s.clock.advance(1)
  s.stub.setDefault({ text: 'back' })
  t.equal((await s.call()).text, 'back')
  t.equal(s.guard.breakerState(a, 'openai'), 'closed')
})

t.test('rejected requests (400) do not open the breaker; breakers are per provider and model', async (t) => {
  const s = await setup(t, { maxRetries: 0, breakerFailures: 2 }, [agent(), agent({ id: 'b', model: 'model-b' })])
  s.stub.enqueue({ status: 400 }, { times: 3, when: (r) => r.model === 'model-a' })
  for (let i = 0; i < 3; i++) await t.rejects(s.call(), ProviderError)
  t.equal(s.guard.breakerState(s.agents.get('a') as AgentDefinition, 'openai'), 'closed')

  s.stub.enqueue({ status: 500 }, { times: 2, when: (r) => r.model === 'model-a' })
  for (let i = 0; i < 2; i++) await t.rejects(s.call(), ProviderError)
  t.equal(s.guard.breakerState(s.agents.get('a') as AgentDefinition, 'openai'), 'open')
  s.stub.setDefault({ text: 'b answers' })
  t.equal((await s.call({ agentId: 'b' })).text, 'b answers', "model-b's breaker is its own")
})

t.test('a deadline aborts with a TimeoutError, follows its parent, and can be released early', async (t) => {
  const clock = new ManualClock()
  const timed = deadline(50, NEVER, clock)
  t.equal(timed.at, clock.now() + 50)
  clock.advance(49)
  t.notOk(timed.signal.aborted, 'not before its time')
  clock.advance(1)
  t.equal(timed.signal.reason?.name, 'TimeoutError', 'aborted at the deadline')

  const shutdown = new AbortController()
  const child = deadline(10_000, shutdown.signal, clock)
  shutdown.abort(new DOMException('stopping', 'AbortError'))
  t.equal(child.signal.reason?.name, 'AbortError', "the parent's reason")
  child.dispose()

  const parent = new AbortController()
  const released = deadline(50, parent.signal, clock)
  released.dispose()
  t.same(clock.pending, [], 'its timer is gone')
  clock.advance(120)
  parent.abort()
  t.notOk(released.signal.aborted, 'a released deadline neither times out nor follows its parent')
})
