import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/** The byte-offset seq lists (src/cache/redis-cache.ts itself), loaded as redis-list-cache.ts is. */
export { RedisCache } from '../../src/cache/redis-cache.js'
