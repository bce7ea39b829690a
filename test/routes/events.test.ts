import t from 'tap'
import { buildTestApp, testEnv } from '../helper.js'

const json = { 'content-type': 'application/json' }

t.test('every state change has its event, in order, with the tenant\'s session', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: json, payload: {} })).json()
  await app.inject({ method: 'PATCH', url: `/v1/sessions/${session.id}`, headers: { ...json, 'if-match': '1' }, payload: { metadata: { a: 1 } } })
  const posted = (await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, headers: json, payload: { content: 'debug this typescript bug' } })).json()
  await app.inject({ method: 'DELETE', url: `/v1/sessions/${session.id}` })

  const res = await app.inject({ url: '/v1/events', query: { sessionId: session.id } })
  t.equal(res.statusCode, 200)
  const events = res.json().events as { id: string; type: string; agentId: string | null; data: Record<string, unknown> }[]
  t.same(events.map((e) => e.type), ['session.created', 'session.updated', 'message.created', 'agent.selected', 'message.created', 'session.invalidated'])
  const ids = events.map((e) => BigInt(e.id))
  t.ok(ids.every((id, i) => i === 0 || id > (ids[i - 1] as bigint)), 'ids increase')
  t.match(events[2], { data: { messageId: posted.message.id, seq: 1, role: 'user' } })
  t.match(events[3], { agentId: posted.reply.agent, data: { reason: String } })
  t.match(events[4], { agentId: posted.reply.agent, data: { messageId: posted.reply.id, seq: 2, role: 'assistant' } })

  // The log never disagrees with the data: one message.created per stored message.
  const { rows } = await app.pg.query(
    `SELECT (SELECT count(*) FROM chat_messages WHERE session_id = $1)::int AS messages,
            (SELECT count(*) FROM event_logs WHERE session_id = $1 AND type = 'message.created')::int AS events`,
    [session.id]
  )
  t.equal(rows[0].messages, rows[0].events)
})

t.test('filters and pagination', async (t) => {
  const app = await buildTestApp(t, await testEnv(t))
  for (let i = 0; i < 3; i++) {
    const s = (await app.inject({ method: 'POST', url: '/v1/sessions' })).json()
    await app.inject({ method: 'POST', url: `/v1/sessions/${s.id}/messages`, headers: json, payload: { content: `hello ${i}` } })
  }
  const sessionEvents = (await app.inject({ url: '/v1/events', query: { type: 'session.*' } })).json().events
  t.equal(sessionEvents.length, 3)
  t.ok(sessionEvents.every((e: { type: string }) => e.type === 'session.created'))
  t.equal((await app.inject({ url: '/v1/events', query: { type: 'message.created' } })).json().events.length, 6)
  t.equal((await app.inject({ url: '/v1/events', query: { type: '*' } })).json().events.length, 12)

  const seen: string[] = []
  let after: string | undefined
  for (let page = 0; page < 10; page++) {
    const body = (await app.inject({ url: '/v1/events', query: after ? { limit: '5', after } : { limit: '5' } })).json()
    seen.push(...body.events.map((e: { id: string }) => e.id))
    if (!body.nextCursor) break
    after = body.nextCursor
  }
  t.equal(seen.length, 12)
  t.equal(new Set(seen).size, 12, 'no event twice')

  t.equal((await app.inject({ url: '/v1/events', query: { type: 'DROP TABLE' } })).statusCode, 400)
  t.equal((await app.inject({ url: '/v1/events', query: { after: '-1' } })).statusCode, 400)
  t.equal((await app.inject({ url: '/v1/events', query: { sessionId: 'nope' } })).statusCode, 400)
})
