// What the SDKs' HTTP client (src/providers/http.ts: undici's request API behind the fetch signature)
// saves over Node's global fetch, the plain way: CPU time per whole-answer chat completion through
// the official OpenAI SDK to the loopback stub, the two clients alternating in rounds of 1,000 calls
// (10 at a time), median of 5 rounds each. CPU time (user + system) rather than wall time, so that a
// busy machine changes the figure less; it includes the in-process stub's own share, the same for both.
// Usage: npx tsx bench/provider-fetch.ts (part of npm run bench).
import OpenAI from 'openai'
import { providerFetch } from '../src/providers/http.js'
import { LlmStub } from '../test/support/llm-stub.js'

const ROUNDS = Number(process.env.BENCH_RUNS ?? 5)
const CALLS = 1000
const messages = [
  { role: 'system' as const, content: 'You are a helpful assistant.' },
  { role: 'user' as const, content: 'How do I make this query faster? It scans the whole table.' }
]

async function cpuPerCall (client: OpenAI, calls: number): Promise<number> {
  const before = process.cpuUsage()
  for (let i = 0; i < calls; i += 10) {
    await Promise.all(Array.from({ length: 10 }, () => client.chat.completions.create({ model: 'bench-model', messages, stream: false })))
  }
  const used = process.cpuUsage(before)
  return (used.user + used.system) / 1000 / calls
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0

const stub = await LlmStub.start()
try {
  stub.setDefault({ text: 'A short answer of a few words.', usage: { inputTokens: 20, outputTokens: 8 } })
  const shim = new OpenAI({ apiKey: 'sk-bench-not-a-secret', baseURL: stub.openaiBaseUrl, maxRetries: 0, fetch: providerFetch })
  const plain = new OpenAI({ apiKey: 'sk-bench-not-a-secret', baseURL: stub.openaiBaseUrl, maxRetries: 0 })
  await cpuPerCall(shim, 300)
  await cpuPerCall(plain, 300)
  const rounds = { shim: [] as number[], plain: [] as number[] }
  for (let round = 0; round < ROUNDS; round++) {
    rounds.shim.push(await cpuPerCall(shim, CALLS))
    rounds.plain.push(await cpuPerCall(plain, CALLS))
  }
  const fmt = (values: number[]) => values.map((v) => v.toFixed(3)).join(' ')
  console.log(`SDK CPU per call, undici request (http.ts): median ${median(rounds.shim).toFixed(3)} ms (rounds ${fmt(rounds.shim)})`)
  console.log(`SDK CPU per call, global fetch:             median ${median(rounds.plain).toFixed(3)} ms (rounds ${fmt(rounds.plain)})`)
  console.log(`saved per provider call: ${(median(rounds.plain) - median(rounds.shim)).toFixed(3)} ms of CPU; ratio ${(median(rounds.shim) / median(rounds.plain)).toFixed(2)}`)
} finally {
  await stub.close()
}
