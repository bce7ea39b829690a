import t from 'tap'
import { KEY, openAiWorld } from '../support/openai-world.js'

// The wire details of the OpenAI-compatible API that the SDK hides: the exact JSON and chunk frames,
// the error bodies of every kind of rejection, unknown fields ignored, idempotent continuation, the
// native routes left in their own error shape, and the metrics.

const chat = (request: { kind: string }) => request.kind === 'chat'
const json = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }
const hi = [{ role: 'user', content: 'hi' }]

function post (base: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { ...json, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
}

t.test('the JSON answer has exactly OpenAI\'s fields', async (t) => {
  const { base, stub } = await openAiWorld(t)
  stub.setDefault({ text: 'Hello world', usage: { inputTokens: 5, outputTokens: 2 } })
  const res = await post(base, { model: 'assistant', messages: hi })
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^application\/json/)
  const body = await res.json()
  t.same(Object.keys(body), ['id', 'object', 'created', 'model', 'choices', 'usage'])
  t.same(body.choices, [{ index: 0, message: { role: 'assistant', content: 'Hello world', refusal: null }, logprobs: null, finish_reason: 'stop' }])
  t.ok(Number.isInteger(body.created) && Math.abs(body.created - Date.now() / 1000) < 60, 'created in Unix seconds')
  t.same(body.usage, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })
})

t.test('a stream is data-only frames: the role, the deltas, finish_reason, the usage when asked, [DONE]', async (t) => {
  const { base, stub } = await openAiWorld(t)
  stub.setDefault({ text: ['Hel', 'lo'], usage: { inputTokens: 5, outputTokens: 2 } })
  for (const includeUsage of [true, false]) {
    const res = await post(base, { model: 'assistant', messages: hi, stream: true, ...(includeUsage ? { stream_options: { include_usage: true } } : {}) })
    t.equal(res.status, 200)
    t.match(res.headers.get('content-type'), /^text\/event-stream/)
    const text = await res.text()
    t.ok(text.endsWith('\n\ndata: [DONE]\n\n'), 'ends with [DONE]')
    const frames = text.split('\n\n').filter(Boolean)
    t.ok(frames.every((frame) => frame.startsWith('data: ') && !frame.includes('\n')), 'one data line per frame, no event or id field')
    const chunks = frames.slice(0, -1).map((frame) => JSON.parse(frame.slice(6)))
    t.same(Object.keys(chunks[0]), ['id', 'object', 'created', 'model', 'choices', ...(includeUsage ? ['usage'] : [])])
    t.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id && c.model === 'assistant'))
    t.same(chunks.slice(0, 4).map((c) => c.choices[0]), [
      { index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null },
      { index: 0, delta: { content: 'Hel' }, logprobs: null, finish_reason: null },
      { index: 0, delta: { content: 'lo' }, logprobs: null, finish_reason: null },
      { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }
    ])
    if (includeUsage) {
      t.equal(chunks.length, 5)
      t.ok(chunks.slice(0, 4).every((c) => c.usage === null), 'usage: null on the choice chunks')
      t.same(chunks[4].choices, [])
      t.same(chunks[4].usage, { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 })
    } else {
      t.equal(chunks.length, 4, 'no usage chunk unless asked')
    }
  }

  stub.enqueue({ text: ['one', ' two', ' three'], streamError: { after: 1, message: 'overloaded' } }, { when: chat })
  const res = await post(base, { model: 'assistant', messages: hi, stream: true })
  const text = await res.text()
  const last = JSON.parse(text.split('\n\n').filter(Boolean).at(-1)!.slice(6))
  t.match(last, { error: { type: 'server_error', code: 'llm_stream_interrupted', param: null, message: String } }, 'a failure mid-stream is an error frame')
  t.notOk(text.includes('[DONE]'), 'and no [DONE]')
})

t.test('every rejection has OpenAI\'s error shape on these routes, and only on these', async (t) => {
  const { base, app } = await openAiWorld(t, { BODY_LIMIT: '2048', METADATA_MAX_BYTES: '64' })
  const shape = { error: { message: String, type: String } }
  const noKey = await fetch(`${base}/v1/models`)
  t.equal(noKey.status, 401)
  t.equal(noKey.headers.get('www-authenticate'), 'Bearer realm="smalltalk"')
  t.same(await noKey.json(), { error: { message: 'Missing API key: send Authorization: Bearer <key>', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } })
  const badKey = await post(base, { model: 'assistant', messages: hi }, { authorization: 'Bearer nope' })
  t.match(await badKey.json(), { error: { code: 'invalid_api_key', message: 'Invalid API key' } })

  const malformed = await post(base, '{"model": ')
  t.equal(malformed.status, 400)
  t.match(await malformed.json(), shape)
  const missing = await post(base, { model: 'assistant' })
  t.match(await missing.json(), { error: { type: 'invalid_request_error', param: 'messages', code: null } })
  const emptyModel = await post(base, { model: '', messages: hi })
  t.match(await emptyModel.json(), { error: { param: 'model' } })
  const badPart = await post(base, { model: 'assistant', messages: [{ role: 'user', content: [{ type: 'text' }] }] })
  t.match(await badPart.json(), { error: { param: 'messages[0].content[0].text' } })
  const big = await post(base, { model: 'assistant', messages: [{ role: 'user', content: 'x'.repeat(4096) }] })
  t.equal(big.status, 413)
  t.match(await big.json(), shape)
  const media = await post(base, 'hi', { 'content-type': 'text/plain' })
  t.equal(media.status, 415)
  t.match(await media.json(), shape)

  const heavy = await post(base, { model: 'assistant', store: true, metadata: { note: 'y'.repeat(100) }, messages: hi })
  t.equal(heavy.status, 400)
  t.match(await heavy.json(), { error: { param: 'metadata', code: 'metadata_too_large' } })
  const nul = await post(base, { model: 'assistant', store: true, messages: [{ role: 'user', content: 'a\u0000b' }] })
  t.match(await nul.json(), { error: { param: 'messages[0].content', code: 'nul_character' } })
  const long = await post(base, { model: 'assistant', store: true, messages: [{ role: 'user', content: '' }] })
  t.match(await long.json(), { error: { param: 'messages[0].content' } })
  const sessions = (await app.inject({ url: '/v1/sessions', headers: { authorization: `Bearer ${KEY}` } })).json().sessions
  t.same(sessions, [], 'a refused stored exchange leaves no session behind')

  const native = await fetch(`${base}/v1/agents`)
  t.match(await native.json(), { statusCode: 401, error: 'Unauthorized' }, 'the native routes keep their own shape')
})

t.test('fields OpenAI has and these routes do not use are ignored, nulls included', async (t) => {
  const { base, stub } = await openAiWorld(t)
  const res = await post(base, {
    model: 'assistant',
    messages: [{ role: 'developer', content: 'Be terse.', name: 'ops' }, { role: 'user', content: 'hi', name: 'ann' }],
    tools: null,
    response_format: { type: 'text' },
    seed: 7,
    presence_penalty: 0,
    logprobs: false,
    temperature: null,
    max_tokens: null,
    stream: null,
    store: false,
    user: 'u-1',
    metadata: { trace: 'abc' }
  })
  t.equal(res.status, 200, await res.clone().text())
  t.equal((await res.json()).object, 'chat.completion')
  t.match(stub.chatRequests().at(-1), { system: 'You are Assistant.\n\nBe terse.', temperature: 0.3, maxTokens: 200 })
  t.notOk(res.headers.get('x-smalltalk-session-id'), 'nothing stored')
})

t.test('a request that brings its own tools is a 400 that says the agent\'s tools run here; nothing is called', async (t) => {
  const { base, stub } = await openAiWorld(t)
  for (const field of ['tools', 'functions']) {
    const res = await post(base, { model: 'assistant', messages: [{ role: 'user', content: 'hi' }], [field]: [{ type: 'function', function: { name: 'f', parameters: {} } }] })
    t.equal(res.status, 400)
    const body = await res.json()
    t.equal(body.error.param, field)
    t.match(body.error.message, /run by this server/)
  }
  t.equal(stub.chatRequests().length, 0, 'no provider call')
})

t.test('Idempotency-Key on a continuation replays the first answer; a request that creates a session refuses it', async (t) => {
  const { base, stub, app } = await openAiWorld(t)
  stub.setDefault({ text: 'first answer' })
  const created = await post(base, { model: 'assistant', store: true, stream: true, messages: [{ role: 'user', content: 'start' }] })
  const sessionId = created.headers.get('x-smalltalk-session-id')!
  t.match(sessionId, /^[0-9a-f-]{36}$/, 'a stored stream has the session id in its headers')
  t.match(await created.text(), /\[DONE\]/)
  const body = { model: 'assistant', messages: [{ role: 'user', content: 'once' }] }
  const headers = { 'x-smalltalk-session-id': sessionId, 'idempotency-key': 'k-1' }
  const one = await post(base, body, headers)
  t.equal(one.status, 200)
  t.equal(one.headers.get('x-smalltalk-session-id'), sessionId)
  stub.setDefault({ text: 'second answer' })
  const two = await post(base, body, headers)
  t.equal(two.headers.get('idempotent-replayed'), 'true')
  t.equal((await two.json()).choices[0].message.content, 'first answer')
  const streamed = await post(base, { ...body, stream: true }, headers)
  t.equal(streamed.headers.get('idempotent-replayed'), 'true')
  t.match(await streamed.text(), /"content":"first answer".*\[DONE\]/s, 'replayed as a stream too')
  t.equal(stub.chatRequests().length, 2, 'the provider was asked once per stored message')
  const messages = (await app.inject({ url: `/v1/sessions/${sessionId}/messages`, headers: { authorization: `Bearer ${KEY}` } })).json().messages
  t.equal(messages.length, 4, 'stored once')
  const reused = await post(base, { ...body, messages: [{ role: 'user', content: 'other' }] }, headers)
  t.equal(reused.status, 409)
  t.match(await reused.json(), { error: { code: 'idempotency_key_reused' } })

  const refused = await post(base, { model: 'assistant', store: true, messages: hi }, { 'idempotency-key': 'k-2' })
  t.equal(refused.status, 400)
  t.match(await refused.json(), { error: { param: 'idempotency-key' } })
})

t.test('the metrics: the route template label, the completions by mode, the provider calls', async (t) => {
  const { base, stub, registry } = await openAiWorld(t)
  stub.setDefault({ text: 'ok' })
  await post(base, { model: 'assistant', messages: hi })
  await post(base, { model: 'assistant', messages: hi, stream: true }).then((res) => res.text())
  await post(base, { model: 'assistant', messages: hi, store: true })
  await post(base, { model: 'nope', messages: hi })
  await fetch(`${base}/v1/models`, { headers: json })
  const text = await registry.metrics()
  t.match(text, /http_request_duration_seconds_count\{method="POST",route="\/v1\/chat\/completions",status_code="200"\} 3/)
  t.match(text, /http_request_duration_seconds_count\{method="POST",route="\/v1\/chat\/completions",status_code="404"\} 1/)
  t.match(text, /http_request_duration_seconds_count\{method="GET",route="\/v1\/models",status_code="200"\} 1/)
  t.match(text, /smalltalk_openai_completions_total\{mode="stateless",stream="false",outcome="ok"\} 1/)
  t.match(text, /smalltalk_openai_completions_total\{mode="stateless",stream="true",outcome="ok"\} 1/)
  t.match(text, /smalltalk_openai_completions_total\{mode="store",stream="false",outcome="ok"\} 1/)
  t.match(text, /smalltalk_openai_completions_total\{mode="stateless",stream="false",outcome="error"\} 1/)
  t.match(text, /smalltalk_llm_requests_total\{provider="openai",model="gpt-test",outcome="ok"\} 3/)
})

t.test('a client that goes away ends a stateless reply\'s provider call; a stored reply is finished and stored', async (t) => {
  const { base, stub, app, registry } = await openAiWorld(t)
  for (const stream of [true, false]) {
    stub.enqueue({ hang: true }, { when: chat })
    const controller = new AbortController()
    const pending = fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: json, body: JSON.stringify({ model: 'assistant', messages: hi, stream }), signal: controller.signal }).catch((e: unknown) => e)
    await stub.waitForRequests(stub.requests.length + 1)
    t.equal(stub.inFlight, 1, 'the provider is being asked')
    controller.abort()
    await pending
    await stub.idle()
    t.pass(`stream ${stream}: the provider call was given up with the client`)
  }
  t.match(await registry.metrics(), /smalltalk_llm_requests_total\{provider="openai",model="gpt-test",outcome="cancelled"\} 2/)

  let release!: () => void
  stub.enqueue({ until: new Promise<void>((resolve) => { release = resolve }), text: 'kept anyway' }, { when: chat })
  const controller = new AbortController()
  const pending = fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: json, body: JSON.stringify({ model: 'assistant', store: true, messages: [{ role: 'user', content: 'keep this' }] }), signal: controller.signal }).catch((e: unknown) => e)
  await stub.waitForRequests(stub.requests.length + 1)
  controller.abort()
  await pending
  release()
  const auth = { authorization: `Bearer ${KEY}` }
  const [session] = (await app.inject({ url: '/v1/sessions', headers: auth })).json().sessions
  let contents: string[] = []
  for (let i = 0; i < 100 && contents.length < 2; i++) {
    contents = (await app.inject({ url: `/v1/sessions/${session.id}/messages`, headers: auth })).json().messages.map((m: { content: string }) => m.content)
    if (contents.length < 2) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.same(contents, ['keep this', 'kept anyway'])
})

t.test('at the shutdown deadline a running completion ends with a 503 shutting_down', async (t) => {
  const { base, stub, lifecycle } = await openAiWorld(t)
  stub.enqueue({ hang: true }, { when: chat })
  const pending = post(base, { model: 'assistant', messages: hi })
  await stub.waitForRequests(stub.requests.length + 1)
  lifecycle.abortReplies()
  const res = await pending
  t.equal(res.status, 503)
  t.equal(res.headers.get('retry-after'), '1')
  t.match(await res.json(), { error: { type: 'server_error', code: 'shutting_down' } })
})
