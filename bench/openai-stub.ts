// What the benchmarks against the zero-latency OpenAI stub share (providers, openai-compatible,
// groups): the production server with a manifest of agents on the stub, the client the service
// builds for them, and the direct call that measures the model's own latency.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type OpenAI from 'openai'
import { createOpenAiClient } from '../src/providers/openai.js'
import type { LlmStub } from '../test/support/llm-stub.js'
import { startBenchServer, type BenchServer } from './conversation-load.js'

export const MODEL = 'bench-model'
export const KEY = 'sk-bench-not-a-secret'
export const QUESTION = 'How do I make this query faster? It scans the whole table.'

export type ChatMessages = Array<{ role: 'system' | 'user' | 'assistant'; content: string }>

/**
 * The production server (bench/conversation-load.ts) with `manifest` as its agents, their provider
 * the stub; and the client the service builds for its agents (same SDK options, same HTTP transport).
 */
export async function startStubServer (options: { databaseUrl: string; redisUrl: string; poolSize: number; stub: LlmStub; manifest: string }): Promise<{ server: BenchServer; client: OpenAI }> {
  const agentsFile = join(mkdtempSync(join(tmpdir(), 'smalltalk-bench-')), 'agents.yaml')
  writeFileSync(agentsFile, options.manifest)
  const { stub } = options
  const server = await startBenchServer({
    databaseUrl: options.databaseUrl,
    redisUrl: options.redisUrl,
    poolSize: options.poolSize,
    env: { AGENTS_FILE: agentsFile, OPENAI_API_KEY: KEY, OPENAI_BASE_URL: stub.openaiBaseUrl }
  })
  return { server, client: createOpenAiClient({ apiKey: KEY, baseUrl: stub.openaiBaseUrl }) }
}

/**
 * The messages of the newest chat request the service sent the stub (its system prompt and the
 * session's context, up to CONTEXT_MESSAGES): the direct calls send the very same request. The
 * stub's record is emptied, so that it does not grow over the run.
 */
export function lastServiceMessages (stub: LlmStub): ChatMessages {
  const body = stub.chatRequests().at(-1)?.body as { messages?: ChatMessages } | undefined
  if (!body?.messages) throw new Error('the service sent the stub no chat request')
  stub.requests.length = 0
  return body.messages
}

/**
 * The stub called directly with the SDK the service uses, as the service calls it for a JSON reply
 * (the whole answer in one response, the same messages): the provider's own latency as a client sees it.
 */
export async function directWholeCall (client: OpenAI, messages: ChatMessages): Promise<number> {
  const started = performance.now()
  await client.chat.completions.create({ model: MODEL, messages, temperature: 0.7, max_completion_tokens: 256, stream: false })
  return performance.now() - started
}
