import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import promClient from 'prom-client'
import { RedisCache } from '../src/cache/redis-cache.js'
import { systemClock, type Clock } from '../src/clock.js'
import { DomainError } from '../src/domain-errors.js'
import { counterStore } from '../src/limits/counter-store.js'
import { RedisGate } from '../src/limits/redis-gate.js'
import { StreamSlots } from '../src/limits/stream-slots.js'
import { LimitTable, loadTenantOverrides } from '../src/limits/tenant-limits.js'
import { DailyTokens } from '../src/limits/daily-tokens.js'
import { secondsToUtcMidnight, tokensTodayByTenant } from '../src/limits/usage.js'
import { OPEN_TENANT, parseApiKeys } from './auth.js'
import { ErrorBody } from '../routes/sessions/schemas.js'

type Guard = (request: FastifyRequest, reply: FastifyReply) => Promise<void>

export interface Limits {
  table: LimitTable
  /**
   * preHandler of every route that posts a message (a group round is one message): the tenant's
   * message rate and token budget, then, for a request that asks for `text/event-stream`, a stream
   * slot. A refused request gets a 429 before its handler runs: nothing is stored, no provider called.
   */
  messageGuard: Guard
  /** preHandler of a streaming route: one of the tenant's open streams, released when the response closes. */
  streamGuard: Guard
  /** The stream slot of streamGuard, for a route that decides to stream from its body (`stream: true`). */
  holdStream: Guard
}

declare module 'fastify' {
  interface FastifyInstance {
    limits: Limits
  }
}

export interface LimitsPluginOptions {
  clock?: Clock | undefined
}

/** What a client is told to wait when all its streams are taken: one of them may end at any time. */
const STREAM_RETRY_AFTER_SECONDS = 5
const MINUTE_MS = 60_000
/** A scrape never waits longer than this for the day's usage: it shows the last figures instead. */
const USAGE_SCRAPE_DEADLINE_MS = 2000

/** An SSE answer: asked for with Accept (the native API) or with `stream: true` (the OpenAI-compatible API). */
const wantsStream = (request: FastifyRequest) => /text\/event-stream/i.test(request.headers.accept ?? '') || (request.body as { stream?: unknown } | undefined)?.stream === true

function rateHeaders (reply: FastifyReply, limit: number, remaining: number, resetSeconds: number): void {
  reply.header('ratelimit-limit', limit).header('ratelimit-remaining', remaining).header('ratelimit-reset', resetSeconds)
}

/**
 * Today's tokens and the daily budget of every tenant the configuration names (API_KEYS, or the
 * open mode's one tenant, and TENANTS_FILE): a bounded label set, never taken from requests. Read
 * from PostgreSQL at scrape time, so every replica shows the same shared figures.
 */
function tenantUsageGauges (fastify: FastifyInstance, table: LimitTable, clock: Clock): void {
  const keyed = [...new Set(parseApiKeys(fastify.config.API_KEYS).values())]
  const tenants = [...new Set([...(keyed.length > 0 ? keyed : [OPEN_TENANT]), ...table.namedTenants])]
  const pool = fastify.pg.pool
  let last = new Map<string, number>()
  new promClient.Gauge({
    name: 'smalltalk_tenant_token_budget',
    help: 'Daily token budget of each configured tenant (TOKEN_BUDGET_PER_DAY or its TENANTS_FILE override; 0: unlimited)',
    labelNames: ['tenant'],
    registers: [fastify.metricsRegistry],
    collect () {
      for (const tenant of tenants) this.set({ tenant }, table.of(tenant).tokenBudgetPerDay)
    }
  })
  new promClient.Gauge({
    name: 'smalltalk_tenant_tokens_today',
    help: 'Input + output tokens of each configured tenant\'s replies in the current UTC day (from PostgreSQL, shared by the replicas)',
    labelNames: ['tenant'],
    registers: [fastify.metricsRegistry],
    async collect () {
      let cancel = () => {}
      const deadline = new Promise<undefined>((resolve) => { cancel = clock.setTimeout(() => resolve(undefined), USAGE_SCRAPE_DEADLINE_MS) })
      const fresh = await Promise.race([tokensTodayByTenant(pool, tenants, clock.now()).catch(() => undefined), deadline])
      cancel()
      if (fresh) last = fresh
      for (const tenant of tenants) this.set({ tenant }, last.get(tenant) ?? 0)
    }
  })
}

/**
 * Limits per tenant (DESIGN section 12), registered inside the /v1 scope after authentication: the
 * request rate on every /v1 route (@fastify/rate-limit), the message rate and the daily token budget
 * on message posts, and open streams. Counts are shared exactly across replicas in Redis; while
 * Redis is unreachable each replica enforces its share (src/limits/redis-gate.ts).
 */
export default fp(
  async function limits (fastify, opts: LimitsPluginOptions) {
    const config = fastify.config
    const clock = opts.clock ?? systemClock
    const overrides = config.TENANTS_FILE ? await loadTenantOverrides(config.TENANTS_FILE) : new Map()
    const table = new LimitTable({
      rateLimitPerMinute: config.RATE_LIMIT_PER_MINUTE,
      messageRatePerMinute: config.MESSAGE_RATE_PER_MINUTE,
      maxStreams: config.MAX_STREAMS_PER_TENANT,
      tokenBudgetPerDay: config.TOKEN_BUDGET_PER_DAY
    }, overrides)
    const cache = fastify.cache
    const gate = new RedisGate(cache instanceof RedisCache ? cache.client : undefined, cache, clock, fastify.log)
    const replicas = config.LIMIT_REPLICAS
    const refusals = new promClient.Counter({
      name: 'smalltalk_limit_refusals_total',
      help: 'Requests refused with a 429 by a tenant limit: rate (requests), messages, streams or tokens (daily budget)',
      labelNames: ['limit'],
      registers: [fastify.metricsRegistry]
    })
    for (const limit of ['rate', 'messages', 'streams', 'tokens']) refusals.inc({ limit }, 0)
    tenantUsageGauges(fastify, table, clock)

    // Every /v1 route may answer 429 (a tenant's request rate): each one documents it.
    fastify.addHook('onRoute', (route) => {
      const responses = route.schema?.response as Record<string, unknown> | undefined
      if (responses && !('429' in responses)) responses['429'] = ErrorBody
    })

    await fastify.register(rateLimit, {
      global: table.anyLimits('rateLimitPerMinute'),
      hook: 'onRequest',
      enableDraftSpec: true,
      timeWindow: MINUTE_MS,
      store: counterStore({ gate, clock, replicas }),
      keyGenerator: (request) => `rate:${request.tenant}`,
      allowList: (request) => table.of(request.tenant).rateLimitPerMinute === 0,
      max: (request) => table.of(request.tenant).rateLimitPerMinute,
      onExceeded: () => refusals.inc({ limit: 'rate' }),
      errorResponseBuilder: (_request, context) => new DomainError(
        'limited',
        `Rate limit exceeded: ${context.max} requests per minute for this tenant; retry in ${context.after}`,
        { code: 'RATE_LIMITED', retryAfterSeconds: Math.max(1, Math.ceil(context.ttl / 1000)) }
      )
    })
    const messageRate = fastify.createRateLimit({
      keyGenerator: (request) => `messages:${request.tenant}`,
      allowList: (request) => table.of(request.tenant).messageRatePerMinute === 0,
      max: (request) => table.of(request.tenant).messageRatePerMinute
    })

    const dailyTokens = new DailyTokens(fastify.pg.pool, clock)
    const slots = new StreamSlots({ gate, clock, replicas })
    fastify.addHook('onClose', () => slots.close())

    const holdStream: Guard = async (request, reply) => {
      const max = table.of(request.tenant).maxStreams
      if (max === 0) return
      const release = await slots.acquire(request.tenant, max)
      if (!release) {
        refusals.inc({ limit: 'streams' })
        rateHeaders(reply, max, 0, STREAM_RETRY_AFTER_SECONDS)
        throw new DomainError('limited', `Too many open streams: this tenant may have ${max} open at once (SSE replies and event streams together); close one or retry later`, {
          code: 'TOO_MANY_STREAMS',
          retryAfterSeconds: STREAM_RETRY_AFTER_SECONDS
        })
      }
      // 'close' follows the end of every response, and a client that goes away.
      reply.raw.once('close', release)
    }

    const messageGuard: Guard = async (request, reply) => {
      const tenant = table.of(request.tenant)
      if (tenant.messageRatePerMinute > 0) {
        const rate = await messageRate(request)
        if (!rate.isAllowed && rate.isExceeded) {
          refusals.inc({ limit: 'messages' })
          const retryAfter = Math.max(1, rate.ttlInSeconds)
          rateHeaders(reply, rate.max, 0, retryAfter)
          throw new DomainError('limited', `Message rate exceeded: ${rate.max} messages per minute for this tenant; retry in ${retryAfter} s`, {
            code: 'RATE_LIMITED',
            retryAfterSeconds: retryAfter
          })
        }
      }
      if (tenant.tokenBudgetPerDay > 0) {
        const now = clock.now()
        const used = await dailyTokens.used(request.tenant)
        if (used >= tenant.tokenBudgetPerDay) {
          refusals.inc({ limit: 'tokens' })
          const retryAfter = secondsToUtcMidnight(now)
          rateHeaders(reply, tenant.tokenBudgetPerDay, 0, retryAfter)
          throw new DomainError('limited', `Token budget exhausted: this tenant used ${used} of its ${tenant.tokenBudgetPerDay} tokens for the UTC day; it renews at midnight UTC`, {
            code: 'TOKEN_BUDGET_EXCEEDED',
            retryAfterSeconds: retryAfter
          })
        }
      }
      if (wantsStream(request)) await holdStream(request, reply)
    }

    fastify.decorate('limits', { table, messageGuard, streamGuard: holdStream, holdStream })
  },
  { name: 'limits', dependencies: ['config', 'redis', 'postgres', 'metrics', 'auth'] }
)
