import fp from 'fastify-plugin'
import type { Lifecycle } from '../src/lifecycle.js'
import { ReplyProducer } from '../src/messages/reply-producer.js'
import { OpenAiCompletions } from '../src/openai/completions.js'
import { OpenAiMetrics } from '../src/openai/metrics.js'
import { ModelResolver } from '../src/openai/models.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The OpenAI-compatible API (DESIGN section 10): the models it lists and the chat completion. */
    openai: { models: ModelResolver; completions: OpenAiCompletions }
  }
}

export interface OpenAiPluginOptions {
  lifecycle: Lifecycle
}

/** The OpenAI-compatible API's domain, wired to the agents and the conversation path. */
export default fp(
  async function openai (fastify, opts: OpenAiPluginOptions) {
    const config = fastify.config
    const shutdownSignal = opts.lifecycle.replySignal
    const producer = new ReplyProducer({
      agents: fastify.agents,
      guard: fastify.providerGuard,
      llmMetrics: fastify.llmMetrics,
      log: fastify.log,
      llmTimeoutMs: config.LLM_TIMEOUT_MS,
      shutdownSignal,
      tools: fastify.tools,
      toolMetrics: fastify.toolMetrics
    })
    const models = new ModelResolver(fastify.agents, Math.floor(fastify.sessions.now() / 1000), fastify.groupPresets)
    const completions = new OpenAiCompletions({
      agents: fastify.agents,
      models,
      producer,
      conversations: fastify.conversations,
      sessions: fastify.sessions,
      metrics: new OpenAiMetrics(fastify.metricsRegistry),
      log: fastify.log,
      llmTimeoutMs: config.LLM_TIMEOUT_MS,
      maxMessageChars: config.MAX_MESSAGE_CHARS,
      metadataMaxBytes: config.METADATA_MAX_BYTES,
      shutdownSignal
    })
    fastify.decorate('openai', { models, completions })
  },
  { name: 'openai', dependencies: ['config', 'metrics', 'agents', 'conversations'] }
)
