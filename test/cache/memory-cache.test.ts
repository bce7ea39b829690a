import t from 'tap'
import { MemoryCache } from '../../src/cache/memory-cache.js'

t.test('get/set/delete with per-key TTL', async (t) => {
  let now = 1_000_000
  const cache = new MemoryCache(100, () => now)
  t.equal(await cache.get('a'), undefined)
  await cache.set('a', 'one', 10)
  await cache.set('b', 'two', 60)
  t.equal(await cache.get('a'), 'one')
  now += 10_001
  t.equal(await cache.get('a'), undefined, 'expired after its TTL')
  t.equal(await cache.get('b'), 'two', 'a longer TTL is kept')
  await cache.delete('b', 'missing')
  t.equal(await cache.get('b'), undefined)
  t.equal(cache.state(), 'ok')
})

t.test('bounded: the least recently used entries go first', async (t) => {
  const cache = new MemoryCache(3)
  await cache.set('a', '1', 60)
  await cache.set('b', '2', 60)
  await cache.set('c', '3', 60)
  t.equal(await cache.get('a'), '1', 'reading a makes it recent')
  await cache.set('d', '4', 60)
  t.equal(cache.size, 3)
  t.equal(await cache.get('b'), undefined, 'b was the least recently used')
  t.equal(await cache.get('a'), '1')
  t.equal(await cache.get('d'), '4')
})
