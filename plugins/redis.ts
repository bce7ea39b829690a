import fp from 'fastify-plugin'
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
 * Not @fastify/redis: that plugin holds registration until the first successful connection, so a
 * service whose Redis is down at start-up could not start, and DESIGN section 8 requires that it
 * starts, degraded. The ioredis client it would wrap is used directly, with the same lifecycle.
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
