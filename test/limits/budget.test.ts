import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { tempDir } from '../helper.js'
import { DAILY_TOKENS_TTL_MS } from '../../src/limits/daily-tokens.js'
import { ManualClock } from '../support/manual-clock.js'
import { auth, createSession, limitsEnv, post, refusals, replica, storedMessages } from './support.js'

// The token budget per tenant per UTC day (issue 13): counted from the usage stored with every reply
// (so it survives restarts and agrees with GET /v1/usage), checked before a provider is called.

const DAY_MS = 86_400_000

t.test('the reply that crosses the budget finishes, the next is refused until UTC midnight, across restarts', async (t) => {
  const { env, stub } = await limitsEnv(t, { TOKEN_BUDGET_PER_DAY: '100' })
  stub.setDefault({ text: 'fine thanks', usage: { inputTokens: 30, outputTokens: 20 } })
  // Late in the day: 30 s before the next UTC midnight.
  const now = Date.now()
  const clock = new ManualClock(Math.floor(now / DAY_MS) * DAY_MS + DAY_MS - 30_000)
  const first = await replica(t, env, clock)
  const id = await createSession(first, 'acme')
  t.equal((await post(first, 'acme', id)).statusCode, 201, '0 of 100 used: admitted')
  t.equal((await post(first, 'acme', id)).statusCode, 201, '50 of 100 used: admitted, and it reaches 100')
  // A replica reads the day's total again once its copy is DAILY_TOKENS_TTL_MS old.
  clock.advance(DAILY_TOKENS_TTL_MS)
  t.equal((await post(first, 'acme', id)).statusCode, 429, 'the same replica refuses the next post')
  await first.close()

  // Another process, the same database: the budget is what PostgreSQL stored.
  const second = await replica(t, env, clock)
  const calls = stub.chatRequests().length
  const stored = await storedMessages(second, id)
  const refused = await post(second, 'acme', id)
  t.equal(refused.statusCode, 429)
  t.match(refused.json(), { statusCode: 429, code: 'TOKEN_BUDGET_EXCEEDED', message: /used 100 of its 100 tokens/ })
  t.equal(refused.headers['retry-after'], '29', 'Retry-After: until the next UTC midnight')
  t.equal(refused.headers['ratelimit-limit'], '100')
  t.equal(refused.headers['ratelimit-remaining'], '0')
  t.equal(refused.headers['ratelimit-reset'], '29')
  const sse = await post(second, 'acme', id, 'again', { accept: 'text/event-stream' })
  t.equal(sse.statusCode, 429, 'refused over SSE too, before the stream opens')
  t.equal(stub.chatRequests().length, calls, 'no provider called')
  t.equal(await storedMessages(second, id), stored, 'nothing stored')
  t.equal(await refusals(second, 'tokens'), 2, 'counted by the replica that refused')

  const usage = await second.inject({ url: '/v1/usage', headers: auth('acme') })
  t.equal(usage.statusCode, 200)
  t.same(usage.json().totals, { inputTokens: 60, outputTokens: 40, replies: 2 }, 'GET /v1/usage agrees with the budget')

  // The other tenant has a budget of its own.
  const other = await createSession(second, 'globex')
  t.equal((await post(second, 'globex', other)).statusCode, 201)

  clock.advance(29_000)
  t.equal((await post(second, 'acme', id)).statusCode, 201, 'a new UTC day, a new budget')
})

t.test('a budget of 0 is unlimited; a tenant override applies', async (t) => {
  const file = join(await tempDir(t), 'tenants.yaml')
  await writeFile(file, 'tenants:\n  acme:\n    tokenBudgetPerDay: 0\n  globex:\n    tokenBudgetPerDay: 10\n')
  const { env, stub } = await limitsEnv(t, { TOKEN_BUDGET_PER_DAY: '10', TENANTS_FILE: file })
  stub.setDefault({ text: 'ok', usage: { inputTokens: 10, outputTokens: 10 } })
  const clock = new ManualClock()
  const app = await replica(t, env, clock)
  const acme = await createSession(app, 'acme')
  const globex = await createSession(app, 'globex')
  for (let i = 0; i < 3; i++) t.equal((await post(app, 'acme', acme)).statusCode, 201, `acme reply ${i + 1}: unlimited`)
  t.equal((await post(app, 'globex', globex)).statusCode, 201)
  clock.advance(DAILY_TOKENS_TTL_MS)
  t.equal((await post(app, 'globex', globex)).statusCode, 429)
})
