import { stubLoaded } from './loaded.js'

stubLoaded(import.meta.url)

/**
 * Stands in for src/cache/redis-cache.ts in bench/history-list.ts: the plain-LIST seq lists. Loaded
 * from the TypeScript source through tsx, as the other side's redis-offsets-cache.ts is, so that both
 * sides' cache code is compiled the same way.
 */
export { RedisListCache as RedisCache } from '../../src/cache/redis-list-cache.js'
