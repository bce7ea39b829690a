import t from 'tap'
import type { Page } from 'playwright-core'
import { sse } from '../support/sse.js'
import { launchBrowser, openPage, PHONE, startChatServer } from './support.js'

// The chat page (DESIGN section 11) in real headless Chromium against a real app with echo agents.
// Echo streams one delta per word (ECHO_TOKEN_DELAY_MS apart), so a reply visibly streams in.

const browser = await launchBrowser(t)
const server = await startChatServer(t, { ECHO_TOKEN_DELAY_MS: '20' })

const reply = (page: Page, name = 'Helper Bot') => page.getByRole('log').getByRole('article', { name: new RegExp(`^${name}`) })
const agentsShown = (page: Page) => page.locator('#agents .agent-name').first().waitFor()
const you = (page: Page) => page.getByRole('log').getByRole('article', { name: /^You/ })
const finished = (page: Page, n: number) => page.waitForFunction((count) => document.querySelectorAll('[role=log] article.assistant:not(.streaming)').length >= count, n)

/** Records, in the page, every distinct text a streaming reply shows before it is finished. */
async function recordStreaming (page: Page): Promise<() => Promise<string[]>> {
  await page.evaluate(() => {
    const seen: string[] = []
    ;(window as unknown as { streamed: string[] }).streamed = seen
    new MutationObserver(() => {
      const body = document.querySelector('[role=log] article.streaming .body')
      const text = body?.textContent ?? ''
      if (text !== '' && seen.at(-1) !== text) seen.push(text)
    }).observe(document.querySelector('[role=log]')!, { subtree: true, childList: true, characterData: true })
  })
  return () => page.evaluate(() => (window as unknown as { streamed: string[] }).streamed)
}

async function postJson (path: string, body: unknown): Promise<{ id: string }> {
  const res = await server.app.inject({ method: 'POST', url: path, payload: body as object })
  if (res.statusCode !== 201) throw new Error(`${path}: ${res.statusCode} ${res.body}`)
  return res.json()
}

t.test('create a session, send a message, watch the reply stream in, reload with ?session=', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  await agentsShown(page)
  t.equal(await page.locator('#agents .badge').count(), 2, 'each agent has a health badge')
  t.match(await page.locator('#agents li').first().innerText(), /Helper Bot[\s\S]*echo · helper-1[\s\S]*(healthy|degraded|down)/, 'name, provider and model, status')
  await shot('01-empty')

  await page.getByRole('button', { name: 'New session' }).click()
  await page.waitForURL(/\/chat\?session=[0-9a-f-]{36}$/)
  const id = new URL(page.url()).searchParams.get('session')!
  t.equal((await server.app.inject(`/v1/sessions/${id}`)).statusCode, 200, 'the session exists on the server')

  const streamed = await recordStreaming(page)
  const text = 'Hello there, please explain how a reply streams in one word after another'
  await page.getByRole('textbox', { name: 'Message' }).fill(text)
  await page.getByRole('button', { name: 'Send' }).click()
  await finished(page, 1)
  t.equal(await reply(page).locator('.body').innerText(), `Echo (helper-1): ${text}`, 'the stored reply, under the agent\'s name')
  t.equal(await you(page).locator('.body').innerText(), text, 'the user message, named "You"')
  const partial = await streamed()
  t.ok(partial.length >= 3, `the reply was shown while it streamed (${partial.length} partial states)`)
  t.ok(partial.every((state) => `Echo (helper-1): ${text}`.startsWith(state.replace(/▍$/, ''))), 'each a prefix of the reply')
  t.equal(await page.getByRole('textbox', { name: 'Message' }).inputValue(), '', 'the box is emptied')
  t.equal(await page.locator('#sessions a[aria-current="page"]').count(), 1, 'the session is in the list, marked as open')
  await shot('02-reply')

  await page.reload()
  await finished(page, 1)
  t.equal(await page.getByRole('log').getByRole('article').count(), 2, 'after a reload: the history')
  t.equal(await reply(page).locator('.body').innerText(), `Echo (helper-1): ${text}`, 'with the reply and its speaker')
  await page.goto(`${server.url}/chat?session=${id}`)
  await finished(page, 1)
  t.equal(await page.locator('#session-title').innerText(), `${text.slice(0, 59)}…`, 'a shared link opens the session, named by its first message')
  await shot('03-reloaded')
  t.same(errors, [], 'no errors on the page')
})

t.test('keyboard: Enter sends, Shift+Enter is a new line', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  await agentsShown(page)
  const box = page.getByRole('textbox', { name: 'Message' })
  await box.focus()
  await page.keyboard.type('first line')
  await page.keyboard.press('Shift+Enter')
  await page.keyboard.type('second line')
  t.equal(await box.inputValue(), 'first line\nsecond line', 'Shift+Enter added a line')
  t.equal(await page.getByRole('article').count(), 0, 'and sent nothing')
  await page.keyboard.press('Enter')
  await page.waitForURL(/session=/)
  await finished(page, 1)
  t.equal(await you(page).locator('.body').innerText(), 'first line\nsecond line', 'Enter sent both lines (a session was made for it)')
  t.match(await reply(page).locator('.body').innerText(), /^Echo \(helper-1\): first line\nsecond line$/, 'and the reply came')
  await shot('04-keyboard')
  t.same(errors, [], 'no errors on the page')
})

t.test("a reply's markup is shown as text: no element made, no script run", async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  await agentsShown(page)
  await page.evaluate(() => { (window as unknown as { pwned: boolean }).pwned = false })
  const attack = '<script>window.pwned = true</script> <img src=x onerror="window.pwned = true"> [click](javascript:window.pwned=true) **bold** and `code`'
  await page.getByRole('textbox', { name: 'Message' }).fill(attack)
  await page.keyboard.press('Enter')
  await finished(page, 1)
  const log = page.getByRole('log')
  t.equal(await log.locator('script, img, iframe, object, [onerror]').count(), 0, 'no script, img or handler element in the log')
  t.equal(await log.locator('a').count(), 0, 'no javascript: link')
  t.equal(await page.evaluate(() => (window as unknown as { pwned: boolean }).pwned), false, 'no script ran')
  const shown = await reply(page).locator('.body').innerText()
  t.match(shown, '<script>window.pwned = true</script>', 'the reply shows the script tag as text')
  t.match(shown, '<img src=x onerror="window.pwned = true">', 'and the img tag')
  t.equal(await reply(page).locator('strong').innerText(), 'bold', 'Markdown still renders')
  t.equal(await reply(page).locator('code').innerText(), 'code')
  t.equal(await you(page).locator('.body').innerText(), attack, 'the user message as typed')
  await shot('05-markup-as-text')
  t.same(errors, [], 'no errors on the page')
})

t.test('older history: the newest page first, the rest with the button', async (t) => {
  const session = await postJson('/v1/sessions', { agents: ['helper'] })
  for (let i = 1; i <= 30; i++) await postJson(`/v1/sessions/${session.id}/messages`, { content: `message ${i}` })
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat?session=${session.id}`)
  await finished(page, 25)
  const articles = page.getByRole('log').getByRole('article')
  t.equal(await articles.count(), 50, 'the newest 50 of 60 messages')
  t.equal(await articles.first().locator('.body').innerText(), 'message 6', 'starting at the sixth question')
  const older = page.getByRole('button', { name: 'Load older messages' })
  t.ok(await older.isVisible(), 'a button offers the older ones')
  await shot('06-history-newest')
  // A DOM click: Playwright's own would first scroll the button into view, and reaching the top
  // already loads the older page by itself (the next test), which hides the button mid-click.
  await older.dispatchEvent('click')
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 60)
  t.equal(await articles.first().locator('.body').innerText(), 'message 1', 'the whole history, in order')
  t.equal(await articles.nth(1).getAttribute('aria-labelledby') !== null, true)
  t.notOk(await older.isVisible(), 'no button once everything is shown')
  const seqs = await articles.evaluateAll((nodes) => nodes.map((node) => Number((node as HTMLElement).dataset.seq)))
  t.same(seqs, Array.from({ length: 60 }, (_, i) => i + 1), 'seq 1 to 60, each once')
  await shot('07-history-all')
  t.same(errors, [], 'no errors on the page')
})

t.test('scrolling to the top loads older history too', async (t) => {
  const session = await postJson('/v1/sessions', { agents: ['helper'] })
  for (let i = 1; i <= 28; i++) await postJson(`/v1/sessions/${session.id}/messages`, { content: `line ${i}` })
  const { page } = await openPage(t, browser)
  await page.goto(`${server.url}/chat?session=${session.id}`)
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 50)
  await page.locator('#scroller').evaluate((node) => { node.scrollTop = 0 })
  await page.waitForFunction(() => document.querySelectorAll('[role=log] article').length === 56)
  t.pass('the six older messages came on scrolling up')
})

t.test('errors in the alert: 409 while another reply runs, 410 once the session is deleted', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  await page.getByRole('button', { name: 'New session' }).click()
  await page.waitForURL(/session=/)
  const id = new URL(page.url()).searchParams.get('session')!

  // A long reply (one word every 20 ms) holds the session's lease meanwhile.
  let started!: () => void
  const leaseHeld = new Promise<void>((resolve) => { started = resolve })
  const running = sse(`${server.url}/v1/sessions/${id}/messages`, { content: 'word '.repeat(300) }, {
    timeoutMs: 60_000,
    onEvent: (event) => { if (event.event === 'message') started() }
  })
  await leaseHeld
  const alert = page.getByRole('alert')
  await page.getByRole('textbox', { name: 'Message' }).fill('are you there?')
  await page.keyboard.press('Enter')
  await alert.waitFor()
  t.match(await alert.innerText(), /busy with another reply.*Try again in \d+ s/s, '409: busy, with Retry-After')
  t.equal(await page.getByRole('textbox', { name: 'Message' }).inputValue(), 'are you there?', 'the text is kept to send again')
  await shot('08-busy')
  t.equal((await running).status, 200)

  t.equal((await server.app.inject({ method: 'DELETE', url: `/v1/sessions/${id}` })).statusCode, 204)
  await page.keyboard.press('Enter')
  await page.waitForFunction(() => /has ended/.test(document.querySelector('[role=alert]')?.textContent ?? ''))
  t.match(await alert.innerText(), /has ended/, '410: the session has ended')
  await shot('09-gone')
  t.same(errors, [], 'no errors on the page')
})

t.test('a phone-sized viewport', async (t) => {
  const session = await postJson('/v1/sessions', { agents: ['helper', 'critic'] })
  await postJson(`/v1/sessions/${session.id}/messages`, { content: 'Please review this **plan**:\n\n1. ship\n2. measure', agent: 'critic' })
  const { page, errors, shot } = await openPage(t, browser, { viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2 })
  await page.goto(`${server.url}/chat?session=${session.id}`)
  await finished(page, 1)
  t.ok(await reply(page, 'Critic').isVisible(), "the agent's reply is on screen")
  t.equal(await reply(page, 'Critic').locator('ol li').count(), 2, 'its Markdown list rendered')
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  t.ok(overflow <= 0, `no sideways scrolling (${overflow} px)`)
  t.notOk(await page.locator('#sidebar').isVisible(), 'the side panel is folded away')
  await page.getByRole('textbox', { name: 'Message' }).fill('and on a phone?')
  await page.getByRole('button', { name: 'Send' }).tap()
  await finished(page, 2)
  await shot('10-phone')
  const menu = page.getByRole('button', { name: 'Menu' })
  await menu.tap()
  t.equal(await menu.getAttribute('aria-expanded'), 'true')
  t.ok(await page.getByRole('button', { name: 'New session' }).isVisible(), 'the menu shows the sessions and the new-session form')
  await shot('11-phone-menu')
  await page.locator('#sessions a').first().tap()
  t.notOk(await page.locator('#sidebar').isVisible(), 'picking a session folds the menu')
  t.same(errors, [], 'no errors on the page')
})

t.test('group rounds: each turn is its own article named by its agent (the page\'s own renderer)', async (t) => {
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${server.url}/chat`)
  await agentsShown(page)
  // The section-9 event sequence of a round of three turns whose second fails, fed to the page's
  // own Conversation: the rendering that the group SSE answer goes through.
  const names = await page.evaluate(async () => {
    const { Conversation } = await import('/chat/conversation.js' as string)
    const log = document.getElementById('log')!
    const alerts: string[] = []
    const conversation = new Conversation(log, { speakerName: (id: string) => ({ helper: 'Helper Bot', critic: 'Critic' } as Record<string, string>)[id] ?? id, onError: (body: { message: string }) => alerts.push(body.message) })
    const at = new Date().toISOString()
    const stored = (seq: number, agent: string, content: string) => ({ id: `m${seq}`, seq, role: 'assistant', agent, content, createdAt: at })
    conversation.sending('What do you both think?')
    conversation.apply('message', { id: 'm1', seq: 1, role: 'user', content: 'What do you both think?', createdAt: at })
    conversation.apply('agent', { agent: 'helper', name: 'Helper Bot', reason: 'round-robin', turn: 1 })
    conversation.apply('delta', { text: 'I think ' })
    conversation.apply('delta', { text: 'it is **fine**.' })
    conversation.apply('turn', stored(2, 'helper', 'I think it is **fine**.'))
    conversation.apply('agent', { agent: 'critic', name: 'Critic', reason: 'round-robin', turn: 2 })
    conversation.apply('error', { statusCode: 502, error: 'Bad Gateway', message: 'Critic failed', turn: 2 })
    conversation.apply('agent', { agent: 'helper', name: 'Helper Bot', reason: 'mention', turn: 3 })
    conversation.apply('delta', { text: 'Still fine.' })
    conversation.apply('turn', stored(3, 'helper', 'Still fine.'))
    conversation.apply('done', { replies: [stored(2, 'helper', 'I think it is **fine**.'), stored(3, 'helper', 'Still fine.')], round: { turns: 3, stop: 'max_turns' } })
    return { alerts, note: log.querySelector('.round-note')?.textContent }
  })
  const articles = page.getByRole('log').getByRole('article')
  t.equal(await articles.count(), 4, 'the user message and one article per turn')
  t.match(await articles.nth(1).getAttribute('class'), /assistant/)
  t.equal(await reply(page, 'Helper Bot').count(), 2, 'two turns by Helper Bot')
  t.equal(await reply(page, 'Critic').locator('.failure').innerText(), 'No reply: Critic failed', 'the failed turn says so, under its agent')
  t.match(await articles.nth(1).locator('.meta').innerText(), /^turn 1 · /, 'each turn is numbered')
  t.equal(await articles.nth(1).locator('strong').innerText(), 'fine')
  t.same(names.alerts, ['Critic failed'], 'the failed turn is reported, and the round went on')
  t.equal(names.note, 'Round over after 3 turns: the turn limit was reached.', 'the round ends with its stop reason')
  await shot('12-group-round')
  t.same(errors, [], 'no errors on the page')
})

t.test('with API keys: an alert until the key is given, then everything works with it', async (t) => {
  const keyed = await startChatServer(t, { API_KEYS: 'right-key:acme' })
  const { page, errors, shot } = await openPage(t, browser)
  await page.goto(`${keyed.url}/chat`)
  const alert = page.getByRole('alert')
  await alert.waitFor()
  t.match(await alert.innerText(), /needs an API key/, '401: the alert asks for the key')
  const key = page.getByRole('textbox', { name: 'API key' })
  t.ok(await key.evaluate((node) => node === document.activeElement), 'and the key field has the focus')
  await shot('13-key-needed')

  await key.fill('wrong-key')
  await key.press('Enter')
  await page.waitForFunction(() => /did not accept/.test(document.querySelector('[role=alert]')?.textContent ?? ''))
  t.pass('a wrong key: the alert says it was refused')

  await key.fill('right-key')
  await key.press('Enter')
  await agentsShown(page)
  t.notOk(await alert.isVisible(), 'the right key: no alert')
  t.equal(await page.evaluate(() => sessionStorage.getItem('smalltalk.apiKey')), 'right-key', "kept in the tab's sessionStorage")
  await page.getByRole('textbox', { name: 'Message' }).fill('hello with a key')
  await page.keyboard.press('Enter')
  await finished(page, 1)
  t.equal(await reply(page).locator('.body').innerText(), 'Echo (helper-1): hello with a key', 'a reply, through the keyed API')
  const id = new URL(page.url()).searchParams.get('session')!
  const stored = await keyed.app.inject({ url: `/v1/sessions/${id}`, headers: { authorization: 'Bearer right-key' } })
  t.equal(stored.json().metadata.title, 'hello with a key', "the session is the key's tenant's, named by its first message")
  await page.reload()
  await finished(page, 1)
  t.notOk(await alert.isVisible(), 'a reload keeps the key (same tab)')
  await shot('14-key-accepted')
  t.same(errors, [], 'no errors on the page')
})

t.test('first load: under 100 KB, every request to the page\'s own host', async (t) => {
  const { page, requests } = await openPage(t, browser)
  let bytes = 0
  page.on('response', (response) => {
    void response.body().then((body) => { bytes += body.length }, () => undefined)
  })
  await page.goto(`${server.url}/chat`, { waitUntil: 'networkidle' })
  await agentsShown(page)
  const origin = new URL(server.url).origin
  const elsewhere = requests.filter((url) => new URL(url).origin !== origin)
  t.same(elsewhere, [], 'no request to another host')
  t.ok(requests.length >= 4, `the page, its style sheet, its modules and its API calls (${requests.length} requests)`)
  t.ok(bytes > 10_000 && bytes < 100 * 1024, `first load transfers ${bytes} bytes uncompressed (under 102,400)`)
  t.comment(`chat page first load: ${requests.length} requests, ${bytes} bytes uncompressed, all to ${origin}`)
})
