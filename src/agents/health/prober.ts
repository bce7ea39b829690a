import type { Clock } from '../../clock.js'
import { ProviderError, type ProbeMode, type Provider } from '../../providers/provider.js'
import { LazyProvider } from '../../providers/index.js'
import type { Observation } from './hysteresis.js'

const MAX_ERROR_CHARS = 500

/** One distinct provider endpoint and model, and the agents that share its probe. */
export interface ProbeTarget {
  provider: Provider
  providerName: string
  model: string
  agents: string[]
}

export interface ProbeResult {
  /** Undefined when the probe was cut short by the stop signal: no observation at all. */
  observation: Observation | undefined
  latencyMs: number
  error: string | null
}

export interface ProberOptions {
  /** AGENT_HEALTH_PROBE: list the models (free) or a 1-token completion. */
  mode: ProbeMode
  /** A probe that takes longer has failed. */
  timeoutMs: number
  /** A probe slower than this is a warning. */
  slowMs: number
  /** Values removed from error texts (the provider keys). */
  secrets: readonly string[]
  /** The monitor's stop: aborts a probe in flight, which then yields no observation. */
  stopSignal: AbortSignal
  /** Times the probes (the timeout, and the latency that makes a probe slow). */
  clock: Clock
}

class ProbeTimeout extends Error {
  override readonly name = 'ProbeTimeout'
}

/** Probes provider+model targets, each bounded by the probe timeout, and describes what they said. */
export class Prober {
  constructor (private readonly options: ProberOptions) {}

  /** One probe, bounded by the probe timeout even if the provider ignores its signal. */
  async probe (target: ProbeTarget): Promise<ProbeResult> {
    // The SDK is imported on an agent's first call: that one-off load (seconds on a busy machine) is
    // not the provider's latency, so it happens before the clock starts.
    let provider: Provider = target.provider
    if (provider instanceof LazyProvider) {
      try {
        provider = await provider.adapter()
      } catch (err) {
        const error = this.describe(err)
        return { observation: { kind: 'failure', count: 1, reason: `probe failed: ${error}`, source: 'probe' }, latencyMs: 0, error }
      }
    }
    const { timeoutMs, slowMs, stopSignal: stop, clock } = this.options
    const controller = new AbortController()
    const onStop = () => controller.abort(stop.reason)
    stop.addEventListener('abort', onStop, { once: true })
    const cancelTimeout = clock.setTimeout(() => controller.abort(new ProbeTimeout(`no answer within ${timeoutMs} ms`)), timeoutMs)
    const aborted = new Promise<never>((_resolve, reject) => {
      const fail = () => reject(controller.signal.reason)
      if (controller.signal.aborted) fail()
      else controller.signal.addEventListener('abort', fail, { once: true })
    })
    aborted.catch(() => undefined)
    const started = clock.now()
    try {
      if (stop.aborted) throw stop.reason
      await Promise.race([provider.probe({ model: target.model, mode: this.options.mode, signal: controller.signal }), aborted])
      const latencyMs = clock.now() - started
      if (latencyMs >= slowMs) {
        return { observation: { kind: 'warn', reason: `probe slow: ${latencyMs} ms (limit ${slowMs} ms)`, source: 'probe' }, latencyMs, error: null }
      }
      return { observation: { kind: 'success', count: 1, reason: `probe answered in ${latencyMs} ms`, source: 'probe' }, latencyMs, error: null }
    } catch (err) {
      const latencyMs = clock.now() - started
      if (stop.aborted) return { observation: undefined, latencyMs, error: null }
      const error = this.describe(controller.signal.aborted ? controller.signal.reason : err)
      const kind = err instanceof ProviderError && err.kind === 'rate_limited' ? 'warn' : 'failure'
      const observation: Observation =
        kind === 'warn' ? { kind, reason: `probe ${error}`, source: 'probe' } : { kind, count: 1, reason: `probe failed: ${error}`, source: 'probe' }
      return { observation, latencyMs, error }
    } finally {
      cancelTimeout()
      stop.removeEventListener('abort', onStop)
    }
  }

  private describe (err: unknown): string {
    const { secrets } = this.options
    if (err instanceof ProbeTimeout) return `timeout: ${err.message}`
    if (err instanceof ProviderError) return redactSecrets(`${err.kind}: ${err.message}`, secrets)
    return redactSecrets(`error: ${(err as Error | undefined)?.message ?? String(err)}`, secrets)
  }
}

/** Removes the configured keys and anything shaped like a credential from an error text. */
export function redactSecrets (text: string, secrets: readonly string[] = []): string {
  let out = text
  for (const secret of secrets) if (secret.length >= 4) out = out.split(secret).join('[redacted]')
  out = out
    .replace(/\b(?:sk|pk|rk)-[A-Za-z0-9_-]{8,}/g, '[redacted]')
    .replace(/\bAIza[0-9A-Za-z_-]{20,}/g, '[redacted]')
    .replace(/([?&](?:key|api[_-]?key|access_token)=)[^&\s"']+/gi, '$1[redacted]')
    .replace(/(bearer\s+)[^\s"',]+/gi, '$1[redacted]')
    .replace(/(\/\/[^/\s:@]+:)[^@\s/]+@/g, '$1[redacted]@')
  return out.length > MAX_ERROR_CHARS ? out.slice(0, MAX_ERROR_CHARS - 1) + '…' : out
}
