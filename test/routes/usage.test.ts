import t from 'tap'
import { auth, createSession, limitsEnv, post, replica } from '../limits/support.js'

// GET /v1/usage (issue 13): the caller's tenant's tokens and replies from PostgreSQL, never another
// tenant's, and a query plan that stays one index range scan for a tenant with many messages.

const today = () => new Date().toISOString().slice(0, 10)

t.test('usage by day, agent and model: the caller\'s tenant only, purged sessions included', async (t) => {
  const { env, stub } = await limitsEnv(t)
  stub.setDefault({ text: 'ok', usage: { inputTokens: 7, outputTokens: 3 } })
  const app = await replica(t, env)
  const acme = await createSession(app, 'acme')
  const globex = await createSession(app, 'globex')
  for (let i = 0; i < 3; i++) t.equal((await post(app, 'acme', acme)).statusCode, 201)
  t.equal((await post(app, 'globex', globex)).statusCode, 201)

  const byDay = await app.inject({ url: '/v1/usage', headers: auth('acme') })
  t.equal(byDay.statusCode, 200)
  t.same(byDay.json(), {
    from: today(),
    to: today(),
    groupBy: 'day',
    totals: { inputTokens: 21, outputTokens: 9, replies: 3 },
    rows: [{ key: today(), inputTokens: 21, outputTokens: 9, replies: 3 }]
  })
  const byAgent = await app.inject({ url: '/v1/usage?groupBy=agent', headers: auth('globex') })
  t.same(byAgent.json().rows, [{ key: 'assistant', inputTokens: 7, outputTokens: 3, replies: 1 }], 'globex sees its own reply only')
  const monthAgo = new Date(Date.now() - 30 * 86_400_000).toISOString().slice(0, 10)
  const byModel = await app.inject({ url: `/v1/usage?groupBy=model&from=${monthAgo}&to=${today()}`, headers: auth('acme') })
  t.same(byModel.json().rows, [{ key: 'gpt-test', inputTokens: 21, outputTokens: 9, replies: 3 }])
  const past = await app.inject({ url: '/v1/usage?from=2020-01-01&to=2020-01-31', headers: auth('acme') })
  t.same(past.json().totals, { inputTokens: 0, outputTokens: 0, replies: 0 })
  t.same(past.json().rows, [])

  // A session purged after it ended keeps its usage.
  await app.pg.pool.query('DELETE FROM sessions WHERE id = $1', [acme])
  const after = await app.inject({ url: '/v1/usage', headers: auth('acme') })
  t.same(after.json().totals, { inputTokens: 21, outputTokens: 9, replies: 3 })
})

t.test('bad ranges are 400s that say what is wrong; no key is a 401', async (t) => {
  const { env } = await limitsEnv(t)
  const app = await replica(t, env)
  const get = (query: string) => app.inject({ url: `/v1/usage${query}`, headers: auth('acme') })
  t.match((await get('?from=2024-02-30')).json(), { statusCode: 400, code: 'INVALID_DATE', message: /from is not a calendar day/ })
  t.match((await get('?from=2024-03-02&to=2024-03-01')).json(), { statusCode: 400, code: 'INVALID_RANGE' })
  t.match((await get('?from=2020-01-01&to=2024-01-01')).json(), { statusCode: 400, code: 'INVALID_RANGE', message: /at most 366 days/ })
  t.equal((await get('?from=yesterday')).statusCode, 400)
  t.equal((await get('?groupBy=tenant')).statusCode, 400)
  t.equal((await app.inject({ url: '/v1/usage' })).statusCode, 401)
  t.same((await get('?from=2024-03-01&to=2024-03-01')).json().rows, [])
})

t.test('the usage query is an index range scan, whatever else the table holds', async (t) => {
  const { env } = await limitsEnv(t)
  const app = await replica(t, env)
  const pool = app.pg.pool
  // 300,000 replies of other tenants and 30,000 of acme over a year, then what autovacuum does to an
  // insert-only table (statistics, visibility map).
  await pool.query(`
    INSERT INTO reply_usage (tenant, session_id, agent, model, input_tokens, output_tokens, created_at)
    SELECT CASE WHEN i % 11 = 0 THEN 'acme' ELSE 'tenant-' || (i % 50) END, gen_random_uuid(), 'assistant', 'gpt-test', 10, 5,
           now() - make_interval(secs => (i % 365) * 86400 + (i % 1000))
      FROM generate_series(1, 330000) AS i`)
  await pool.query('VACUUM ANALYZE reply_usage')
  const { rows } = await pool.query<{ 'QUERY PLAN': string }>(
    `EXPLAIN SELECT COALESCE(sum(input_tokens + output_tokens), 0) FROM reply_usage
      WHERE tenant = 'acme' AND created_at >= now() - interval '1 day' AND created_at < now()`)
  const plan = rows.map((row) => row['QUERY PLAN']).join('\n')
  t.comment(plan)
  t.match(plan, /Index Only Scan using reply_usage_tenant_time_idx/, 'the budget check reads one stretch of the index')
  const report = await app.inject({ url: '/v1/usage?groupBy=day', headers: auth('acme') })
  t.equal(report.statusCode, 200)
  t.ok(report.json().totals.replies > 0)
})
