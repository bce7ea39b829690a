import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import type { Cache } from '../src/cache/cache.js'
import { MemoryCache } from '../src/cache/memory-cache.js'
import { RedisCache } from '../src/cache/redis-cache.js'

declare module 'fastify' {
  interface FastifyInstance {
    cache: Cache
  }
}

/**
 * The cache: Redis on REDIS_URL, or an in-process cache with the same interface when it is unset.
 *
 * The service makes its own ioredis client (src/cache/redis-cache.ts: short timeouts, no offline
 * queue, endless reconnection) and lends it to @fastify/redis as `fastify.redis`, closed here, once,
 * at onClose (@fastify/redis closes a client it was given only with closeClient). Even with a client
 * given, @fastify/redis holds registration until that client is ready (start-up would then wait for
 * Redis, and fail at the plugin timeout) and quits it on some errors meanwhile (an unresolvable host),
 * so it is handed the client only once connected. When Redis is down at start-up the service starts
 * degraded (DESIGN section 8) without `fastify.redis`: check `hasDecorator('redis')`, or go through
 * `fastify.cache`, which reconnects by itself.
 */
export default fp(
  async function redis (fastify) {
    const config = fastify.config
    let cache: Cache
    if (config.REDIS_URL) {
      const redisCache = new RedisCache({
        url: config.REDIS_URL,
        keyPrefix: config.REDIS_KEY_PREFIX,
        connectTimeoutMs: config.REDIS_CONNECT_TIMEOUT_MS,
        commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS,
        log: fastify.log
      })
      await redisCache.connect()
      if (redisCache.client.status === 'ready') await fastify.register(fastifyRedis, { client: redisCache.client })
      cache = redisCache
    } else {
      fastify.log.info('no REDIS_URL: using the in-process cache (fine for one replica)')
      cache = new MemoryCache(config.CACHE_MAX_ENTRIES)
    }
    fastify.decorate('cache', cache)
    fastify.addHook('onClose', () => cache.close())
  },
  { name: 'redis', dependencies: ['config'] }
)
