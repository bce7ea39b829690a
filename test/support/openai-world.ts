import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import OpenAI from 'openai'
import { Registry } from 'prom-client'
import { buildApp } from '../../src/app.js'
import type { Environment } from '../../src/config.js'
import { Lifecycle } from '../../src/lifecycle.js'
import { REDIS_URL, tempDir, testEnv } from '../helper.js'
import { LlmStub } from './llm-stub.js'

// The world of the OpenAI-compatible API tests: the service listening on loopback with two tenants'
// API keys, its agents backed by the loopback LLM stub (OpenAI and Anthropic wire formats), and the
// official `openai` client pointed at it.

export const KEY = 'key-tenant-a'
export const OTHER_KEY = 'key-tenant-b'

export const TEAM = `
agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: gpt-test
    systemPrompt: You are Assistant.
    temperature: 0.3
    maxTokens: 200
    expertise: [question]
  - id: coder
    name: Coder
    description: Writes code.
    provider: anthropic
    model: claude-test
    systemPrompt: You are Coder.
    expertise: [code]
    fallback: assistant
groups:
  - id: pair
    name: Pair
    agents: [assistant, coder]
    strategy: round-robin
`

export interface OpenAiWorld {
  stub: LlmStub
  app: FastifyInstance
  registry: Registry
  /** The service's base URL, http://127.0.0.1:PORT */
  base: string
  /** The official client, with tenant a's key and no retries of its own. */
  client: OpenAI
  /** The app's lifecycle (abortReplies: the shutdown deadline). */
  lifecycle: Lifecycle
}

export async function openAiWorld (t: Test, env: Environment = {}, prepare: (app: FastifyInstance) => void = () => undefined): Promise<OpenAiWorld> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const registry = new Registry()
  const lifecycle = new Lifecycle()
  const app = await buildApp({
    logger: false,
    registry,
    lifecycle,
    env: await testEnv(t, {
      REDIS_URL,
      AGENTS_FILE: file,
      API_KEYS: `${KEY}:tenant-a,${OTHER_KEY}:tenant-b`,
      OPENAI_API_KEY: 'sk-openai-secret',
      ANTHROPIC_API_KEY: 'sk-ant-secret',
      OPENAI_BASE_URL: stub.openaiBaseUrl,
      ANTHROPIC_BASE_URL: stub.anthropicBaseUrl,
      LLM_RETRY_BASE_MS: '10',
      LLM_RETRY_MAX_MS: '50',
      ...env
    })
  })
  t.teardown(() => app.close())
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  prepare(app)
  const base = await app.listen({ port: 0, host: '127.0.0.1' })
  return { stub, app, registry, base, client: client(base, KEY), lifecycle }
}

export const client = (base: string, apiKey: string): OpenAI => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0 })
