import t from 'tap'
import OpenAI from 'openai'
import { KEY, OTHER_KEY, client, openAiWorld } from '../support/openai-world.js'

// The OpenAI-compatible API driven by the official `openai` npm client, as any OpenAI tool would:
// models, JSON and streamed completions with usage, the errors as the SDK's own classes, `store`
// and session continuation.

const chat = (request: { kind: string }) => request.kind === 'chat'

t.test('models.list names one model per agent and one per group preset; a wrong key is the SDK\'s AuthenticationError', async (t) => {
  const { base, client: sdk } = await openAiWorld(t)
  const models = []
  for await (const model of sdk.models.list()) models.push(model)
  t.same(models.map((m) => m.id), ['assistant', 'coder', 'group:pair'])
  t.same(await sdk.models.retrieve('group:pair'), { ...models[2] }, 'a group model')
  t.match(models[0], { object: 'model', created: Number, owned_by: 'smalltalk' })
  t.same(await sdk.models.retrieve('coder'), { ...models[1] }, 'models.retrieve')
  const missing = await sdk.models.retrieve('gpt-4o').then(() => undefined, (e: unknown) => e)
  t.ok(missing instanceof OpenAI.NotFoundError)
  t.match(missing, { code: 'model_not_found', param: 'model' })

  const err = await client(base, 'not-a-key').models.list().then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof OpenAI.AuthenticationError, 'AuthenticationError')
  t.match(err, { status: 401, code: 'invalid_api_key', type: 'invalid_request_error' })
  const completion = await client(base, 'not-a-key').chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }] }).then(() => undefined, (e: unknown) => e)
  t.ok(completion instanceof OpenAI.AuthenticationError, 'on completions too')
})

t.test('a JSON completion: the agent\'s prompt first, the caller\'s system text after it, the messages as context, overrides and usage', async (t) => {
  const { stub, client: sdk } = await openAiWorld(t)
  stub.setDefault({ text: 'Paris, of course.', usage: { inputTokens: 21, outputTokens: 4 } })
  const completion = await sdk.chat.completions.create({
    model: 'assistant',
    messages: [
      { role: 'system', content: 'Answer in one line.' },
      { role: 'user', content: 'Capital of Italy?' },
      { role: 'assistant', content: 'Rome.' },
      { role: 'user', content: [{ type: 'text', text: 'And of' }, { type: 'text', text: 'France?' }] }
    ],
    temperature: 1.5,
    max_completion_tokens: 50,
    user: 'end-user-7'
  })
  t.match(completion, {
    id: /^chatcmpl-[0-9a-f]{32}$/,
    object: 'chat.completion',
    model: 'assistant',
    choices: [{ index: 0, message: { role: 'assistant', content: 'Paris, of course.' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 21, completion_tokens: 4, total_tokens: 25 }
  })
  const sent = stub.chatRequests().at(-1)!
  t.equal(sent.model, 'gpt-test', 'the agent\'s provider model')
  t.equal(sent.system, 'You are Assistant.\n\nAnswer in one line.')
  t.same(sent.messages.filter((m) => m.role !== 'system'), [
    { role: 'user', content: 'Capital of Italy?' },
    { role: 'assistant', content: 'Rome.' },
    { role: 'user', content: 'And of\nFrance?' }
  ])
  t.equal(sent.temperature, 1.5)
  t.equal(sent.maxTokens, 50)
  t.equal(sent.stream, false, 'a JSON answer asks the provider for the whole answer')

  await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'x' }], max_tokens: 7 })
  t.match(stub.chatRequests().at(-1), { maxTokens: 7, temperature: 0.3, system: 'You are Assistant.' }, 'max_tokens, and the agent\'s own settings otherwise')
})

t.test('a streamed completion with include_usage: the deltas as they come, then the usage chunk', async (t) => {
  const { stub, client: sdk } = await openAiWorld(t)
  stub.setDefault({ text: ['Once', ' upon', ' a time.'], usage: { inputTokens: 9, outputTokens: 3 } })
  const stream = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'A story?' }], stream: true, stream_options: { include_usage: true } })
  const chunks = []
  for await (const chunk of stream) chunks.push(chunk)
  t.equal(chunks[0]?.choices[0]?.delta.role, 'assistant', 'the first delta has the role')
  t.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), 'Once upon a time.')
  t.same(chunks.filter((c) => c.choices.length > 0).map((c) => c.choices[0]?.delta.content).slice(1, 4), ['Once', ' upon', ' a time.'], 'one chunk per provider delta')
  t.equal(chunks.at(-2)?.choices[0]?.finish_reason, 'stop')
  t.same(chunks.at(-1)?.choices, [])
  t.same(chunks.at(-1)?.usage, { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 })
  t.ok(new Set(chunks.map((c) => c.id)).size === 1, 'one id for every chunk')
  t.equal(stub.chatRequests().at(-1)?.stream, true, 'the provider streams')

  // The SDK's stream helper (what many tools use) reads the same chunks into a final message.
  const runner = sdk.chat.completions.stream({ model: 'assistant', messages: [{ role: 'user', content: 'Again?' }] })
  const final = await runner.finalChatCompletion()
  t.equal(final.choices[0]?.message.content, 'Once upon a time.')
})

t.test('errors are the SDK\'s classes with OpenAI\'s code and param', async (t) => {
  const { stub, client: sdk } = await openAiWorld(t, { LLM_MAX_RETRIES: '1', LLM_BREAKER_FAILURES: '100' })
  const fail = (body: Record<string, unknown>) =>
    sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }], ...body } as never).then(() => undefined, (e: unknown) => e)

  const unknown = await fail({ model: 'gpt-4o' })
  t.ok(unknown instanceof OpenAI.NotFoundError, 'an unknown model: NotFoundError')
  t.match(unknown, { status: 404, code: 'model_not_found', param: 'model', type: 'invalid_request_error' })

  const image = await fail({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }, { type: 'image_url', image_url: { url: 'data:,' } }] }] })
  t.ok(image instanceof OpenAI.BadRequestError, 'an image part: BadRequestError')
  t.match(image, { status: 400, param: 'messages[0].content[1].type', message: /text content parts/ })

  const hot = await fail({ temperature: 3 })
  t.ok(hot instanceof OpenAI.BadRequestError)
  t.match(hot, { param: 'temperature', type: 'invalid_request_error' })

  const tool = await fail({ messages: [{ role: 'tool', content: 'x', tool_call_id: 'a' }] })
  t.match(tool, { status: 400, param: 'messages[0].role' })

  const onlySystem = await fail({ messages: [{ role: 'system', content: 'You are nice.' }] })
  t.match(onlySystem, { status: 400, param: 'messages' })

  const two = await fail({ n: 2 })
  t.match(two, { status: 400, param: 'n' })

  stub.enqueue({ status: 500 }, { times: 2, when: chat })
  const provider = await fail({})
  t.ok(provider instanceof OpenAI.InternalServerError, 'a provider failing after the retries: InternalServerError')
  t.match(provider, { status: 502, type: 'server_error', code: 'llm_error' })

  stub.enqueue({ status: 401 }, { when: chat })
  const credentials = await fail({})
  t.match(credentials, { status: 502, code: 'llm_auth_error' })

  stub.enqueue({ status: 500 }, { times: 2, when: chat })
  const streamed = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }], stream: true }).then(() => undefined, (e: unknown) => e)
  t.ok(streamed instanceof OpenAI.InternalServerError, 'a failure before the first delta is an HTTP error, even for a stream')

  stub.enqueue({ text: ['one', ' two', ' three'], cutAfter: 2 }, { when: chat })
  const cut = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }], stream: true })
  const seen: string[] = []
  const broke = await (async () => { for await (const chunk of cut) seen.push(chunk.choices[0]?.delta.content ?? '') })().then(() => undefined, (e: unknown) => e)
  t.ok(broke instanceof OpenAI.APIError, 'a stream cut after its first delta raises an APIError in the loop')
  t.match(broke, { code: 'llm_stream_interrupted', type: 'server_error' })
  t.equal(seen.join(''), 'one two', 'after the deltas that were sent')
})

t.test('the fallback of a failing agent answers, and the deadline is a 504', async (t) => {
  const { stub, client: sdk } = await openAiWorld(t, { LLM_MAX_RETRIES: '0', LLM_TIMEOUT_MS: '800' })
  stub.enqueue({ status: 500 }, { when: (r) => r.kind === 'chat' && r.protocol === 'anthropic' })
  stub.enqueue({ text: 'Assistant here.' }, { when: (r) => r.kind === 'chat' && r.protocol === 'openai' })
  const completion = await sdk.chat.completions.create({ model: 'coder', messages: [{ role: 'user', content: 'fix my bug' }] })
  t.equal(completion.choices[0]?.message.content, 'Assistant here.', 'coder failed; its fallback answered')
  t.same(stub.chatRequests().map((r) => r.protocol), ['anthropic', 'openai'])

  stub.enqueue({ hang: true }, { when: chat })
  const slow = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }] }).then(() => undefined, (e: unknown) => e)
  t.ok(slow instanceof OpenAI.InternalServerError)
  t.match(slow, { status: 504, code: 'llm_timeout' })
})

t.test('store: true keeps the exchange in a session of the caller\'s tenant; x-smalltalk-session-id continues it', async (t) => {
  const { base, app, stub, client: sdk } = await openAiWorld(t)
  stub.setDefault((request) => ({ text: `reply ${stub.chatRequests().length}`, usage: { inputTokens: request.messages.length, outputTokens: 2 } }))
  const { data: first, response } = await sdk.chat.completions.create({
    model: 'assistant',
    store: true,
    metadata: { app: 'notes' },
    messages: [{ role: 'user', content: 'Earlier question' }, { role: 'assistant', content: 'Earlier answer' }, { role: 'user', content: 'Remember 42.' }]
  }).withResponse()
  const sessionId = response.headers.get('x-smalltalk-session-id')
  t.match(sessionId, /^[0-9a-f-]{36}$/, 'the session id in the header')
  t.equal(first.choices[0]?.message.content, 'reply 1')
  t.same(stub.chatRequests()[0]?.messages.map((m) => m.content), ['Earlier question', 'Earlier answer', 'Remember 42.'], 'the earlier turns were the context')

  const auth = { authorization: `Bearer ${KEY}` }
  const session = (await app.inject({ url: `/v1/sessions/${sessionId}`, headers: auth })).json()
  t.match(session, { status: 'active', agents: ['assistant'], metadata: { app: 'notes' }, messageCount: 2 })
  const stored = (await app.inject({ url: `/v1/sessions/${sessionId}/messages`, headers: auth })).json().messages
  t.match(stored, [{ role: 'user', content: 'Remember 42.', metadata: { app: 'notes' } }, { role: 'assistant', content: 'reply 1', agent: 'assistant' }], 'the newest user message and the reply')
  t.equal((await app.inject({ url: `/v1/sessions/${sessionId}`, headers: { authorization: `Bearer ${OTHER_KEY}` } })).statusCode, 404, 'another tenant does not see it')

  // Continuation: only the newest user message is taken; the context is the stored history.
  const stream = await sdk.chat.completions.create(
    { model: 'assistant', stream: true, messages: [{ role: 'user', content: 'ignored, the history holds it' }, { role: 'user', content: 'What number?' }] },
    { headers: { 'x-smalltalk-session-id': sessionId! } }
  )
  let text = ''
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ''
  t.equal(text, 'reply 2')
  t.same(stub.chatRequests()[1]?.messages.map((m) => m.content), ['Remember 42.', 'reply 1', 'What number?'])
  const after = (await app.inject({ url: `/v1/sessions/${sessionId}/messages`, headers: auth })).json().messages
  t.same(after.map((m: { content: string }) => m.content), ['Remember 42.', 'reply 1', 'What number?', 'reply 2'])
  const events = (await app.inject({ url: `/v1/events?sessionId=${sessionId}`, headers: auth })).json().events.map((e: { type: string }) => e.type)
  t.ok(events.includes('session.created') && events.filter((e: string) => e === 'message.created').length === 4, `the native events: ${events}`)

  // Unknown, another tenant's, deleted: OpenAI-shaped 404 and 410.
  const fail = (id: string, key = KEY) => client(base, key).chat.completions.create(
    { model: 'assistant', messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-smalltalk-session-id': id } }
  ).then(() => undefined, (e: unknown) => e)
  const unknown = await fail('00000000-0000-4000-8000-000000000000')
  t.ok(unknown instanceof OpenAI.NotFoundError)
  t.match(unknown, { code: 'session_not_found' })
  t.ok(await fail(sessionId!, OTHER_KEY) instanceof OpenAI.NotFoundError, 'another tenant\'s session is unknown')
  t.match(await fail('not-a-uuid'), { status: 400, param: 'x-smalltalk-session-id' })
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sessions/${sessionId}`, headers: auth })).statusCode, 204)
  const gone = await fail(sessionId!)
  t.ok(gone instanceof OpenAI.APIError)
  t.match(gone, { status: 410, code: 'session_invalidated' })

  const notUser = await sdk.chat.completions.create({ model: 'assistant', store: true, messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }).then(() => undefined, (e: unknown) => e)
  t.match(notUser, { status: 400, param: 'messages[1].role' }, 'a stored exchange answers a user message')
})

t.test('a second message while the session\'s reply runs is the SDK\'s ConflictError', async (t) => {
  const { stub, client: sdk } = await openAiWorld(t)
  const { response } = await sdk.chat.completions.create({ model: 'assistant', store: true, messages: [{ role: 'user', content: 'hello' }] }).withResponse()
  const sessionId = response.headers.get('x-smalltalk-session-id')!
  let release!: () => void
  stub.enqueue({ until: new Promise<void>((resolve) => { release = resolve }), text: 'slow reply' }, { when: chat })
  const options = { headers: { 'x-smalltalk-session-id': sessionId } }
  const running = sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'first' }] }, options)
  await stub.waitForRequests(stub.requests.length + 1)
  const busy = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'second' }] }, options).then(() => undefined, (e: unknown) => e)
  t.ok(busy instanceof OpenAI.ConflictError, 'ConflictError')
  t.match(busy, { status: 409, code: 'session_busy' })
  t.match((busy as InstanceType<typeof OpenAI.APIError>).headers?.get('retry-after'), /^\d+$/, 'with Retry-After (the SDK waits it when it retries)')
  release()
  t.equal((await running).choices[0]?.message.content, 'slow reply')

  const wrongModel = await sdk.chat.completions.create({ model: 'coder', messages: [{ role: 'user', content: 'x' }] }, options).then(() => undefined, (e: unknown) => e)
  t.match(wrongModel, { status: 400, param: 'model', code: 'agent_not_in_session' }, 'the model must be one of the session\'s agents')
})

t.test('a 429 raised before the handler (as an admission check raises it) is the SDK\'s RateLimitError', async (t) => {
  // A stand-in for the per-tenant limits: any hook that rejects with 429 gets OpenAI's shape here.
  const { client: sdk } = await openAiWorld(t, {}, (app) => {
    app.addHook('preHandler', async (request, reply) => {
      if (request.headers['x-test-limit'] === undefined) return
      reply.header('retry-after', '7')
      throw app.httpErrors.tooManyRequests('Too many messages for this tenant')
    })
  })
  const limited = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'hi' }] }, { headers: { 'x-test-limit': '1' } }).then(() => undefined, (e: unknown) => e)
  t.ok(limited instanceof OpenAI.RateLimitError, 'RateLimitError')
  t.match(limited, { status: 429, type: 'rate_limit_error', code: 'rate_limit_exceeded', message: /Too many messages/ })
  t.equal((limited as InstanceType<typeof OpenAI.APIError>).headers?.get('retry-after'), '7')
})

t.test('continuing a group session runs a round: one assistant message labelling each speaker, streamed alike', async (t) => {
  const { app, stub, client: sdk } = await openAiWorld(t)
  stub.setDefault((request) => ({ text: request.protocol === 'openai' ? 'I am the generalist.' : 'I write code.', usage: { inputTokens: 3, outputTokens: 4 } }))
  const auth = { authorization: `Bearer ${KEY}` }
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth, payload: { agents: ['assistant', 'coder'], mode: 'group', group: { strategy: 'round-robin', maxTurns: 2 } } })
  t.equal(created.statusCode, 201, created.body)
  const options = { headers: { 'x-smalltalk-session-id': created.json().id as string } }

  const completion = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'Who are you both?' }] }, options)
  t.equal(completion.choices[0]?.message.content, '**Assistant:** I am the generalist.\n\n**Coder:** I write code.')
  t.same(completion.usage, { prompt_tokens: 6, completion_tokens: 8, total_tokens: 14 }, 'the turns\' usage added up')

  const stream = await sdk.chat.completions.create({ model: 'assistant', messages: [{ role: 'user', content: 'Again?' }], stream: true }, options)
  let text = ''
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ''
  t.equal(text, '**Assistant:** I am the generalist.\n\n**Coder:** I write code.', 'the stream carries the same labels')
  const stored = (await app.inject({ url: `/v1/sessions/${created.json().id}/messages`, headers: auth })).json().messages
  t.same(stored.map((m: { agent?: string }) => m.agent ?? 'user'), ['user', 'assistant', 'coder', 'user', 'assistant', 'coder'], 'each turn stored as its own message')
})

t.test('a group model runs a round: stateless by default (nothing stored), or kept with store: true as a session of the preset', async (t) => {
  const { app, stub, client: sdk } = await openAiWorld(t)
  stub.setDefault((request) => ({ text: request.protocol === 'openai' ? 'Plan first.' : 'Then code.', usage: { inputTokens: 2, outputTokens: 2 } }))
  const auth = { authorization: `Bearer ${KEY}` }
  const sessionsBefore = (await app.inject({ url: '/v1/sessions', headers: auth })).json().sessions.length

  const completion = await sdk.chat.completions.create({ model: 'group:pair', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Earlier' }, { role: 'assistant', content: 'Noted' }, { role: 'user', content: 'How do we start?' }] })
  t.equal(completion.model, 'group:pair')
  t.equal(completion.choices[0]?.message.content, '**Assistant:** Plan first.\n\n**Coder:** Then code.', 'each speaker labelled')
  t.same(completion.usage, { prompt_tokens: 4, completion_tokens: 4, total_tokens: 8 })
  const [first, second] = stub.chatRequests()
  t.same(first!.messages.map((m) => m.content), ['Earlier', 'Noted', 'How do we start?'], 'the caller\'s messages are the context')
  t.match(second!.messages.at(-1)!.content, /How do we start\?\n\n\[Assistant\]: Plan first\./, 'the second speaker sees the first one, by name')
  t.equal((await app.inject({ url: '/v1/sessions', headers: auth })).json().sessions.length, sessionsBefore, 'stateless: no session stored')

  const stream = await sdk.chat.completions.create({ model: 'group:pair', messages: [{ role: 'user', content: 'Streamed?' }], stream: true })
  let text = ''
  for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ''
  t.equal(text, '**Assistant:** Plan first.\n\n**Coder:** Then code.', 'streamed with the same labels')

  const { data: kept, response } = await sdk.chat.completions.create({ model: 'group:pair', messages: [{ role: 'user', content: 'Keep this' }], store: true }).withResponse()
  const id = response.headers.get('x-smalltalk-session-id') as string
  t.ok(id, 'the session id')
  t.match(kept.choices[0]?.message.content, /\*\*Coder:\*\* Then code\./)
  const session = (await app.inject({ url: `/v1/sessions/${id}`, headers: auth })).json()
  t.match(session, { mode: 'group', agents: ['assistant', 'coder'], group: { preset: 'pair', strategy: 'round-robin' } })
  const stored = (await app.inject({ url: `/v1/sessions/${id}/messages`, headers: auth })).json().messages
  t.same(stored.map((m: { agent?: string }) => m.agent ?? 'user'), ['user', 'assistant', 'coder'])

  const missing = await sdk.chat.completions.create({ model: 'group:nope', messages: [{ role: 'user', content: 'x' }] }).then(() => undefined, (e: unknown) => e)
  t.ok(missing instanceof OpenAI.NotFoundError, 'an unknown preset is an unknown model')
})
