import promClient, { type Registry } from 'prom-client'

/** Metrics of the OpenAI-compatible API; the provider calls under it count in the LLM metrics. */
export class OpenAiMetrics {
  readonly completions: promClient.Counter<'mode' | 'stream' | 'outcome'>

  constructor (registry: Registry) {
    this.completions = new promClient.Counter({
      name: 'smalltalk_openai_completions_total',
      help: 'POST /v1/chat/completions by mode (stateless, store, continue), stream (true, false) and outcome (ok, error)',
      labelNames: ['mode', 'stream', 'outcome'],
      registers: [registry]
    })
  }
}
