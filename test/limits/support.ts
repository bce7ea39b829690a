import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import { buildApp } from '../../src/app.js'
import type { Clock } from '../../src/clock.js'
import type { Environment } from '../../src/config.js'
import { REDIS_URL, tempDir, testEnv } from '../helper.js'
import { LlmStub } from '../support/llm-stub.js'

// Shared by the limits tests: replicas of one service (same PostgreSQL, same Redis key prefix),
// tenants by API key, and an OpenAI-format stub provider that counts the calls it gets.

export const KEYS = { acme: 'key-acme', globex: 'key-globex' } as const
export const API_KEYS = `${KEYS.acme}:acme,${KEYS.globex}:globex`

const TEAM = `
agents:
  - id: assistant
    name: Assistant
    description: The generalist.
    provider: openai
    model: gpt-test
    systemPrompt: You are Assistant.
    maxTokens: 100
  - id: writer
    name: Writer
    description: Writes prose.
    provider: openai
    model: gpt-test
    systemPrompt: You are Writer.
    maxTokens: 100
`

export const auth = (tenant: keyof typeof KEYS) => ({ authorization: `Bearer ${KEYS[tenant]}` })

/** A stub provider and the environment of a service whose one agent talks to it. */
export async function limitsEnv (t: Test, env: Environment = {}): Promise<{ stub: LlmStub; env: Environment }> {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const dir = await tempDir(t)
  const file = join(dir, 'agents.yaml')
  await writeFile(file, TEAM)
  const shared = await testEnv(t, {
    REDIS_URL,
    API_KEYS,
    AGENTS_FILE: file,
    OPENAI_API_KEY: 'sk-test',
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    LLM_RETRY_BASE_MS: '10',
    ...env
  })
  return { stub, env: shared }
}

/** One replica; closed at the end of the test, or earlier by the test. */
export async function replica (t: Test, env: Environment, clock?: Clock): Promise<FastifyInstance> {
  const app = await buildApp({ env, logger: false, ...(clock ? { clock } : {}) })
  app.addHook('preClose', (done) => {
    app.server.closeAllConnections()
    done()
  })
  t.teardown(() => app.close())
  await app.ready()
  return app
}

export async function createSession (app: FastifyInstance, tenant: keyof typeof KEYS): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(tenant), payload: { agents: ['assistant'] } })
  if (res.statusCode !== 201) throw new Error(`session not created: ${res.statusCode} ${res.body}`)
  return res.json().id
}

export function post (app: FastifyInstance, tenant: keyof typeof KEYS, id: string, content = 'hello', headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return app.inject({ method: 'POST', url: `/v1/sessions/${id}/messages`, headers: { ...auth(tenant), ...headers }, payload: { content } })
}

export async function storedMessages (app: FastifyInstance, id: string): Promise<number> {
  const { rows } = await app.pg.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM chat_messages WHERE session_id = $1', [id])
  return rows[0]?.n ?? 0
}

/** A plain client on the test's Redis key prefix, to look at (and age) what the service counts. */
export function redisClient (t: Test, env: Environment): Redis {
  const client = new Redis(REDIS_URL!, { keyPrefix: env.REDIS_KEY_PREFIX })
  t.teardown(() => client.quit())
  return client
}

export async function refusals (app: FastifyInstance, limit: string): Promise<number> {
  const metric = await app.metricsRegistry.getSingleMetric('smalltalk_limit_refusals_total')?.get()
  return metric?.values.find((v) => v.labels.limit === limit)?.value ?? 0
}

export interface OpenStream {
  status: number
  body: string
  close: () => void
}

export async function baseOf (app: FastifyInstance): Promise<string> {
  if (!app.server.listening) await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
}

/** Opens GET /v1/events/stream and keeps it open until close(); a refusal comes back with its body. */
export async function openEventStream (t: Test, base: string, tenant: keyof typeof KEYS): Promise<OpenStream> {
  const controller = new AbortController()
  const response = await fetch(`${base}/v1/events/stream`, { headers: auth(tenant), signal: controller.signal })
  const close = () => controller.abort()
  t.teardown(close)
  if (response.status !== 200) return { status: response.status, body: await response.text(), close }
  // Read the first frame, so the stream is known to be open on the server.
  const reader = (response.body as ReadableStream<Uint8Array>).getReader()
  await reader.read()
  reader.read().catch(() => undefined)
  return { status: 200, body: '', close }
}
