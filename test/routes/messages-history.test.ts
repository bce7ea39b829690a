import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildTestApp, redisUnavailable, testEnv } from '../helper.js'

// History reads served from the cached seq list of each session (Redis, or the in-process cache
// without REDIS_URL): the same bytes as from PostgreSQL, current after every post, never served for
// a session that ended or belongs to another tenant, and counted in the metrics.

const KEY = 'history-test-key'

async function start (t: Test, env: Environment): Promise<FastifyInstance> {
  const app = await buildTestApp(t, env)
  await app.ready()
  return app
}

async function createSession (app: FastifyInstance, headers: Record<string, string> = {}): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: {}, headers })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

async function post (app: FastifyInstance, id: string, content: string, headers: Record<string, string> = {}): Promise<void> {
  const res = await app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, headers: { 'content-type': 'application/json', ...headers }, payload: { content } })
  if (res.statusCode !== 201) throw new Error(`post: ${res.statusCode} ${res.body}`)
}

function read (app: FastifyInstance, id: string, query = '', headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ url: `/v1/sessions/${id}/messages${query ? `?${query}` : ''}`, headers })
}

/** smalltalk_cache_lookups_total{cache="history"} (or "session"), by result. */
async function historyLookups (app: FastifyInstance, cache = 'history'): Promise<{ hit: number; miss: number }> {
  const metric = await app.metricsRegistry.getSingleMetric('smalltalk_cache_lookups_total')?.get()
  const value = (result: string) => metric?.values.find((v) => v.labels.cache === cache && v.labels.result === result)?.value ?? 0
  return { hit: value('hit'), miss: value('miss') }
}

const TEXTS = ['plain', 'héllo wörld ✓', '😀 👨‍👩‍👧‍👦 family', 'e\u0301 combining', 'quotes " \\ and \n newline', "'; DROP TABLE chat_messages; --", '中文 العربية ｆｕｌｌ', 'pipes | and, commas,']

// These read the shared cache (Redis or in-process) at every read: the replica's kept responses
// (HISTORY_PAGE_CACHE_MB) are off here and tested on their own below.
const NO_PAGES = { HISTORY_PAGE_CACHE_MB: '0' }
const backends: Array<[string, Environment, { skip: string | false }]> = [
  ['redis', { REDIS_URL, ...NO_PAGES }, { skip: redisUnavailable() }],
  ['in-process cache', { ...NO_PAGES }, { skip: false }]
]

for (const [name, cacheEnv, options] of backends) {
  t.test(`${name}: a history page from the cache is the very body PostgreSQL gives, and counts as a hit`, options, async (t) => {
    const env = await testEnv(t, cacheEnv)
    const app = await start(t, env)
    const id = await createSession(app)
    for (const text of TEXTS) await post(app, id, text)

    const before = await historyLookups(app)
    const warm = await read(app, id, 'limit=200')
    t.equal(warm.statusCode, 200)
    t.equal(warm.headers['content-type'], 'application/json; charset=utf-8')
    t.same(await historyLookups(app), { hit: before.hit + 1, miss: before.miss }, 'served from the cache')
    // The session record evicted alone: read from PostgreSQL, the history still from the cache.
    await app.cache.delete(`session:${id}`)
    const sessions = await historyLookups(app, 'session')
    t.equal((await read(app, id, 'limit=200')).body, warm.body, 'the same page')
    t.same(await historyLookups(app, 'session'), { hit: sessions.hit, miss: sessions.miss + 1 }, 'the record missed')
    t.same(await historyLookups(app), { hit: before.hit + 2, miss: before.miss }, 'the history hit')
    const body = warm.json() as { messages: Array<{ seq: number; role: string; content: string }>; nextCursor: number | null }
    t.same(body.messages.map((m) => m.seq), Array.from({ length: 2 * TEXTS.length }, (_, i) => i + 1), 'in seq order')
    t.same(body.messages.filter((m) => m.role === 'user').map((m) => m.content), TEXTS, 'the texts, byte for byte')
    t.equal(body.nextCursor, null)

    // Another replica with a cold cache (another key prefix, or another process) reads the rows.
    // (Replicas share their cache in production; with separate ones, each must be used once only:
    // its cached session record would not see the other's posts.)
    const coldReplica = (name: string) => start(t, { ...env, REDIS_KEY_PREFIX: `${env.REDIS_KEY_PREFIX}${name}:` })
    const cold = await coldReplica('cold')
    const fromDatabase = await read(cold, id, 'limit=200')
    t.same(await historyLookups(cold), { hit: 0, miss: 1 }, 'the cold replica missed')
    t.equal(fromDatabase.headers['content-type'], warm.headers['content-type'])
    t.equal(fromDatabase.body, warm.body, 'the same bytes from PostgreSQL and from the cache')
    for (const query of ['limit=3', 'after=3&limit=5', 'after=14&limit=5', `after=${2 * TEXTS.length}`, 'after=500']) {
      t.equal((await read(cold, id, query)).body, (await read(app, id, query)).body, `the same page for ${query}`)
    }
    t.equal((await read(app, id, 'limit=3')).body.includes('"nextCursor":3}'), true, 'nextCursor of a full page')

    // The next post is read at once, from the cache, on the replica that wrote it.
    await post(app, id, 'one more')
    const hits = (await historyLookups(app)).hit
    const after = (await read(app, id, `after=${2 * TEXTS.length}`)).json()
    t.same(after.messages.map((m: { content: string }) => m.content), ['one more', 'Echo (gpt-4o-mini): one more'])
    t.equal((await historyLookups(app)).hit, hits + 1)
    t.same((await read(await coldReplica('colder'), id, `after=${2 * TEXTS.length}`)).json(), after, 'and on another replica, from PostgreSQL')
  })

  t.test(`${name}: a session with more messages than the cache holds: older pages come from PostgreSQL`, options, async (t) => {
    const app = await start(t, await testEnv(t, { ...cacheEnv, CONTEXT_MESSAGES: '4' }))
    const id = await createSession(app)
    // The cache keeps the newest max(CONTEXT_MESSAGES, 100) messages.
    for (let i = 1; i <= 64; i++) await post(app, id, `message ${i}`)
    const before = await historyLookups(app)
    const first = (await read(app, id, 'limit=10')).json()
    t.same(first.messages.map((m: { seq: number }) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    t.equal(first.nextCursor, 10)
    t.same(await historyLookups(app), { hit: before.hit, miss: before.miss + 1 }, 'seq 1 is no longer cached: a miss')
    const newest = (await read(app, id, 'after=118&limit=50')).json()
    t.same(newest.messages.map((m: { seq: number }) => m.seq), [119, 120, 121, 122, 123, 124, 125, 126, 127, 128])
    t.equal(newest.nextCursor, null)
    t.same(await historyLookups(app), { hit: before.hit + 1, miss: before.miss + 1 }, 'the newest ones are')
    const walked: number[] = []
    for (let cursor: number | null = 0, guard = 0; cursor !== null && guard < 20; guard++) {
      const page: { messages: Array<{ seq: number }>; nextCursor: number | null } = (await read(app, id, `after=${cursor}&limit=30`)).json()
      walked.push(...page.messages.map((m: { seq: number }) => m.seq))
      cursor = page.nextCursor
    }
    t.same(walked, Array.from({ length: 128 }, (_, i) => i + 1), 'walking the cursor across both sources')
  })

  t.test(`${name}: a read after DELETE is a 410, never served from the cache; other tenants get a 404`, options, async (t) => {
    const app = await start(t, await testEnv(t, { ...cacheEnv, API_KEYS: `${KEY}:acme,other-${KEY}:globex` }))
    const acme = { authorization: `Bearer ${KEY}` }
    const globex = { authorization: `Bearer other-${KEY}` }
    const id = await createSession(app, acme)
    await post(app, id, 'secret plans', acme)
    t.equal((await read(app, id, '', acme)).statusCode, 200)

    const foreign = await read(app, id, '', globex)
    t.equal(foreign.statusCode, 404, 'another tenant: 404')
    t.notMatch(foreign.body, /secret/)
    t.equal((await read(app, id, '')).statusCode, 401, 'no key: 401')

    t.equal((await app.inject({ method: 'DELETE', url: `/v1/sessions/${id}`, headers: acme })).statusCode, 204)
    const gone = await read(app, id, '', acme)
    t.equal(gone.statusCode, 410)
    t.match(gone.json(), { code: 'SESSION_INVALIDATED' })
    t.notMatch(gone.body, /secret/)
  })
}

t.test('redis: a history list that lost appends is not served; the next reply brings it up to date', { skip: redisUnavailable() }, async (t) => {
  const app = await start(t, await testEnv(t, { REDIS_URL, ...NO_PAGES }))
  const id = await createSession(app)
  await post(app, id, 'first')
  const firstTwo = (await read(app, id)).json().messages.map((m: unknown) => JSON.stringify(m))
  await post(app, id, 'second')
  // As if the appends of the second post had been lost (a Redis failover, say): the list ends at 2.
  const key = `history:${id}`
  await app.cache.delete(key)
  await app.cache.replaceSeqList(key, 2, firstTwo, 60)
  const before = await historyLookups(app)
  const contents = (await read(app, id)).json().messages.map((m: { content: string }) => m.content)
  t.same(contents, ['first', 'Echo (gpt-4o-mini): first', 'second', 'Echo (gpt-4o-mini): second'], 'the whole history')
  t.same(await historyLookups(app), { hit: before.hit, miss: before.miss + 1 }, 'read from PostgreSQL, not from the list that ends at 2')
  t.same((await read(app, id, 'after=2')).json().messages.map((m: { seq: number }) => m.seq), [3, 4])

  // The next reply loads its context from PostgreSQL and caches it again: reads hit from then on.
  await post(app, id, 'third')
  const rebuilt = await historyLookups(app)
  t.same((await read(app, id)).json().messages.map((m: { seq: number }) => m.seq), [1, 2, 3, 4, 5, 6])
  t.equal((await historyLookups(app)).hit, rebuilt.hit + 1, 'served from the rebuilt list')
})

t.test('redis: a reply takes the model\'s context from the cached list, and from PostgreSQL when the cache has none', { skip: redisUnavailable() }, async (t) => {
  const app = await start(t, await testEnv(t, { REDIS_URL, ...NO_PAGES }))
  const id = await createSession(app)
  await post(app, id, 'first')
  await post(app, id, 'second')
  const before = await historyLookups(app)
  await post(app, id, 'third')
  t.same(await historyLookups(app), { hit: before.hit + 1, miss: before.miss }, 'the context came from the cached list')
  t.same((await read(app, id)).json().messages.map((m: { content: string }) => m.content), ['first', 'Echo (gpt-4o-mini): first', 'second', 'Echo (gpt-4o-mini): second', 'third', 'Echo (gpt-4o-mini): third'])

  await app.cache.deleteSeqLists(`history:${id}`)
  const missed = await historyLookups(app)
  await post(app, id, 'fourth')
  t.same(await historyLookups(app), { hit: missed.hit, miss: missed.miss + 1 }, 'one miss, then PostgreSQL')
  t.same((await read(app, id)).json().messages.map((m: { seq: number }) => m.seq), [1, 2, 3, 4, 5, 6, 7, 8], 'the list is rebuilt whole')
})

t.test('kept history responses: served while the session has no new message, on any replica, never past its end or to another tenant', { skip: redisUnavailable() }, async (t) => {
  const env = await testEnv(t, { REDIS_URL, API_KEYS: `${KEY}:acme,other-${KEY}:globex` })
  // Two replicas sharing PostgreSQL and Redis, each with its own kept responses.
  const a = await start(t, env)
  const b = await start(t, env)
  const acme = { authorization: `Bearer ${KEY}` }
  const id = await createSession(a, acme)
  await post(a, id, 'first', acme)

  const first = await read(a, id, 'limit=50', acme)
  const pages = await historyLookups(a, 'history_page')
  const lists = await historyLookups(a)
  const again = await read(a, id, 'limit=50', acme)
  t.equal(again.body, first.body, 'the same body')
  t.same(await historyLookups(a, 'history_page'), { hit: pages.hit + 1, miss: pages.miss }, 'a kept response')
  t.same(await historyLookups(a), lists, 'the cached list was not read')

  // A post on the other replica: the record's newest seq moved, so the kept response is not used.
  await post(b, id, 'second', acme)
  const current = (await read(a, id, 'limit=50', acme)).json()
  t.same(current.messages.map((m: { content: string }) => m.content), ['first', 'Echo (gpt-4o-mini): first', 'second', 'Echo (gpt-4o-mini): second'], 'current after the other replica\'s post')
  t.same(await historyLookups(a, 'history_page'), { hit: pages.hit + 1, miss: pages.miss + 1 })
  t.equal((await read(a, id, 'limit=2', acme)).json().nextCursor, 2, 'each window kept apart')
  t.equal((await read(a, id, 'limit=2', acme)).json().nextCursor, 2)

  const foreign = await read(a, id, 'limit=50', { authorization: `Bearer other-${KEY}` })
  t.equal(foreign.statusCode, 404, 'another tenant: 404, though the response is kept')
  t.notMatch(foreign.body, /first/)

  t.equal((await b.inject({ method: 'DELETE', url: `/v1/sessions/${id}`, headers: acme })).statusCode, 204)
  const gone = await read(a, id, 'limit=50', acme)
  t.equal(gone.statusCode, 410, 'deleted on the other replica: 410, though the response is kept')
  t.notMatch(gone.body, /first/)
})

t.test('HISTORY_PAGE_CACHE_MB=0 keeps no responses', async (t) => {
  const app = await start(t, await testEnv(t, { HISTORY_PAGE_CACHE_MB: '0' }))
  const id = await createSession(app)
  await post(app, id, 'hello')
  const lists = await historyLookups(app)
  t.equal((await read(app, id)).body, (await read(app, id)).body)
  t.same(await historyLookups(app, 'history_page'), { hit: 0, miss: 0 })
  t.same(await historyLookups(app), { hit: lists.hit + 2, miss: lists.miss }, 'both reads from the cached list')
})
