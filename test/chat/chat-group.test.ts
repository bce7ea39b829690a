import t from 'tap'
import type { Page } from 'playwright-core'
import { LlmStub } from '../support/llm-stub.js'
import { sse } from '../support/sse.js'
import { launchBrowser, nextPost, openPage, parseEvents, PHONE, startChatServer, type SseEventData } from './support.js'

// Group rounds on the chat page (DESIGN sections 9 and 11) in real headless Chromium against a real
// app: three echo agents and one agent whose provider (a loopback OpenAI stub) refuses every reply
// with a 400. The page's rendering is checked against the SSE answer it really got and against the
// stored messages.

const TEAM = `agents:
  - { id: moderator, name: Moderator, description: Frames the question, provider: echo, model: mod-1, systemPrompt: You moderate. }
  - { id: optimist, name: Optimist, description: Sees the upside, provider: echo, model: opt-1, systemPrompt: You see the upside. }
  - { id: flaky, name: Flaky, description: Its provider refuses every request, provider: openai, model: flaky-1, systemPrompt: You fail. }
  - { id: skeptic, name: Skeptic, description: Looks for the catch, provider: echo, model: skep-1, systemPrompt: You doubt. }
groups:
  - { id: panel, name: Review panel, description: Three views in turn, agents: [moderator, optimist, skeptic], strategy: round-robin }
`

const stub = await LlmStub.start()
t.teardown(() => stub.close())
// Health probes (model listings) succeed, so Flaky stays a candidate; every chat request is refused.
stub.setDefault((request) => (request.kind === 'chat' ? { status: 400, errorMessage: 'The model flaky-1 does not exist' } : {}))

const browser = await launchBrowser(t)
const server = await startChatServer(t, {
  ECHO_TOKEN_DELAY_MS: '10',
  OPENAI_API_KEY: 'sk-test',
  OPENAI_BASE_URL: stub.openaiBaseUrl,
  LLM_MAX_RETRIES: '0'
}, TEAM)

interface Stored { id: string; seq: number; role: string; agent?: string; content: string }
type Event = SseEventData

const articles = (page: Page) => page.getByRole('log').getByRole('article')
const roundNote = (page: Page) => page.locator('[role=log] .round-note')

async function storedMessages (id: string): Promise<Stored[]> {
  return (await server.app.inject(`/v1/sessions/${id}/messages`)).json().messages
}

/** Each article shown: its accessible name's start (the speaker), its meta line, its body, its message id. */
async function shown (page: Page): Promise<Array<{ who: string; meta: string; body: string; id: string | undefined; failed: boolean }>> {
  return articles(page).evaluateAll((nodes) => nodes.map((node) => {
    const article = node as HTMLElement
    return {
      who: document.getElementById(article.getAttribute('aria-labelledby') ?? '')?.textContent ?? '',
      meta: article.querySelector('.meta')?.textContent ?? '',
      body: (article.querySelector('.body') as HTMLElement).innerText,
      id: article.dataset.id,
      failed: article.classList.contains('failed')
    }
  }))
}

const onPageIds = (articles: Array<{ id: string | undefined }>) => articles.filter((article) => article.id !== undefined).map((article) => article.id)

async function startGroup (page: Page): Promise<void> {
  await page.goto(`${server.url}/chat`)
  await page.locator('#agents .agent-name').first().waitFor()
  await page.getByRole('radio', { name: /Group/ }).check()
}

async function send (page: Page, text: string): Promise<Event[]> {
  const answer = nextPost(page)
  await page.getByRole('textbox', { name: 'Message' }).fill(text)
  await page.getByRole('button', { name: 'Send' }).click()
  const events = parseEvents(await (await answer).text())
  await roundNote(page).waitFor()
  return events
}

const question = 'Should we ship the new search page on Friday?'
let presetSession = ''

t.test('a preset from GET /v1/groups: the round turn by turn, each article named by its agent, then from history', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await startGroup(page)
  const preset = page.getByLabel('Group preset')
  t.same(await preset.locator('option').allInnerTexts(), ['None: the agents ticked below', 'Review panel'], 'the presets of GET /v1/groups are offered')
  await preset.selectOption({ label: 'Review panel' })
  await page.getByRole('button', { name: 'New session' }).click()
  await page.waitForURL(/session=/)
  presetSession = new URL(page.url()).searchParams.get('session')!
  const session = (await server.app.inject(`/v1/sessions/${presetSession}`)).json()
  t.match(session, { mode: 'group', agents: ['moderator', 'optimist', 'skeptic'], group: { preset: 'panel', strategy: 'round-robin', maxTurns: 3 } }, 'a group session of the preset')
  await shot('01-preset-picked')

  const events = await send(page, question)
  const stored = await storedMessages(presetSession)
  const replies = stored.filter((message) => message.role === 'assistant')
  t.same(replies.map((message) => message.agent), ['moderator', 'optimist', 'skeptic'], 'three turns stored, in turn')

  // The payloads the page got (DESIGN section 9).
  const agentEvents = events.filter((event) => event.event === 'agent').map((event) => event.data)
  t.match(agentEvents, [{ agent: 'moderator', name: 'Moderator', turn: 1 }, { agent: 'optimist', name: 'Optimist', turn: 2 }, { agent: 'skeptic', name: 'Skeptic', turn: 3 }], 'each agent event carries its turn')
  t.same(events.filter((event) => event.event === 'turn').map((event) => event.data.id), replies.map((reply) => reply.id), 'a turn event per stored reply')
  const done = events.at(-1)!
  t.equal(done.event, 'done')
  t.same(Object.keys(done.data).sort(), ['replies', 'round'])
  t.same(done.data.replies.map((reply: Stored) => reply.id), replies.map((reply) => reply.id), 'done carries the stored replies')
  t.same(done.data.round, { turns: 3, stop: 'max_turns' })

  const onPage = await shown(page)
  t.same(onPage.map((article) => article.who), ['You', 'Moderator', 'Optimist', 'Skeptic'], 'one article per turn, named by its agent')
  t.same(onPage.map((article) => article.id), stored.map((message) => message.id), 'in the order of the stored messages')
  t.same(onPage.map((article) => article.body), stored.map((message) => message.content), 'each with its stored text')
  t.same(onPage.slice(1).map((article) => article.meta.replace(/ · .*/, '')), ['turn 1', 'turn 2', 'turn 3'], 'numbered by turn')
  for (const name of ['Moderator', 'Optimist', 'Skeptic']) {
    t.equal(await page.getByRole('article', { name: new RegExp(`^${name}`) }).count(), 1, `the article named ${name}`)
  }
  t.equal(await roundNote(page).innerText(), 'Round over after 3 turns: the turn limit was reached.', "the round's stop note")
  t.equal(await page.getByRole('alert').isVisible(), false, 'no alert')
  await shot('02-preset-round')

  await page.goto(`${server.url}/chat?session=${presetSession}`)
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 4)
  const reloaded = await shown(page)
  t.same(reloaded.map((article) => [article.who, article.id, article.body]), onPage.map((article) => [article.who, article.id, article.body]), 'after a reload: the same turns from history, same speakers and order')
  await shot('03-preset-reloaded')
  t.same(errors, [], 'no errors on the page')
})

t.test('a replayed round (Idempotency-Key) renders like the live one', async (t) => {
  const session = (await server.app.inject({ method: 'POST', url: '/v1/sessions', payload: { preset: 'panel' } })).json()
  const headers = { 'idempotency-key': 'replay-me' }
  const first = await sse(`${server.url}/v1/sessions/${session.id}/messages`, { content: 'Once only' }, { headers })
  t.equal(first.status, 200)
  const { page, errors } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  // The page's own SSE reader and renderer, fed the replayed answer.
  const replayed = await page.evaluate(async ({ url, headers }) => {
    const { SseParser } = await import('/chat/api.js' as string)
    const { Conversation } = await import('/chat/conversation.js' as string)
    const log = document.createElement('div')
    const alerts: unknown[] = []
    const conversation = new Conversation(log, { speakerName: (id: string) => id.toUpperCase(), onError: (body: unknown) => alerts.push(body) })
    const response = await fetch(url, { method: 'POST', headers: { accept: 'text/event-stream', 'content-type': 'application/json', ...headers }, body: JSON.stringify({ content: 'Once only' }) })
    const parser = new SseParser()
    const events: Array<{ event: string; data: { turn?: number } }> = parser.feed(await response.text())
    for (const { event, data } of events) conversation.apply(event, data)
    return {
      replayedHeader: response.headers.get('idempotent-replayed'),
      turns: events.filter((event) => event.event === 'agent').map((event) => event.data.turn),
      articles: [...log.querySelectorAll('article')].map((article) => ({ who: article.querySelector('.who')!.textContent, id: (article as HTMLElement).dataset.id, body: article.querySelector('.body')!.textContent, meta: article.querySelector('.meta')!.textContent })),
      note: log.querySelector('.round-note')?.textContent,
      alerts
    }
  }, { url: `${server.url}/v1/sessions/${session.id}/messages`, headers })
  const stored = await storedMessages(session.id)
  t.equal(replayed.replayedHeader, 'true', 'the server replayed the first outcome')
  t.same(replayed.turns, [1, 2, 3], 'the replayed agent events carry their turn')
  t.same(replayed.articles.map((article) => article.id), stored.map((message) => message.id), 'one article per stored message, in order, nothing twice')
  t.same(replayed.articles.map((article) => article.who), ['You', 'MODERATOR', 'OPTIMIST', 'SKEPTIC'], 'named by the agents (no name in a replayed agent event: the page names them)')
  t.same(replayed.articles.slice(1).map((article) => article.meta!.replace(/ · .*/, '')), ['turn 1', 'turn 2', 'turn 3'])
  t.equal(replayed.note, 'Round over after 3 turns: the turn limit was reached.')
  t.same(replayed.alerts, [])
  t.same(errors, [], 'no errors on the page')
})

t.test('ticked agents with mode group: a failed turn is shown in its article and in the alert, and the round goes on', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await startGroup(page)
  t.equal(await page.getByLabel('Group preset').inputValue(), '', 'no preset: the ticked agents')
  await page.getByRole('checkbox', { name: /Optimist/ }).uncheck()
  await page.getByRole('button', { name: 'New session' }).click()
  await page.waitForURL(/session=/)
  const id = new URL(page.url()).searchParams.get('session')!
  t.match((await server.app.inject(`/v1/sessions/${id}`)).json(), { mode: 'group', agents: ['moderator', 'flaky', 'skeptic'], group: { strategy: 'round-robin', maxTurns: 3 } })

  const events = await send(page, 'What could go wrong with the launch?')
  const failure = events.find((event) => event.event === 'error')
  t.match(failure?.data, { statusCode: 502, code: 'LLM_REQUEST_REJECTED', turn: 2 }, "the failed turn's error event carries its turn")
  t.match(events.at(-1), { event: 'done', data: { round: { turns: 3, stop: 'max_turns' } } }, 'and the round ended normally')
  const stored = await storedMessages(id)
  t.same(stored.map((message) => message.agent ?? 'you'), ['you', 'moderator', 'skeptic'], 'the failed turn stored nothing, the next agent spoke after it')
  t.same(onPageIds(await shown(page)), stored.map((message) => message.id), 'the stored turns shown in their order')

  const onPage = await shown(page)
  t.same(onPage.map((article) => article.who), ['You', 'Moderator', 'Flaky', 'Skeptic'], 'every turn has its article, in turn, the failed one too')
  t.same(onPage.map((article) => article.failed), [false, false, true, false], "Flaky's is marked failed")
  t.match(onPage[2]!.body, /^No reply: .*flaky-1 does not exist/, 'and says why')
  t.equal(await roundNote(page).innerText(), 'Round over after 3 turns: the turn limit was reached.')
  const alert = page.getByRole('alert')
  t.ok(await alert.isVisible(), 'the alert is shown')
  t.match(await alert.innerText(), /^Turn 2: Flaky could not answer \(.*flaky-1 does not exist\)\. The round carries on without this turn\.$/, 'naming the turn, the agent and the cause')
  await shot('04-failed-turn')

  await page.reload()
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 3)
  t.same((await shown(page)).map((article) => article.who), ['You', 'Moderator', 'Skeptic'], 'from history: the stored turns (a failed turn stores no message)')
  await shot('05-failed-turn-reloaded')
  t.same(errors, [], 'no errors on the page')
})

t.test('a three-agent round on a phone', async (t) => {
  const { page, errors, shot } = await openPage(t, browser, { viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2 })
  await page.goto(`${server.url}/chat?session=${presetSession}`)
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 4)
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  t.ok(overflow <= 0, `no sideways scrolling (${overflow} px)`)
  await page.locator('#scroller').evaluate((node) => { node.scrollTop = 0 })
  await shot('06-phone-history')
  await page.getByRole('textbox', { name: 'Message' }).fill('And on a phone?')
  const answer = nextPost(page)
  await page.getByRole('button', { name: 'Send' }).tap()
  await answer
  await page.waitForFunction(() => document.querySelectorAll('[role=log] .round-note').length === 1)
  await shot('07-phone-round')
  t.same(errors, [], 'no errors on the page')
})
