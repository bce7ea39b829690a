import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'
import { createParser } from 'eventsource-parser'
import { chromium, type Browser, type BrowserContextOptions, type Page, type Response } from 'playwright-core'
import type { Test } from 'tap'
import type { Environment } from '../../src/config.js'
import { buildService, tempDir, testEnv, type TestService } from '../helper.js'

// The chat page's browser tests: a real app listening on loopback, Debian's Chromium driven by
// playwright-core, one browser per test file and a page (own context, own sessionStorage) per test.

export const CHROMIUM = '/usr/bin/chromium'

/** Two echo agents (echo answers `Echo (<model>): <the message>`, one delta per word). */
export const AGENTS_YAML = `agents:
  - { id: helper, name: Helper Bot, description: Answers questions, provider: echo, model: helper-1, systemPrompt: You help., expertise: [question] }
  - { id: critic, name: Critic, description: Reviews answers, provider: echo, model: critic-1, systemPrompt: You review., expertise: [review] }
`

export interface ChatServer extends TestService {
  url: string
}

/** The service with the echo team (or the agents manifest given), listening on a random loopback port. */
export async function startChatServer (t: Test, overrides: Environment = {}, agentsYaml = AGENTS_YAML): Promise<ChatServer> {
  const manifest = join(await tempDir(t), 'agents.yaml')
  await writeFile(manifest, agentsYaml)
  const service = await buildService(t, await testEnv(t, { AGENTS_FILE: manifest, ...overrides }))
  await service.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = service.app.server.address() as AddressInfo
  return { ...service, url: `http://127.0.0.1:${port}` }
}

/** Headless Chromium, closed at the end of the file. Launching is slow on a loaded machine: a long timeout for it alone. */
export async function launchBrowser (t: Test): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (scripts/install-browser.sh)`)
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 120_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  t.teardown(() => browser.close())
  return browser
}

export interface ChatPage {
  page: Page
  /** Uncaught errors and console errors seen so far on the page (not the browser's lines for failed requests). */
  errors: string[]
  /** Every URL the page requested. */
  requests: string[]
  /** Saves a screenshot of the page as <name>.png in the file's output folder; returns its path. */
  shot: (name: string) => Promise<string>
}

export const DESKTOP = { width: 1280, height: 800 }
export const PHONE = { width: 390, height: 844 }

/** A page in a context of its own (its own sessionStorage), closed at the test's end. */
export async function openPage (t: Test, browser: Browser, options: BrowserContextOptions = {}): Promise<ChatPage> {
  const context = await browser.newContext({ viewport: DESKTOP, ...options })
  t.teardown(() => context.close())
  context.setDefaultTimeout(15_000)
  const page = await context.newPage()
  const errors: string[] = []
  const requests: string[] = []
  page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`))
  page.on('console', (message) => {
    // The browser's own line for each non-2xx answer is left out: the tests check those answers themselves.
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) errors.push(`console: ${message.text()}`)
  })
  page.on('request', (request) => requests.push(request.url()))
  const dir = screenshotDir(t)
  return {
    page,
    errors,
    requests,
    shot: async (name) => {
      await mkdir(dir, { recursive: true })
      const path = join(dir, `${name}.png`)
      await page.screenshot({ path, fullPage: false })
      return path
    }
  }
}

/** The test's output folder (tap's testdirName: not cleaned up, not committed, as .tap/ is ignored). */
function screenshotDir (t: Test): string {
  return join(t.testdirName, 'screenshots')
}

/** One event of an SSE answer, its data parsed. */
export interface SseEventData { event: string; data: any }

/** The events of an SSE answer's whole body. */
export function parseEvents (text: string): SseEventData[] {
  const events: SseEventData[] = []
  const parser = createParser({ onEvent: (message) => events.push({ event: message.event ?? 'message', data: JSON.parse(message.data) }) })
  parser.feed(text)
  return events
}

/** The answer to the page's next message post (its SSE body can be read once the reply is over). */
export function nextPost (page: Page): Promise<Response> {
  return page.waitForResponse((response) => response.request().method() === 'POST' && /\/v1\/sessions\/[^/]+\/messages$/.test(response.url()))
}
