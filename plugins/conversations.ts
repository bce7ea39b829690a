import fp from 'fastify-plugin'
import type { Lifecycle } from '../src/lifecycle.js'
import { LlmRouter } from '../src/agents/llm-router.js'
import { EventFeed } from '../src/events/event-feed.js'
import { ConversationService } from '../src/messages/conversation.js'
import { IdempotencyKeys } from '../src/messages/idempotency.js'
import { MessageHistory } from '../src/messages/message-store.js'
import { resolveMode } from '../src/groups/group-settings.js'
import { ConversationMetrics } from '../src/metrics/conversation-metrics.js'
import { GroupMetrics } from '../src/metrics/group-metrics.js'
import { CleanupJob } from '../src/sessions/cleanup.js'
import { SessionStore } from '../src/sessions/session-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    sessions: SessionStore
    history: MessageHistory
    conversations: ConversationService
    /** The expired-session cleanup (it also runs by itself every SESSION_CLEANUP_INTERVAL). */
    cleanup: CleanupJob
    /** Committed events, live, for the SSE event stream. */
    eventFeed: EventFeed
  }
}

export interface ConversationsPluginOptions {
  lifecycle: Lifecycle
}

/** The conversation domain (sessions, history, replies) wired to the pool, the cache and the agents. */
export default fp(
  async function conversations (fastify, opts: ConversationsPluginOptions) {
    const config = fastify.config
    const pool = fastify.pg.pool
    const agents = fastify.agents
    const metrics: ConversationMetrics = new ConversationMetrics(
      fastify.metricsRegistry,
      // Read at scrape time only, after `sessions` below exists.
      (): Promise<number> => sessions.countActive(),
      config.HEALTH_CHECK_TIMEOUT_MS
    )
    const sessions: SessionStore = new SessionStore({
      pool,
      cache: fastify.cache,
      metrics,
      defaultTtlSeconds: config.SESSION_TTL,
      unknownAgents: (ids) => ids.filter((id) => !agents.has(id)),
      defaultAgents: () => agents.defaultAgentIds(),
      resolveMode: (request, current) => resolveMode(request, {
        maxTurns: config.GROUP_MAX_TURNS,
        presets: fastify.groupPresets,
        isAgent: (id) => agents.has(id),
        defaultAgents: () => agents.defaultAgentIds()
      }, current)
    })
    const history = new MessageHistory({ cache: fastify.cache, metrics, cacheSize: Math.max(config.CONTEXT_MESSAGES, 100), pageCacheBytes: config.HISTORY_PAGE_CACHE_MB * 1_048_576 })
    // A claim is abandoned only after its reply (or its whole round) must have ended.
    const idempotency = new IdempotencyKeys(pool, Math.max(config.LLM_TIMEOUT_MS, config.GROUP_ROUND_TIMEOUT_MS) + 10_000)
    const conversations = new ConversationService({
      pool,
      sessions,
      history,
      idempotency,
      agents,
      guard: fastify.providerGuard,
      router:
        config.ROUTER === 'llm' && config.ROUTER_AGENT
          ? new LlmRouter({
            agents,
            guard: fastify.providerGuard,
            metrics: fastify.llmMetrics,
            log: fastify.log,
            routerAgentId: config.ROUTER_AGENT,
            timeoutMs: config.ROUTER_TIMEOUT_MS,
            shutdownSignal: opts.lifecycle.replySignal
          })
          : undefined,
      metrics,
      llmMetrics: fastify.llmMetrics,
      log: fastify.log,
      llmTimeoutMs: config.LLM_TIMEOUT_MS,
      contextMessages: config.CONTEXT_MESSAGES,
      metadataMaxBytes: config.METADATA_MAX_BYTES,
      shutdownSignal: opts.lifecycle.replySignal,
      shuttingDown: () => opts.lifecycle.phase === 'stopping',
      groupMetrics: new GroupMetrics(fastify.metricsRegistry),
      groupRoundTimeoutMs: config.GROUP_ROUND_TIMEOUT_MS,
      groupManagerTimeoutMs: config.GROUP_MANAGER_TIMEOUT_MS,
      tools: fastify.tools,
      toolMetrics: fastify.toolMetrics
    })
    fastify.decorate('sessions', sessions)
    fastify.decorate('history', history)
    fastify.decorate('conversations', conversations)

    const cleanup = new CleanupJob(
      {
        pool,
        sessions,
        history,
        idempotency,
        metrics,
        log: fastify.log,
        purgeAfterSeconds: config.SESSION_PURGE_AFTER,
        eventRetentionDays: config.EVENT_RETENTION_DAYS
      },
      config.SESSION_CLEANUP_INTERVAL
    )
    fastify.decorate('cleanup', cleanup)
    fastify.addHook('onReady', async () => cleanup.start())
    fastify.addHook('onClose', async () => cleanup.stop())

    const eventFeed = new EventFeed(fastify.databaseUrl, pool, fastify.log)
    await eventFeed.start()
    fastify.decorate('eventFeed', eventFeed)
    // onClose hooks run in reverse order of registration: this one before the pool closes.
    fastify.addHook('onClose', async () => eventFeed.stop())
  },
  { name: 'conversations', dependencies: ['config', 'postgres', 'redis', 'metrics', 'agents', 'tools'] }
)
