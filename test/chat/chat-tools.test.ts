import { join } from 'node:path'
import t from 'tap'
import type { Locator, Page } from 'playwright-core'
import { PROJECT_ROOT } from '../../src/paths.js'
import { eventually } from '../helper.js'
import { launchBrowser, nextPost, openPage, parseEvents, PHONE, startChatServer, type SseEventData } from './support.js'

// Tool calls on the chat page (DESIGN sections 11 and 14) in real headless Chromium against a real
// app whose echo agent has the built-in MCP server's tools (calculator, current_time), started over
// stdio by the service: echo answers a message of `/tool <name> <json>` lines with those calls, and
// once their results are in, with `Echo (<model>): <tool> -> <result>`. Each call shows in its
// reply, collapsed, before the reply's text; live (SSE) and from history alike; its output as text.

const BUILTIN_SERVER = join(PROJECT_ROOT, 'src', 'tools', 'builtin', 'server.ts')

const MANIFEST = `mcpServers:
  - { id: builtin, transport: stdio, command: node, args: [--import, tsx, ${JSON.stringify(BUILTIN_SERVER)}] }
agents:
  - { id: calc, name: Calc Bot, description: Has tools, provider: echo, model: calc-1, systemPrompt: You compute., tools: [builtin] }
  - { id: plain, name: Plain Bot, description: Has no tools, provider: echo, model: plain-1, systemPrompt: You talk. }
`

/** Markup in tool output: were it parsed as HTML, an <img> would exist and its onerror would set window.pwned. */
const MARKUP = '<img src=x onerror="window.pwned=1">'

const browser = await launchBrowser(t)
const server = await startChatServer(t, { ECHO_TOKEN_DELAY_MS: '10' }, MANIFEST)
const connected = await eventually(async () => {
  const res = await server.app.inject('/v1/tools')
  return res.statusCode === 200 && res.json().servers.some((s: { id: string; status: string }) => s.id === 'builtin' && s.status === 'connected')
}, 30_000, 200)
t.ok(connected, 'the built-in MCP server is connected (GET /v1/tools)')

interface Stored { id: string; seq: number; role: string; agent?: string; content: string; metadata?: Record<string, unknown> }
type Event = SseEventData
interface CallShown { open: boolean; summary: string; args: string; resultLabel: string; result: string; error: boolean; detailVisible: boolean; id: string | undefined }

const log = (page: Page) => page.getByRole('log')
const finished = (page: Page, n: number) => page.waitForFunction((count) => document.querySelectorAll('[role=log] article.assistant:not(.streaming)').length >= count, n)

async function storedMessages (id: string): Promise<Stored[]> {
  return (await server.app.inject(`/v1/sessions/${id}/messages`)).json().messages
}

/** The tool calls shown in an article, in order. */
function callsIn (article: Locator): Promise<CallShown[]> {
  return article.locator('details.tool-call').evaluateAll((nodes) => nodes.map((node) => {
    const details = node as HTMLDetailsElement
    const detail = details.querySelector('.tool-detail') as HTMLElement
    return {
      open: details.open,
      summary: (details.querySelector('summary') as HTMLElement).innerText.trim(),
      args: details.querySelector('.tool-args')!.textContent ?? '',
      resultLabel: details.querySelector('.result-label')!.textContent ?? '',
      result: details.querySelector('.tool-result')!.textContent ?? '',
      error: details.classList.contains('error'),
      detailVisible: detail.checkVisibility(),
      id: details.dataset.id
    }
  }))
}

/** The calls' markup, as the live and the history paths must both draw it (a stored call also carries its message id). */
function callMarkup (article: Locator): Promise<string[]> {
  return article.locator('details.tool-call').evaluateAll((nodes) => nodes.map((node) => {
    const copy = node.cloneNode(true) as HTMLElement
    copy.removeAttribute('data-id')
    copy.removeAttribute('open')
    return copy.outerHTML
  }))
}

/** The children of an article in order, by class: the tool calls must come before the reply's text. */
function layout (article: Locator): Promise<string[]> {
  return article.evaluate((node) => [...node.children].map((child) => child.className || child.tagName.toLowerCase()))
}

async function newSession (page: Page, agents: string[]): Promise<string> {
  const res = await server.app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents } })
  const { id } = res.json()
  await page.goto(`${server.url}/chat?session=${id}`)
  // Attached, not visible: on a phone the agents sit in the closed menu.
  await page.locator('#agents .agent-name').first().waitFor({ state: 'attached' })
  return id
}

async function send (page: Page, text: string): Promise<Event[]> {
  const answer = nextPost(page)
  await page.getByRole('textbox', { name: 'Message' }).fill(text)
  await page.getByRole('button', { name: 'Send' }).click()
  return parseEvents(await (await answer).text())
}

let calcSession = ''
let liveMarkup: string[] = []

t.test('live: the call shows collapsed in its reply, before the text, and opens to its arguments and result', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  calcSession = await newSession(page, ['calc'])
  const events = await send(page, '/tool calculator {"expression":"2+3"}')
  await finished(page, 1)

  const names = events.map((event) => event.event)
  t.same(names.slice(0, 4), ['message', 'agent', 'tool_call', 'tool_result'], 'the SSE answer: the call and its result after the agent')
  t.ok(names.indexOf('delta') > names.indexOf('tool_result'), 'before the deltas of the next step')
  t.match(events[2]!.data, { tool: 'calculator', server: 'builtin', arguments: { expression: '2+3' } })
  t.match(events[3]!.data, { callId: events[2]!.data.callId, isError: false, content: '5' })

  const reply = log(page).getByRole('article', { name: /^Calc Bot/ })
  t.same(await layout(reply), ['header', 'tools', 'body'], 'the tool calls sit between the header and the text')
  t.equal(await reply.locator('.body').innerText(), 'Echo (calc-1): calculator -> 5', 'the reply text follows')
  let [call] = await callsIn(reply)
  t.match(call, { open: false, detailVisible: false, error: false }, 'collapsed by default')
  t.match(call!.summary, /^tool\s*calculator · builtin ✓ done$/iu, 'a one-line summary: tool, server, state')
  await shot('01-live-collapsed')

  await reply.locator('details.tool-call > summary').click()
  ;[call] = await callsIn(reply)
  t.match(call, { open: true, detailVisible: true }, 'the summary opens it')
  t.same(JSON.parse(call!.args), { expression: '2+3' }, 'the arguments')
  t.equal(call!.args, JSON.stringify({ expression: '2+3' }, null, 2), 'as pretty JSON')
  t.equal(call!.resultLabel, 'Result')
  t.equal(call!.result, '5', 'the result')
  await shot('02-live-open')

  await reply.locator('details.tool-call > summary').press('Enter')
  t.equal((await callsIn(reply))[0]!.open, false, 'Enter on the focused summary closes it again (keyboard)')
  liveMarkup = await callMarkup(reply)
  t.same(errors, [], 'no errors on the page')
})

t.test('history: the reload shows the same, from the role tool messages (in the dark scheme)', async (t) => {
  const { page, errors, shot } = await openPage(t, browser, { colorScheme: 'dark' })
  await page.goto(`${server.url}/chat?session=${calcSession}`)
  await finished(page, 1)
  const stored = await storedMessages(calcSession)
  t.same(stored.map((message) => message.role), ['user', 'tool', 'assistant'], 'stored: the call between the message and the reply')
  const articles = log(page).getByRole('article')
  t.same(await articles.evaluateAll((nodes) => nodes.map((node) => (node as HTMLElement).dataset.id)), [stored[0]!.id, stored[2]!.id], 'one article per message and reply: the call is in the reply')
  const reply = log(page).getByRole('article', { name: /^Calc Bot/ })
  t.same(await layout(reply), ['header', 'tools', 'body'])
  let [call] = await callsIn(reply)
  t.match(call, { open: false, detailVisible: false, error: false, id: stored[1]!.id })
  t.match(call!.summary, /^tool\s*calculator · builtin ✓ done$/iu, 'the same summary')
  t.same(await callMarkup(reply), liveMarkup, 'drawn exactly as the live answer drew it')
  await reply.locator('details.tool-call > summary').click()
  ;[call] = await callsIn(reply)
  t.equal(call!.args, JSON.stringify({ expression: '2+3' }, null, 2), 'the same arguments')
  t.equal(call!.result, '5', 'the same result')
  t.equal(await reply.locator('.body').innerText(), 'Echo (calc-1): calculator -> 5')
  await shot('03-history-open')
  t.same(errors, [], 'no errors on the page')
})

t.test('tool output is text: markup in arguments and results creates no element; error results are marked', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  const id = await newSession(page, ['calc'])
  // Two calls of one step: the calculator cannot read the markup (an error result), and a tool the
  // agent does not have is refused (an error result naming it).
  const message = [
    `/tool calculator ${JSON.stringify({ expression: MARKUP })}`,
    `/tool no_such_tool ${JSON.stringify({ note: MARKUP })}`
  ].join('\n')
  const events = await send(page, message)
  await finished(page, 1)
  t.same(events.map((event) => event.event).slice(1, 6), ['agent', 'tool_call', 'tool_call', 'tool_result', 'tool_result'], 'both calls, then both results')

  const check = async (when: string) => {
    const reply = log(page).getByRole('article', { name: /^Calc Bot/ })
    for (const summary of await reply.locator('details.tool-call > summary').all()) await summary.click()
    const calls = await callsIn(reply)
    t.equal(calls.length, 2, `${when}: both calls`)
    t.match(calls[0]!.summary, /^tool\s*calculator · builtin ✗ error$/iu, `${when}: the calculator's error, said in words`)
    t.match(calls[1]!.summary, /^tool\s*no_such_tool · no such tool ✗ error$/iu, `${when}: the refused call`)
    t.same(calls.map((call) => [call.error, call.resultLabel]), [[true, 'Error'], [true, 'Error']], `${when}: marked as errors`)
    t.ok(calls[0]!.args.includes(MARKUP.replaceAll('"', '\\"')) && calls[1]!.args.includes(MARKUP.replaceAll('"', '\\"')), `${when}: the arguments show the markup as text`)
    t.match(calls[1]!.result, /no_such_tool is not one of this agent's tools/, `${when}: the refusal`)
    t.match(calls[0]!.result, `Cannot calculate "${MARKUP}"`, `${when}: the calculator's message quotes the markup, as text`)
    t.equal(await page.locator('[role=log] img').count(), 0, `${when}: no <img> was created`)
    t.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined, `${when}: nothing ran`)
  }
  await check('live')
  await shot('04-errors-live')
  t.same((await storedMessages(id)).map((m) => m.role), ['user', 'tool', 'tool', 'assistant'])
  await page.reload()
  await finished(page, 1)
  await check('from history')
  await shot('05-errors-history')
  t.same(errors, [], 'no errors on the page')
})

t.test('a replayed answer (Idempotency-Key) draws the calls as the live one did', async (t) => {
  const { page, errors } = await openPage(t, browser)
  const { id } = (await server.app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['calc'] } })).json()
  await page.goto(`${server.url}/chat`)
  const url = `${server.url}/v1/sessions/${id}/messages`
  const content = '/tool calculator {"expression":"2+3"}\n/tool calculator {"expression":"1/0"}'
  // The page's own SSE reader and renderer, fed the first answer and then its replay.
  const drawn = await page.evaluate(async ({ url, content }) => {
    const { SseParser } = await import('/chat/api.js' as string)
    const { Conversation } = await import('/chat/conversation.js' as string)
    const draw = async () => {
      const log = document.createElement('div')
      const conversation = new Conversation(log, { speakerName: (agent: string) => agent, onError: () => undefined })
      const response = await fetch(url, { method: 'POST', headers: { accept: 'text/event-stream', 'content-type': 'application/json', 'idempotency-key': 'tools-once' }, body: JSON.stringify({ content }) })
      for (const { event, data } of new SseParser().feed(await response.text())) conversation.apply(event, data)
      return { replayed: response.headers.get('idempotent-replayed'), calls: [...log.querySelectorAll('.tool-call')].map((node) => node.outerHTML), text: log.querySelector('article.assistant .body')?.textContent }
    }
    return [await draw(), await draw()]
  }, { url, content })
  t.same(drawn.map((answer) => answer.replayed), [null, 'true'], 'the second answer is the replay')
  t.equal(drawn[0]!.calls.length, 2, 'both calls drawn')
  t.match(drawn[0]!.calls[1], /class="tool-call error"[\s\S]*division by zero/, 'the division by zero is an error result')
  t.same(drawn[1], { ...drawn[0], replayed: 'true' }, 'the replay draws the same calls and text')
  t.same(errors, [], 'no errors on the page')
})

t.test('long arguments scroll inside their bounded box; a phone shows the call without sideways scrolling', async (t) => {
  const { page, errors, shot } = await openPage(t, browser, { viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2 })
  const expression = Array.from({ length: 240 }, (_, i) => String(i % 10)).join(' + ')
  await newSession(page, ['calc'])
  await send(page, `/tool calculator ${JSON.stringify({ expression })}\n/tool current_time {"timeZone":"Europe/Paris"}`)
  await finished(page, 1)
  const reply = log(page).getByRole('article', { name: /^Calc Bot/ })
  const calls = await callsIn(reply)
  t.match(calls.map((call) => call.summary), [/calculator · builtin ✓ done/u, /current_time · builtin ✓ done/u])
  t.equal(calls[0]!.result, String(Array.from({ length: 240 }, (_, i) => i % 10).reduce((a, b) => a + b, 0)), 'the sum')
  t.match(calls[1]!.result, /Europe\/Paris|\+0[12]:00/, 'the time in the zone asked for')
  await shot('06-phone-collapsed')
  await reply.locator('details.tool-call > summary').first().tap()
  const box = await reply.locator('.tool-args').first().evaluate((node) => ({ scroll: node.scrollHeight, client: node.clientHeight, overflow: getComputedStyle(node).overflowY, maxHeight: getComputedStyle(node).maxHeight }))
  t.ok(box.scroll > box.client, `the long arguments scroll (${box.scroll} > ${box.client} px)`)
  t.equal(box.overflow, 'auto')
  t.not(box.maxHeight, 'none', 'the box is bounded')
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  t.ok(overflow <= 0, `no sideways scrolling (${overflow} px)`)
  await reply.locator('details.tool-call').first().evaluate((node) => node.scrollIntoView({ block: 'start' }))
  await shot('07-phone-open')
  t.same(errors, [], 'no errors on the page')
})

t.test('a group round: the calls come within the turn of the agent that made them', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  const res = await server.app.inject({ method: 'POST', url: '/v1/sessions', payload: { mode: 'group', agents: ['calc', 'plain'], group: { maxTurns: 2 } } })
  t.equal(res.statusCode, 201)
  const id = res.json().id
  await page.goto(`${server.url}/chat?session=${id}`)
  await page.locator('#agents .agent-name').first().waitFor()
  await send(page, '/tool calculator {"expression":"6*7"}')
  await page.locator('[role=log] .round-note').waitFor()
  const check = async (when: string) => {
    const calc = log(page).getByRole('article', { name: /^Calc Bot/ })
    const plain = log(page).getByRole('article', { name: /^Plain Bot/ })
    t.match((await callsIn(calc)).map((call) => [call.summary, call.result]), [[/calculator · builtin ✓ done/u, '42']], `${when}: the call in Calc Bot's turn`)
    t.equal(await plain.locator('details.tool-call').count(), 0, `${when}: none in Plain Bot's`)
    t.equal(await calc.locator('.body').innerText(), 'Echo (calc-1): calculator -> 42')
  }
  await check('live')
  await shot('08-group')
  await page.reload()
  await page.locator('[role=log] article.assistant').nth(1).waitFor()
  await check('from history')
  t.same(errors, [], 'no errors on the page')
})

t.test("the page's renderer: a failed reply's pending call, several calls, and a history page that splits an exchange", async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  const result = await page.evaluate(async (markup) => {
    const { Conversation } = await import('/chat/conversation.js' as string)
    const log = document.getElementById('log')!
    const alerts: unknown[] = []
    const conversation = new Conversation(log, { speakerName: (id: string) => id.toUpperCase(), onError: (body: unknown) => alerts.push(body) })
    const at = new Date().toISOString()
    // Live: a call whose result never comes (the reply fails), shown as running until then.
    conversation.apply('message', { id: 'u1', seq: 1, role: 'user', content: 'go', createdAt: at })
    conversation.apply('agent', { agent: 'calc' })
    conversation.apply('tool_call', { callId: 'c1', tool: 'slow', server: 'test', arguments: { ms: 1 } })
    const running = log.querySelector('.tool-call .tool-state')!.textContent
    conversation.apply('error', { statusCode: 504, message: 'out of time' })
    const failed = log.querySelector('.tool-call')!
    // History in two pages: the older one ends with the first call of an exchange whose second
    // call and reply are on the newer page, shown first.
    conversation.clear()
    const tool = (id: string, seq: number, callId: string, content: string, isError = false) => ({ id, seq, role: 'tool', agent: 'calc', content, createdAt: at, metadata: { callId, tool: 'echo', server: 'test', arguments: { text: content }, isError } })
    conversation.append([tool('t2', 3, 'c2', 'second'), { id: 'a1', seq: 4, role: 'assistant', agent: 'calc', content: 'done', createdAt: at }, tool('t3', 5, 'c3', markup, true)])
    conversation.prepend([{ id: 'u2', seq: 1, role: 'user', content: 'two', createdAt: at }, tool('t1', 2, 'c1', 'first')])
    return {
      running,
      failedState: failed.querySelector('.tool-state')!.textContent,
      failedResult: failed.querySelector('.tool-result')!.textContent,
      articles: [...log.querySelectorAll('article')].map((article) => ({
        who: article.querySelector('.who')!.textContent,
        id: (article as HTMLElement).dataset.id,
        calls: [...article.querySelectorAll('.tool-call')].map((call) => [(call as HTMLElement).dataset.id, call.querySelector('.tool-result')!.textContent])
      })),
      images: log.querySelectorAll('img').length,
      alerts: alerts.length
    }
  }, MARKUP)
  t.equal(result.running, 'running…', 'a call is shown running until its result comes')
  t.equal(result.failedState, '– no result', 'a failed reply: its call says it has no result')
  t.equal(result.failedResult, 'No result: the reply ended first.')
  t.same(result.articles, [
    { who: 'You', id: 'u2', calls: [] },
    { who: 'CALC', id: 'a1', calls: [['t1', 'first'], ['t2', 'second']] },
    { who: 'CALC', id: undefined, calls: [['t3', MARKUP]] }
  ], 'the older page\'s call joins its reply, in order; calls with no reply yet get an article of their own; markup stays text')
  t.equal(result.images, 0, 'no element from the markup')
  t.equal(result.alerts, 1)
  await shot('09-renderer')
  t.same(errors, [], 'no errors on the page')
})

t.test("the page's renderer: calls stay with the agent that made them when another agent answers (a fallback, a failed turn)", async (t) => {
  const { page, errors } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  const result = await page.evaluate(async () => {
    const { Conversation } = await import('/chat/conversation.js' as string)
    const at = new Date().toISOString()
    const draw = (log: HTMLElement) => [...log.querySelectorAll('article')].map((article) => ({
      who: article.querySelector('.who')!.textContent,
      classes: [...article.classList].filter((name) => name !== 'message').sort(),
      calls: article.querySelectorAll('.tool-call').length,
      text: article.querySelector('.body')!.textContent
    }))
    const conversation = (log: HTMLElement) => new Conversation(log, { speakerName: (id: string) => id.toUpperCase(), onError: () => undefined })
    // Live: calc calls a tool, then fails; its fallback (the same turn, announced again) answers.
    const live = document.createElement('div')
    const liveConversation = conversation(live)
    liveConversation.apply('message', { id: 'u1', seq: 1, role: 'user', content: 'go', createdAt: at })
    liveConversation.apply('agent', { agent: 'calc' })
    liveConversation.apply('tool_call', { callId: 'c1', tool: 'calculator', server: 'builtin', arguments: {} })
    liveConversation.apply('tool_result', { callId: 'c1', isError: false, content: '1' })
    liveConversation.apply('agent', { agent: 'plain', reason: 'fallback' })
    liveConversation.apply('delta', { text: 'answer' })
    liveConversation.apply('done', { id: 'a1', seq: 3, role: 'assistant', agent: 'plain', content: 'answer', createdAt: at })
    // History: the same exchange as stored.
    const stored = document.createElement('div')
    conversation(stored).append([
      { id: 'u1', seq: 1, role: 'user', content: 'go', createdAt: at },
      { id: 't1', seq: 2, role: 'tool', agent: 'calc', content: '1', createdAt: at, metadata: { callId: 'c1', tool: 'calculator', server: 'builtin', arguments: {}, isError: false } },
      { id: 'a1', seq: 3, role: 'assistant', agent: 'plain', content: 'answer', createdAt: at }
    ])
    // Two model steps whose calls have the same id (echo numbers each step's calls from 1): each result finds its own call.
    const steps = document.createElement('div')
    const stepsConversation = conversation(steps)
    stepsConversation.apply('message', { id: 'u9', seq: 1, role: 'user', content: 'go', createdAt: at })
    stepsConversation.apply('agent', { agent: 'calc' })
    for (const value of ['first', 'second']) {
      stepsConversation.apply('tool_call', { callId: 'echo_call_1', tool: 'calculator', server: 'builtin', arguments: {} })
      stepsConversation.apply('tool_result', { callId: 'echo_call_1', isError: false, content: value })
    }
    const results = [...steps.querySelectorAll('.tool-call')].map((call) => [call.className, call.querySelector('.tool-result')!.textContent])
    return { live: draw(live), stored: draw(stored), results }
  })
  t.same(result.results, [['tool-call ok', 'first'], ['tool-call ok', 'second']], 'a step\'s result goes to its own call when ids repeat across steps')
  const expected = [
    { who: 'You', classes: ['user'], calls: 0, text: 'go' },
    { who: 'CALC', classes: ['assistant', 'tools-only'], calls: 1, text: '' },
    { who: 'PLAIN', classes: ['assistant'], calls: 0, text: 'answer' }
  ]
  t.same(result.live, expected, "live: the call under calc's name, the answer under its fallback's")
  t.same(result.stored, expected, 'from history: the same')
  t.same(errors, [], 'no errors on the page')
})
