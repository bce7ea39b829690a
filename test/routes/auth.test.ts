import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { parseApiKeys } from '../../plugins/auth.js'
import { buildTestApp, testEnv } from '../helper.js'

const KEYS = 'sk-alpha-1:alpha,sk-alpha-2:alpha,sk-beta-1:beta'
const as = (key: string) => ({ authorization: `Bearer ${key}` })

async function sessionOf (app: FastifyInstance, key: string) {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: as(key), payload: { metadata: { owner: key } } })
  t.equal(res.statusCode, 201)
  const session = res.json()
  const message = await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, headers: as(key), payload: { content: 'my secret plan' } })
  t.equal(message.statusCode, 201)
  return session
}

t.test('API_KEYS parsing: key:tenant pairs, bad entries named', async (t) => {
  t.equal(parseApiKeys('a:x, b:y ,c:x').size, 3)
  t.equal(parseApiKeys('').size, 0)
  t.equal(parseApiKeys('key:with:colons:tenant').size, 1, 'the tenant follows the last colon')
  t.throws(() => parseApiKeys('a:x,nokey'), /API_KEYS entry 2 must be key:tenant/)
  t.throws(() => parseApiKeys('k:ten ant'), /invalid tenant/)
})

t.test('every /v1 route needs a valid bearer key; the root and docs do not', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { API_KEYS: KEYS }))
  const urls = ['/v1/agents', '/v1/agents/assistant', '/v1/sessions', '/v1/events', '/v1/sessions/00000000-0000-4000-8000-000000000000/messages']
  for (const url of urls) {
    const none = await app.inject(url)
    t.equal(none.statusCode, 401, `${url} without a key`)
    t.match(none.json(), { statusCode: 401, error: 'Unauthorized', message: /Missing API key/ })
    t.equal(none.headers['www-authenticate'], 'Bearer realm="smalltalk"')
    const wrong = await app.inject({ url, headers: { authorization: 'Bearer sk-alpha-3' } })
    t.equal(wrong.statusCode, 401, `${url} with a wrong key`)
    t.equal(wrong.json().message, 'Invalid API key')
    t.equal((await app.inject({ url, headers: { authorization: 'Basic c2stYWxwaGEtMQ==' } })).statusCode, 401, 'not a bearer key')
  }
  t.equal((await app.inject({ method: 'POST', url: '/v1/sessions' })).statusCode, 401)
  t.equal((await app.inject('/v1/agents')).statusCode, 401)
  t.equal((await app.inject({ url: '/v1/agents', headers: { authorization: 'bearer sk-beta-1' } })).statusCode, 200, 'the scheme is case-insensitive')
  t.equal((await app.inject('/')).statusCode, 200)
  t.equal((await app.inject('/docs/json')).statusCode, 200)
})

t.test('tenant isolation: another tenant\'s session is a 404 for every operation', async (t) => {
  const app = await buildTestApp(t, await testEnv(t, { API_KEYS: KEYS }))
  const alphas = await sessionOf(app, 'sk-alpha-1')
  const betas = await sessionOf(app, 'sk-beta-1')
  const url = `/v1/sessions/${alphas.id}`

  const foreign = [
    app.inject({ url, headers: as('sk-beta-1') }),
    app.inject({ method: 'PATCH', url, headers: { ...as('sk-beta-1'), 'if-match': '1' }, payload: { metadata: { stolen: true } } }),
    app.inject({ method: 'DELETE', url, headers: as('sk-beta-1') }),
    app.inject({ url: `${url}/messages`, headers: as('sk-beta-1') }),
    app.inject({ method: 'POST', url: `${url}/messages`, headers: as('sk-beta-1'), payload: { content: 'let me in' } })
  ]
  for (const res of await Promise.all(foreign)) {
    t.equal(res.statusCode, 404)
    t.equal(res.json().message, 'Session not found', 'the same answer as for an id that does not exist')
  }

  // Nothing changed for the owner, who may use any of its keys.
  const own = await app.inject({ url, headers: as('sk-alpha-2') })
  t.equal(own.statusCode, 200)
  t.same(own.json().metadata, { owner: 'sk-alpha-1' })
  t.equal(own.json().messageCount, 2)
  const history = (await app.inject({ url: `${url}/messages`, headers: as('sk-alpha-2') })).json().messages
  t.same(history.map((m: { content: string }) => m.content.includes('my secret plan')), [true, true])

  const alphaList = (await app.inject({ url: '/v1/sessions', headers: as('sk-alpha-1') })).json().sessions.map((s: { id: string }) => s.id)
  const betaList = (await app.inject({ url: '/v1/sessions', headers: as('sk-beta-1') })).json().sessions.map((s: { id: string }) => s.id)
  t.same(alphaList, [alphas.id])
  t.same(betaList, [betas.id])

  const alphaEvents = (await app.inject({ url: '/v1/events', headers: as('sk-alpha-1') })).json().events
  const betaEvents = (await app.inject({ url: '/v1/events', headers: as('sk-beta-1') })).json().events
  t.ok(alphaEvents.length >= 4)
  t.ok(alphaEvents.every((e: { sessionId: string | null }) => e.sessionId === alphas.id || e.sessionId === null), 'alpha sees only its own session events')
  t.ok(betaEvents.every((e: { sessionId: string | null }) => e.sessionId === betas.id || e.sessionId === null), 'beta sees only its own session events')
  const filtered = await app.inject({ url: '/v1/events', query: { sessionId: alphas.id }, headers: as('sk-beta-1') })
  t.same(filtered.json().events, [], 'filtering by another tenant\'s session shows nothing')
})

t.test('open mode: no API_KEYS, every caller is one tenant', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: { authorization: 'Bearer whatever' } })
  t.equal(res.statusCode, 201)
  t.equal((await app.inject('/v1/sessions')).json().sessions.length, 1)
})

t.test('a bad API_KEYS stops start-up with the variable named', async (t) => {
  await t.rejects(buildTestApp(t, await testEnv(t, { API_KEYS: 'just-a-key' })), /API_KEYS entry 1 must be key:tenant/)
})
