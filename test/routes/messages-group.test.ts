import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, buildService, eventually, tempDir, testEnv, type TestService } from '../helper.js'
import { LlmStub, type StubRequest } from '../support/llm-stub.js'
import { data, sse } from '../support/sse.js'

// Group conversations (DESIGN section 9) through the whole app, against the real PostgreSQL and
// Redis, with each agent on a loopback stub of its provider's wire format (the real SDKs run).

const KEYS = { OPENAI_API_KEY: 'sk-openai-test', ANTHROPIC_API_KEY: 'sk-ant-test', GEMINI_API_KEY: 'gm-test' }

const TEAM = `
agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: gpt-test
    systemPrompt: You are Assistant.
    expertise: [question, plan]
  - id: coder
    name: Coder
    description: Writes code.
    provider: anthropic
    model: claude-test
    systemPrompt: You are Coder.
    expertise: [code, bug]
    fallback: assistant
  - id: writer
    name: Writer
    description: Writes prose.
    provider: gemini
    model: gemini-test
    systemPrompt: You are Writer.
    expertise: [poem, essay]
  - id: boss
    name: Boss
    description: Manages the group.
    provider: openai
    model: boss-test
    systemPrompt: You decide.
groups:
  - id: panel
    name: Panel
    description: Everyone once.
    agents: [assistant, coder, writer]
    strategy: round-robin
  - id: managed
    name: Managed
    agents: [assistant, coder, writer]
    strategy: manager
    manager: boss
    maxTurns: 4
`

const byModel = (model: string) => (request: StubRequest) => request.kind === 'chat' && request.model === model

interface World {
  stub: LlmStub
  service: TestService
  app: FastifyInstance
  base: string
  env: Environment
}

async function world (t: Test, env: Environment = {}, stub?: LlmStub): Promise<World> {
  if (!stub) {
    stub = await LlmStub.start()
    const started = stub
    t.teardown(() => started.close())
  }
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const fullEnv = await testEnv(t, {
    REDIS_URL,
    AGENTS_FILE: file,
    ...KEYS,
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    ANTHROPIC_BASE_URL: stub.anthropicBaseUrl,
    GEMINI_BASE_URL: stub.geminiBaseUrl,
    LLM_MAX_RETRIES: '0',
    ...env
  })
  const service = await buildService(t, fullEnv)
  const app = service.app
  t.teardown(() => app.server.closeAllConnections())
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  stub.setDefault((request) => ({ text: `${request.model} says hi` }))
  return { stub, service, app, base, env: fullEnv }
}

async function groupSession (app: FastifyInstance, body: Record<string, unknown> = { agents: ['assistant', 'coder', 'writer'], mode: 'group' }): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload: body })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

function post (app: FastifyInstance, id: string, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, payload: body, headers })
}

async function history (app: FastifyInstance, id: string): Promise<Array<{ seq: number; role: string; content: string; agent?: string }>> {
  return (await app.inject(`/v1/sessions/${id}/messages`)).json().messages
}

async function events (app: FastifyInstance, id: string): Promise<Array<{ type: string; agentId: string | null; data: Record<string, unknown> }>> {
  return (await app.inject(`/v1/events?sessionId=${id}&limit=200`)).json().events
}

t.test('group sessions: created from agents or a preset, listed presets, validated with 400s naming the field, changed with PATCH', async (t) => {
  const { app } = await world(t)
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['coder', 'writer'], mode: 'group' } })
  t.equal(created.statusCode, 201)
  t.match(created.json(), { mode: 'group', agents: ['coder', 'writer'], group: { strategy: 'round-robin', maxTurns: 2, allowRepeat: false } })

  const preset = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { preset: 'managed' } })
  t.equal(preset.statusCode, 201)
  t.match(preset.json(), { mode: 'group', agents: ['assistant', 'coder', 'writer'], group: { strategy: 'manager', manager: 'boss', maxTurns: 4, preset: 'managed' } })
  const got = await app.inject(`/v1/sessions/${preset.json().id}`)
  t.same(got.json().group, preset.json().group, 'GET shows the stored group')

  const single = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['coder'] } })
  t.match(single.json(), { mode: 'single', group: null }, 'single mode by default')

  const groups = await app.inject('/v1/groups')
  t.same(groups.json().groups.map((g: { id: string }) => g.id), ['panel', 'managed'])
  t.match(groups.json().groups[0], { agents: ['assistant', 'coder', 'writer'], strategy: 'round-robin', maxTurns: 3 }, 'maxTurns defaults to the number of agents')

  const bad: Array<[Record<string, unknown>, RegExp, string]> = [
    [{ agents: ['coder'], mode: 'group' }, /2 to 10 agents, got 1/, '/agents'],
    [{ agents: ['coder', 'writer'], group: { maxTurns: 11 } }, /maxTurns must be an integer from 1 to 10/, '/group/maxTurns'],
    [{ agents: ['coder', 'writer'], group: { strategy: 'manager' } }, /needs group.manager/, '/group/manager'],
    [{ agents: ['coder', 'writer'], group: { strategy: 'manager', manager: 'nobody' } }, /"nobody" is not an agent of the manifest/, '/group/manager'],
    [{ agents: ['coder', 'writer'], mode: 'single', group: { maxTurns: 2 } }, /for mode "group" only/, '/group'],
    [{ preset: 'nope' }, /Unknown group preset "nope" \(presets: panel, managed\)/, '/preset']
  ]
  for (const [payload, message, field] of bad) {
    const res = await app.inject({ method: 'POST', url: '/v1/sessions', payload })
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.match(res.json(), { message, details: [{ field }] }, JSON.stringify(payload))
  }
  const strategy = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['coder', 'writer'], group: { strategy: 'loudest' } } })
  t.equal(strategy.statusCode, 400, 'an unknown strategy')
  t.match(strategy.json().message, /strategy/)
  const twice = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['coder', 'coder'], mode: 'group' } })
  t.equal(twice.statusCode, 400, 'an agent listed twice')
  t.match(twice.json().message, /agents must NOT have duplicate items/)
  const eleven = await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: Array.from({ length: 11 }, () => 'coder'), mode: 'group' } })
  t.equal(eleven.statusCode, 400, 'more than 10 agents')

  const id = created.json().id
  const patched = await app.inject({ method: 'PATCH', url: `/v1/sessions/${id}`, headers: { 'if-match': '1' }, payload: { group: { strategy: 'expertise', terminationKeyword: 'DONE' } } })
  t.equal(patched.statusCode, 200, patched.body)
  t.match(patched.json().group, { strategy: 'expertise', maxTurns: 2, terminationKeyword: 'DONE' }, 'PATCH keeps what it does not change')
  const shrink = await app.inject({ method: 'PATCH', url: `/v1/sessions/${id}`, headers: { 'if-match': '2' }, payload: { agents: ['coder'] } })
  t.equal(shrink.statusCode, 400, 'a group keeps at least 2 agents')
  const toSingle = await app.inject({ method: 'PATCH', url: `/v1/sessions/${id}`, headers: { 'if-match': '2' }, payload: { mode: 'single' } })
  t.match(toSingle.json(), { mode: 'single', group: null, version: 3 })
  const toGroup = await app.inject({ method: 'PATCH', url: `/v1/sessions/${single.json().id}`, headers: { 'if-match': '1' }, payload: { mode: 'group' } })
  t.equal(toGroup.statusCode, 400, 'a one-agent session cannot become a group')
})

t.test('round-robin round over three providers: each turn stored in order, each speaker sent the others\' messages by name', async (t) => {
  const { stub, app, service } = await world(t)
  const id = await groupSession(app)
  const res = await post(app, id, { content: 'Plan a launch' })
  t.equal(res.statusCode, 201, res.body)
  const body = res.json()
  t.same(body.replies.map((r: { agent: string }) => r.agent), ['assistant', 'coder', 'writer'], 'in the session\'s order')
  t.same(body.replies.map((r: { seq: number }) => r.seq), [2, 3, 4])
  t.same(body.round, { turns: 3, stop: 'max_turns' })
  t.match(body.replies[1], { provider: 'anthropic', model: 'claude-test', content: 'claude-test says hi' })

  const [first, second, third] = stub.chatRequests()
  t.equal(stub.chatRequests().length, 3, 'one provider call per turn')
  t.match(first!.system, /^You are Assistant\.\n\nYou are Assistant in a group conversation with the user and Coder, Writer\./)
  t.same(first!.messages, [{ role: 'user', content: 'Plan a launch' }])
  t.equal(second!.protocol, 'anthropic')
  t.same(second!.messages, [{ role: 'user', content: 'Plan a launch\n\n[Assistant]: gpt-test says hi' }], 'Anthropic: one user turn, the other agent labelled')
  t.equal(third!.protocol, 'gemini')
  t.same(third!.messages, [{ role: 'user', content: 'Plan a launch\n\n[Assistant]: gpt-test says hi\n\n[Coder]: claude-test says hi' }], 'Gemini: the same, both earlier speakers labelled')

  // The next round continues after the last speaker: the assistant again, who sees its own turn
  // as its own and the others' with OpenAI's name field.
  const again = await post(app, id, { content: 'And the budget?' })
  t.same(again.json().replies.map((r: { agent: string }) => r.agent), ['assistant', 'coder', 'writer'])
  const openai = stub.chatRequests()[3]!
  t.same((openai.body as { messages: unknown[] }).messages.slice(1), [
    { role: 'user', content: 'Plan a launch' },
    { role: 'assistant', content: 'gpt-test says hi' },
    { role: 'user', content: '[Coder]: claude-test says hi', name: 'Coder' },
    { role: 'user', content: '[Writer]: gemini-test says hi', name: 'Writer' },
    { role: 'user', content: 'And the budget?' }
  ], 'OpenAI: the other agents as named user turns')

  const stored = await history(app, id)
  t.same(stored.map((m) => [m.seq, m.role, m.agent ?? null]), [
    [1, 'user', null], [2, 'assistant', 'assistant'], [3, 'assistant', 'coder'], [4, 'assistant', 'writer'],
    [5, 'user', null], [6, 'assistant', 'assistant'], [7, 'assistant', 'coder'], [8, 'assistant', 'writer']
  ], 'history shows every turn in seq order')

  const log = await events(app, id)
  const firstRound = log.slice(0, log.findIndex((e) => e.type === 'round.finished') + 1)
  t.same(firstRound.map((e) => e.type), [
    'session.created', 'message.created', 'round.started',
    'agent.selected', 'message.created', 'agent.selected', 'message.created', 'agent.selected', 'message.created',
    'round.finished'
  ])
  t.match(firstRound.find((e) => e.type === 'agent.selected'), { agentId: 'assistant', data: { reason: 'round-robin', turn: 1 } })
  t.match(firstRound.at(-1), { data: { turns: 3, stop: 'max_turns' } })

  const metrics = (await service.ops.inject('/metrics')).body
  t.match(metrics, /smalltalk_group_rounds_total\{stop="max_turns"\} 2/)
  t.match(metrics, /smalltalk_group_speaker_selections_total\{strategy="round-robin",outcome="ok"\} 6/)
})

t.test('expertise, mentions and the termination keyword', async (t) => {
  const { stub, app } = await world(t)
  const expertise = await groupSession(app, { agents: ['assistant', 'coder', 'writer'], group: { strategy: 'expertise', maxTurns: 3 } })
  stub.enqueue({ text: 'Here is the code; now a poem about it?' }, { when: byModel('claude-test') })
  const res = await post(app, expertise, { content: 'There is a bug in this code' })
  t.same(res.json().replies.map((r: { agent: string }) => r.agent), ['coder', 'writer', 'assistant'], 'coder for the bug, writer for the poem it asked for, then the one left (never the one who just spoke)')

  const mentioned = await groupSession(app, { agents: ['assistant', 'coder', 'writer'], group: { strategy: 'round-robin', maxTurns: 3 } })
  const withMentions = await post(app, mentioned, { content: '@writer and @Coder, what do you think?' })
  t.same(withMentions.json().replies.map((r: { agent: string }) => r.agent), ['writer', 'coder', 'assistant'], 'mentioned agents first, in the order mentioned')
  const log = await events(app, mentioned)
  t.same(log.filter((e) => e.type === 'agent.selected').map((e) => e.data.reason), ['mention', 'mention', 'round-robin'])

  const keyword = await groupSession(app, { agents: ['assistant', 'coder', 'writer'], group: { maxTurns: 3, terminationKeyword: 'done' } })
  stub.enqueue({ text: 'All DONE here' }, { when: byModel('claude-test') })
  const stopped = await post(app, keyword, { content: 'Go' })
  t.same(stopped.json().round, { turns: 2, stop: 'keyword' }, 'the reply containing the keyword (any case) ends the round')
  t.equal(stopped.json().replies.length, 2)
})

t.test('manager strategy: its pick, FINISH, and garbage, an excluded speaker, an error or a timeout falling back to round-robin', async (t) => {
  const { stub, app, service } = await world(t, { GROUP_MANAGER_TIMEOUT_MS: '300' })
  const boss = byModel('boss-test')
  const id = await groupSession(app, { preset: 'managed' })
  stub.enqueue({ text: 'writer' }, { when: boss })
  stub.enqueue({ text: 'writer' }, { when: boss }) // writer just spoke: excluded
  stub.enqueue({ text: 'I think maybe someone?' }, { when: boss }) // names nobody
  stub.enqueue({ text: 'FINISH' }, { when: boss })
  const res = await post(app, id, { content: 'Decide' })
  t.equal(res.statusCode, 201, res.body)
  t.same(res.json().replies.map((r: { agent: string }) => r.agent), ['writer', 'assistant', 'coder'], 'its pick, then round-robin twice')
  t.same(res.json().round, { turns: 3, stop: 'manager' })
  const boss1 = stub.chatRequests().find(boss)!
  t.match(boss1.messages[0]!.content, /Candidates:\n- assistant: Assistant/)
  t.notMatch(boss1.messages[0]!.content, /FINISH/, 'no FINISH before the first turn')
  const selected = (await events(app, id)).filter((e) => e.type === 'agent.selected').map((e) => [e.agentId, e.data.reason])
  t.same(selected, [['writer', 'manager'], ['assistant', 'round-robin'], ['coder', 'round-robin']])

  // A manager that errors, then one that hangs past GROUP_MANAGER_TIMEOUT_MS: the round goes on.
  stub.enqueue({ status: 500 }, { when: boss })
  stub.enqueue({ hang: true }, { when: boss, times: 3 })
  const started = Date.now()
  const slow = await post(app, id, { content: 'Again' })
  t.equal(slow.statusCode, 201, slow.body)
  t.same(slow.json().round, { turns: 4, stop: 'max_turns' }, 'never stalls, never past maxTurns')
  t.same(slow.json().replies.map((r: { agent: string }) => r.agent), ['writer', 'assistant', 'coder', 'writer'], 'round-robin after the last speaker')
  t.ok(Date.now() - started < 10_000, 'bounded by the manager timeout per turn')
  const metrics = (await service.ops.inject('/metrics')).body
  t.match(metrics, /smalltalk_group_speaker_selections_total\{strategy="round-robin",outcome="fallback"\} 6/)
})

t.test('a failed turn is recorded and skipped; a round where every agent fails answers the failure', async (t) => {
  const { stub, base, app } = await world(t)
  const id = await groupSession(app)
  stub.enqueue({ status: 400, errorMessage: 'bad model' }, { when: byModel('claude-test') })
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'Hello' })
  const names = res.events.map((e) => e.event)
  t.same(names.filter((n) => n !== 'delta'), ['message', 'agent', 'turn', 'agent', 'error', 'agent', 'turn', 'done'])
  const failed = data(res.events.find((e) => e.event === 'error'))
  t.match(failed, { statusCode: 502, code: 'LLM_REQUEST_REJECTED', turn: 2 })
  const done = data(res.events.at(-1))
  t.same(done.round, { turns: 3, stop: 'max_turns' })
  t.same(done.replies.map((r: { agent: string }) => r.agent), ['assistant', 'writer'])
  t.equal(stub.chatRequests().filter(byModel('gpt-test')).length, 1, 'no fallback inside a group: the coder\'s fallback (assistant) did not answer for it')
  const failedEvent = (await events(app, id)).find((e) => e.type === 'agent.failed')
  t.match(failedEvent, { agentId: 'coder', data: { turn: 2, code: 'LLM_REQUEST_REJECTED' } })
  const ids = res.events.map((e) => e.id)
  t.equal(new Set(ids).size, ids.length, 'every event has its own id')

  stub.setDefault({ status: 400 })
  const all = await post(app, id, { content: 'Anyone?' })
  t.equal(all.statusCode, 502, 'every agent failed: the failure')
  t.match(all.json(), { code: 'LLM_REQUEST_REJECTED', details: { messageId: String } })
  const last = (await events(app, id)).filter((e) => e.type === 'round.finished').at(-1)
  t.match(last, { data: { turns: 3, stop: 'error' } })
  t.equal((await history(app, id)).at(-1)!.content, 'Anyone?', 'the user message stays stored')
})

t.test('SSE round: message, then per turn agent, deltas and turn, then done; a retry with the same Idempotency-Key replays the whole round', async (t) => {
  const { stub, base, app } = await world(t)
  const id = await groupSession(app, { agents: ['coder', 'writer'], mode: 'group' })
  const key = { 'idempotency-key': 'round-1' }
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'Hi all' }, { headers: key })
  t.equal(res.status, 200)
  const agentEvents = res.events.filter((e) => e.event === 'agent').map((e) => data(e))
  t.match(agentEvents, [{ agent: 'coder', name: 'Coder', reason: 'round-robin', turn: 1 }, { agent: 'writer', name: 'Writer', turn: 2 }])
  const turns = res.events.filter((e) => e.event === 'turn').map((e) => data(e))
  const deltas = (from: number, to: number) => res.events.slice(from, to).filter((e) => e.event === 'delta').map((e) => data(e).text).join('')
  const firstTurn = res.events.findIndex((e) => e.event === 'turn')
  t.equal(deltas(0, firstTurn), turns[0].content, 'the deltas of a turn add up to its stored message')
  const done = data(res.events.at(-1))
  t.same(done.replies, turns)
  t.same(done.round, { turns: 2, stop: 'max_turns' })

  const calls = stub.chatRequests().length
  const json = await post(app, id, { content: 'Hi all' }, key)
  t.equal(json.statusCode, 201)
  t.equal(json.headers['idempotent-replayed'], 'true')
  t.same(json.json().replies, turns, 'the whole stored round')
  const replay = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'Hi all' }, { headers: key })
  t.same(replay.events.map((e) => e.event), ['message', 'agent', 'delta', 'turn', 'agent', 'delta', 'turn', 'done'])
  t.same(data(replay.events.at(-1)), done)
  t.equal(stub.chatRequests().length, calls, 'no provider call for a retry')
  t.equal((await history(app, id)).length, 3, 'nothing stored twice')
})

t.test('a client that disconnects mid-round: the round finishes and is stored, and the event stream follows it', async (t) => {
  const { stub, base, app } = await world(t)
  const id = await groupSession(app)
  let release!: () => void
  const held = new Promise<void>((resolve) => (release = resolve))
  stub.enqueue({ until: held, text: 'late but stored' }, { when: byModel('claude-test') })
  const feed = sse(`${base}/v1/events/stream?sessionId=${id}&type=round.*`, undefined, { method: 'GET', abortAfter: (e) => e.event === 'round.finished', timeoutMs: 20_000 })
  const res = await sse(`${base}/v1/sessions/${id}/messages`, { content: 'Go' }, { abortAfter: (e) => e.event === 'turn' })
  t.ok(res.aborted, 'the client went away after the first turn')
  release()
  t.ok(await eventually(async () => (await history(app, id)).length === 4), 'every turn stored')
  const stored = await history(app, id)
  t.same(stored.map((m) => m.agent ?? null), [null, 'assistant', 'coder', 'writer'])
  t.equal(stored[2]!.content, 'late but stored')
  const followed = await feed
  t.match(data(followed.events.find((e) => e.event === 'round.finished')), { data: { turns: 3, stop: 'max_turns' } })
})

t.test('one round at a time per session across two replicas: 409 with no provider call, and a DELETE mid-round stops it', async (t) => {
  const a = await world(t)
  const b = await world(t, { DATABASE_URL: a.env.DATABASE_URL!, REDIS_KEY_PREFIX: a.env.REDIS_KEY_PREFIX! }, a.stub)
  const id = await groupSession(a.app)
  let release!: () => void
  const held = new Promise<void>((resolve) => (release = resolve))
  a.stub.enqueue({ until: held }, { when: byModel('claude-test') })
  const round = sse(`${a.base}/v1/sessions/${id}/messages`, { content: 'First' })
  t.ok(await eventually(() => a.stub.chatRequests().length === 2), 'the round is on its second turn')
  const busy = await post(b.app, id, { content: 'Second' })
  t.equal(busy.statusCode, 409)
  t.match(busy.json(), { code: 'SESSION_BUSY' })
  t.ok(busy.headers['retry-after'])
  t.equal(a.stub.chatRequests().length, 2, 'the refused post asked no model')

  const deleted = await b.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })
  t.equal(deleted.statusCode, 204)
  release()
  const res = await round
  const names = res.events.map((e) => e.event)
  t.notOk(names.includes('done'), 'no done')
  t.match(data(res.events.at(-1)), { statusCode: 410, code: 'SESSION_INVALIDATED' })
  t.equal(a.stub.chatRequests().length, 2, 'no turn after the session ended')
  const { rows } = await a.app.pg.pool.query('SELECT count(*)::int AS n FROM chat_messages WHERE session_id = $1', [id])
  t.equal(rows[0].n, 2, 'the user message and the first turn only')
})

t.test('GROUP_ROUND_TIMEOUT_MS ends a round (the running turn is cut, the stored turns stay); shutdown starts no new turn', async (t) => {
  const { stub, app, base, service } = await world(t, { GROUP_ROUND_TIMEOUT_MS: '1500' })
  const id = await groupSession(app)
  stub.enqueue({ hang: true }, { when: byModel('claude-test') })
  const res = await post(app, id, { content: 'Slow' })
  t.equal(res.statusCode, 201, res.body)
  t.same(res.json().round, { turns: 2, stop: 'timeout' })
  t.same(res.json().replies.map((r: { agent: string }) => r.agent), ['assistant'])
  t.match((await events(app, id)).find((e) => e.type === 'agent.failed'), { agentId: 'coder', data: { code: 'ROUND_TIMEOUT', turn: 2 } })

  let release!: () => void
  const held = new Promise<void>((resolve) => (release = resolve))
  stub.enqueue({ until: held, text: 'finished during shutdown' }, { when: byModel('claude-test') })
  const round = sse(`${base}/v1/sessions/${id}/messages`, { content: 'Before SIGTERM' })
  t.ok(await eventually(() => stub.chatRequests().filter(byModel('claude-test')).length === 2), 'the coder is asked')
  service.lifecycle.beginShutdown()
  release()
  const streamed = await round
  // Round-robin goes on after the last speaker who answered (the assistant): the coder first.
  t.same(streamed.events.filter((e) => e.event === 'turn').map((e) => data(e).agent), ['coder'], 'the running turn finished and was sent')
  t.match(data(streamed.events.at(-1)), { code: 'SHUTTING_DOWN', details: { round: { stop: 'shutdown', turns: 1 } } })
  t.equal(streamed.events.at(-1)!.event, 'error')
  t.equal(stub.chatRequests().filter(byModel('gemini-test')).length, 0, 'no turn started after shutdown began')
  const stored = await history(app, id)
  t.equal(stored.at(-1)!.content, 'finished during shutdown', 'turns already stored stay')
  t.match((await events(app, id)).filter((e) => e.type === 'round.finished').at(-1), { data: { stop: 'shutdown', turns: 1 } })
})
