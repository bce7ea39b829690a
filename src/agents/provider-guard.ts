import { CircuitState, ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, type CircuitBreakerPolicy, type IBackoff } from 'cockatiel'
import type { FastifyBaseLogger } from 'fastify'
import { sleep, systemClock, type Clock } from '../clock.js'
import type { BreakerState, LlmMetrics, LlmOutcome } from '../metrics/llm-metrics.js'
import { ProviderError, type ChatRequest, type Provider, type ToolCallRequest } from '../providers/provider.js'
import type { AgentDefinition } from './agent.js'

export interface ProviderGuardOptions {
  metrics: LlmMetrics
  log: FastifyBaseLogger
  /** Retries after the first attempt, for retryable errors before the first delta (LLM_MAX_RETRIES). */
  maxRetries: number
  /** First backoff delay; it doubles per retry, with jitter, up to `retryMaxDelayMs` (LLM_RETRY_BASE_MS). */
  retryBaseDelayMs: number
  retryMaxDelayMs: number
  /** Consecutive failures of one provider+model that open its breaker (LLM_BREAKER_FAILURES). */
  breakerFailures: number
  /** How long an open breaker refuses calls before one probe call is let through (LLM_BREAKER_COOLDOWN_MS). */
  breakerCooldownMs: number
  /** Times the breakers' cool-downs, the backoff waits and the deadlines (default: the system clock). */
  clock?: Clock
}

/** One provider call's result, for passive health learning. */
export interface TrafficSample {
  ok: boolean
  latencyMs: number
  errorKind?: string
  error?: string
}

export type TrafficListener = (agentId: string, sample: TrafficSample) => void

/** The breaker of the agent's provider+model is open (or probing): the call was not made. */
export class CircuitOpenError extends Error {
  override readonly name = 'CircuitOpenError'
  constructor (
    readonly provider: string,
    readonly model: string,
    /** When the breaker lets a probe call through. */
    readonly retryAfterMs: number
  ) {
    super(`The circuit breaker for ${provider} model ${model} is open after repeated failures`)
  }
}

export interface GuardedCall {
  agent: AgentDefinition
  provider: Provider
  request: Omit<ChatRequest, 'signal'>
  /** The reply's deadline and the shutdown: bounds every attempt and every backoff. */
  signal: AbortSignal
  /** When the signal's deadline passes (in the guard's clock), to skip a retry that could not finish in time. */
  deadlineAt?: number
  /** Receives each delta as it arrives (the SSE client's back-pressure is awaited). */
  onDelta(text: string): Promise<void> | void
  /** Attempts after the first (default: the guard's maxRetries); the LLM router uses 0. */
  maxRetries?: number
  /**
   * Whether the signal's deadline passing counts against the provider, in its breaker and in the
   * health traffic. Default true: the reply's LLM_TIMEOUT_MS is the provider's time to answer. The LLM
   * router passes false: its short ROUTER_TIMEOUT_MS is how long routing may take, and says nothing of
   * a model that other agents reply with. An abort for any other reason (a shutdown, a dropped
   * reply) never counts.
   */
  timeoutCounts?: boolean
}

export interface GuardedResult {
  text: string
  usage: { inputTokens: number; outputTokens: number }
  /** The tool calls the model asked for at the end of this step (empty: the text is its answer). */
  toolCalls: ToolCallRequest[]
}

interface Breaker {
  policy: CircuitBreakerPolicy
  provider: string
  model: string
  openedAt: number
}

/**
 * Runs provider calls with the resilience of DESIGN section 4 and 8: a circuit breaker per
 * provider+model (cockatiel's), and retries with exponential backoff and jitter on retryable errors
 * (connection, 5xx, 429 honouring Retry-After, the client's own timeout), only while no delta has
 * reached the client: once text was sent, a failure ends the reply instead of restarting it.
 *
 * The retry loop is ours rather than cockatiel's retry policy because its backoff sleep cannot be
 * cancelled: a reply past its deadline, or a server shutting down, must stop waiting at once.
 * Every attempt is counted in the metrics and reported to the traffic listener (the health monitor).
 */
export class ProviderGuard {
  private readonly breakers = new Map<string, Breaker>()
  private readonly listeners: TrafficListener[] = []
  private readonly clock: Clock

  constructor (private readonly options: ProviderGuardOptions) {
    this.clock = options.clock ?? systemClock
  }

  /** Registers a listener told of every provider call's outcome (the health monitor's passive learning). */
  onTraffic (listener: TrafficListener): void {
    this.listeners.push(listener)
  }

  /** The breaker state of an agent's provider+model (closed until it was used). */
  breakerState (agent: AgentDefinition, providerName: string): BreakerState {
    const breaker = this.breakers.get(breakerKey(agent, providerName))
    return breaker ? toBreakerState(breaker.policy.state) : 'closed'
  }

  async run (call: GuardedCall): Promise<GuardedResult> {
    const { agent, provider, signal } = call
    const maxRetries = call.maxRetries ?? this.options.maxRetries
    const breaker = this.breakerFor(agent, provider.name)
    let backoff: IBackoff<unknown> | undefined
    for (let attempt = 0; ; attempt++) {
      signal.throwIfAborted()
      let sentDelta = false
      try {
        return await this.attempt(breaker, call, () => (sentDelta = true))
      } catch (err) {
        if (sentDelta || signal.aborted || attempt >= maxRetries || !isRetryable(err)) throw err
        backoff = backoff ? backoff.next(undefined) : this.backoff().next()
        const retryAfter = err instanceof ProviderError ? err.retryAfterMs ?? 0 : 0
        const delay = Math.max(backoff.duration, retryAfter)
        // A wait that would outlast the reply's deadline is not worth starting: fail now, so that a
        // fallback agent still has time to answer.
        if (call.deadlineAt !== undefined && this.clock.now() + delay >= call.deadlineAt) throw err
        this.options.metrics.retries.inc({ provider: provider.name, model: agent.model })
        this.options.log.info({ agent: agent.id, provider: provider.name, attempt: attempt + 1, delayMs: Math.round(delay), err: describe(err) }, 'retrying LLM call')
        await sleep(this.clock, delay, signal)
      }
    }
  }

  private async attempt (breaker: Breaker, call: GuardedCall, onFirstDelta: () => void): Promise<GuardedResult> {
    const { agent, provider, signal } = call
    const labels = { provider: provider.name, model: agent.model }
    // cockatiel queues calls behind a half-open probe; a reply must not wait on someone else's probe.
    // The cool-down is timed here, on the guard's clock (cockatiel's own reads Date.now()).
    if (breaker.policy.state === CircuitState.Open || breaker.policy.state === CircuitState.HalfOpen) {
      const waitMs = breaker.openedAt + this.options.breakerCooldownMs - this.clock.now()
      if (breaker.policy.state === CircuitState.HalfOpen || waitMs > 0) {
        this.options.metrics.requests.inc({ ...labels, outcome: 'circuit_open' })
        throw new CircuitOpenError(provider.name, agent.model, Math.max(waitMs, 1000))
      }
    }
    const started = performance.now()
    try {
      const result = await breaker.policy.execute(async () => {
        let text = ''
        let usage = { inputTokens: 0, outputTokens: 0 }
        let toolCalls: ToolCallRequest[] = []
        try {
          for await (const chunk of provider.stream({ ...call.request, signal })) {
            if (chunk.type === 'delta') {
              if (text === '' && chunk.text !== '') {
                // A whole answer (stream: false) has no first token to time: its latency is the duration.
                if (call.request.stream !== false) this.options.metrics.timeToFirstToken.observe(labels, (performance.now() - started) / 1000)
                onFirstDelta()
              }
              text += chunk.text
              await call.onDelta(chunk.text)
            } else if (chunk.type === 'tool_calls') {
              toolCalls = chunk.calls
            } else {
              usage = { inputTokens: chunk.inputTokens, outputTokens: chunk.outputTokens }
            }
            // A provider that ignores the signal must not outlive the deadline.
            signal.throwIfAborted()
          }
        } catch (err) {
          throw stoppedByCaller(call) ? new CallerStopped(err) : err
        }
        return { text, usage, toolCalls }
      })
      const seconds = (performance.now() - started) / 1000
      this.options.metrics.requests.inc({ ...labels, outcome: 'ok' })
      this.options.metrics.duration.observe(labels, seconds)
      this.options.metrics.tokens.inc({ ...labels, kind: 'input' }, result.usage.inputTokens)
      this.options.metrics.tokens.inc({ ...labels, kind: 'output' }, result.usage.outputTokens)
      this.report(agent.id, { ok: true, latencyMs: Math.round(seconds * 1000) })
      return result
    } catch (thrown) {
      const byCaller = thrown instanceof CallerStopped
      const err = byCaller ? thrown.cause : thrown
      const outcome = outcomeOf(err, signal)
      this.options.metrics.requests.inc({ ...labels, outcome })
      if (!byCaller && outcome !== 'cancelled') {
        this.report(agent.id, {
          ok: false,
          latencyMs: Math.round(performance.now() - started),
          errorKind: err instanceof ProviderError ? err.kind : outcome,
          error: describe(err)
        })
      }
      throw err
    }
  }

  private breakerFor (agent: AgentDefinition, providerName: string): Breaker {
    const key = breakerKey(agent, providerName)
    const breaker = this.breakers.get(key)
    if (breaker) return breaker
    const policy = circuitBreaker(handleWhen(countsAgainstProvider), {
      // An open breaker is only called once attempt() has seen the cool-down pass.
      halfOpenAfter: 0,
      breaker: new ConsecutiveBreaker(this.options.breakerFailures)
    })
    const created: Breaker = { policy, provider: providerName, model: agent.model, openedAt: 0 }
    policy.onBreak(() => {
      created.openedAt = this.clock.now()
      this.options.log.warn({ provider: providerName, model: agent.model, cooldownMs: this.options.breakerCooldownMs }, 'LLM circuit breaker opened')
    })
    policy.onReset(() => this.options.log.info({ provider: providerName, model: agent.model }, 'LLM circuit breaker closed'))
    policy.onStateChange((state) => this.options.metrics.setBreakerState(providerName, agent.model, toBreakerState(state)))
    this.breakers.set(key, created)
    return created
  }

  private backoff (): ExponentialBackoff<unknown> {
    return new ExponentialBackoff({ initialDelay: this.options.retryBaseDelayMs, maxDelay: this.options.retryMaxDelayMs })
  }

  private report (agentId: string, sample: TrafficSample): void {
    for (const listener of this.listeners) {
      try {
        listener(agentId, sample)
      } catch (err) {
        this.options.log.error({ err }, 'traffic listener failed')
      }
    }
  }
}

function breakerKey (agent: AgentDefinition, providerName: string): string {
  return `${providerName}\u0000${agent.baseUrl ?? ''}\u0000${agent.model}`
}

function toBreakerState (state: CircuitState): BreakerState {
  if (state === CircuitState.Closed) return 'closed'
  if (state === CircuitState.HalfOpen) return 'half_open'
  return 'open'
}

/** Errors that say something about the provider's health: not a bad request, not our own shutdown. */
function countsAgainstProvider (err: Error): boolean {
  if (err instanceof ProviderError) return err.kind !== 'bad_request'
  // The reply's deadline passed while the provider was answering.
  return err.name === 'TimeoutError'
}

/**
 * Whether the caller, not the provider, ended the call: its signal aborted for a shutdown or a
 * dropped reply, or at a deadline that does not judge the provider (GuardedCall.timeoutCounts). The
 * SDK may have turned that abort into any error; the signal says what happened.
 */
function stoppedByCaller (call: GuardedCall): boolean {
  const { signal } = call
  if (!signal.aborted) return false
  return call.timeoutCounts === false || (signal.reason as Error | undefined)?.name !== 'TimeoutError'
}

/**
 * A failure of the caller's making, wrapped so that the breaker's filter does not handle it: cockatiel
 * passes such an error through without counting it (a half-open probe that ends so closes the
 * breaker with its failure count kept, so the next failure opens it again at once).
 */
class CallerStopped extends Error {
  override readonly name = 'CallerStopped'
  constructor (override readonly cause: unknown) {
    super('the caller stopped the call', { cause })
  }
}

function isRetryable (err: unknown): boolean {
  return err instanceof ProviderError && err.retryable
}

function outcomeOf (err: unknown, signal: AbortSignal): LlmOutcome {
  // The caller's signal ended the call, whatever error the SDK made of the abort.
  if (signal.aborted) return (signal.reason as Error | undefined)?.name === 'TimeoutError' ? 'timeout' : 'cancelled'
  if (err instanceof ProviderError) {
    if (err.kind === 'rate_limited') return 'rate_limited'
    if (err.kind === 'timeout') return 'timeout'
    return 'error'
  }
  if ((err as Error | undefined)?.name === 'TimeoutError') return 'timeout'
  if ((err as Error | undefined)?.name === 'AbortError') return 'cancelled'
  return 'error'
}

export interface Deadline {
  /** Aborts with a TimeoutError at the deadline, or with the parent's reason when it aborts first. */
  signal: AbortSignal
  /** The deadline, in its clock's time. */
  at: number
  /** Aborts the work now, with `reason` (a caller that no longer wants it). */
  abort(reason: unknown): void
  /** Releases the timer and the parent's listener: call it when the work is done. */
  dispose(): void
}

/**
 * A deadline `ms` from now under `parent` (the shutdown signal). Unlike AbortSignal.timeout plus AbortSignal.any, it
 * is released as soon as the reply is done: a busy replica would otherwise hold one live timer and
 * one listener on the shutdown signal per reply of the last LLM_TIMEOUT_MS (60 s by default).
 */
export function deadline (ms: number, parent: AbortSignal, clock: Clock = systemClock): Deadline {
  const controller = new AbortController()
  const { signal } = controller
  const at = clock.now() + ms
  const onParentAbort = () => controller.abort(parent.reason)
  const cancel = clock.setTimeout(() => controller.abort(new DOMException(`The deadline of ${ms} ms passed`, 'TimeoutError')), ms)
  if (parent.aborted) onParentAbort()
  else parent.addEventListener('abort', onParentAbort, { once: true })
  return {
    signal,
    at,
    abort (reason) {
      controller.abort(reason)
    },
    dispose () {
      cancel()
      parent.removeEventListener('abort', onParentAbort)
    }
  }
}

function describe (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
