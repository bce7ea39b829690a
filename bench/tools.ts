// The tools benchmark of issue 15, against the production build (dist/) on a real PostgreSQL and
// Redis: agents on the OpenAI SDK talking to a zero-latency stub of the OpenAI wire format, and a
// no-op MCP tool (the test server's `echo`, over stdio, started by the service). One connection,
// one request at a time, interleaved in batches so that a noisy neighbour hits every side alike:
//   - a plain JSON reply (an agent without tools) beside the same completion called directly:
//     the service's overhead for a reply = reply - one direct model call;
//   - a JSON reply with one tool step (the model asks for echo, then answers) beside a direct model
//     call and a direct tools/call on the same MCP server from an SDK client of the benchmark's own:
//     the service's overhead for the step = tool reply - plain reply - direct model call - direct tool call
//     (the work a step adds: the tool.called events, the call, the stored tool message, the second model call).
// Target: the step's overhead under 1.5 times a plain reply's.
// Usage: npm run bench:tools (DATABASE_URL and REDIS_URL default to the local servers).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import { PROJECT_ROOT } from '../src/paths.js'
import { LlmStub } from '../test/support/llm-stub.js'
import { MCP_TEST_SERVER_ARGS } from '../test/support/mcp-test-server.js'
import type { BenchServer } from './conversation-load.js'
import { prepareDatabase } from './database.js'
import { MODEL, QUESTION, directWholeCall, startStubServer, type ChatMessages } from './openai-stub.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const RUNS = Number(process.env.BENCH_RUNS ?? 5)
const REQUESTS = Number(process.env.BENCH_REPLIES ?? 100)
const REPLY = 'The stub answers at once with a short reply of a dozen words or so.'

const MANIFEST = `
mcpServers:
  - id: local
    transport: stdio
    command: ${JSON.stringify(process.execPath)}
    args: ${JSON.stringify(MCP_TEST_SERVER_ARGS)}
agents:
${['plain', 'tooled'].map((id) => `  - id: ${id}
    name: Agent ${id}
    description: Agent ${id}.
    provider: openai
    model: ${MODEL}
    systemPrompt: You are agent ${id}.
    maxTokens: 256${id === 'tooled' ? '\n    tools: [local/echo]' : ''}`).join('\n')}
`

async function createSession (url: string, agent: string): Promise<string> {
  const response = await fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ agents: [agent] }) })
  if (response.status !== 201) throw new Error(`POST /v1/sessions answered ${response.status}: ${await response.text()}`)
  return ((await response.json()) as { id: string }).id
}

/** One request at a time: each post's latency; `toolCalls` the number each answer must carry. */
async function posts (url: string, ids: string[], count: number, toolCalls: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const response = await fetch(`${url}/v1/sessions/${ids[i % ids.length]}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: QUESTION }) })
    const body = (await response.json()) as { toolCalls?: Array<{ isError: boolean; content: string }> }
    if (response.status !== 201) throw new Error(`POST messages answered ${response.status}: ${JSON.stringify(body)}`)
    if ((body.toolCalls?.length ?? 0) !== toolCalls || body.toolCalls?.some((call) => call.isError)) throw new Error(`expected ${toolCalls} tool call(s) that succeed: ${JSON.stringify(body.toolCalls)}`)
    latencies.push(performance.now() - started)
  }
  return latencies
}

const fmt = (value: number, digits = 2) => value.toFixed(digits)

const database = await prepareDatabase(DATABASE_URL)
const stub = await LlmStub.start()
// The tooled agent's first step asks for echo; once the result is in the request, it answers.
stub.setDefault((request) => {
  const last = request.messages.at(-1)
  const tooled = request.system?.includes('agent tooled') ?? false
  return tooled && !last?.toolResults ? { toolCalls: [{ name: 'echo', arguments: { text: 'ok' } }] } : { text: REPLY }
})
const mcp = new Client({ name: 'smalltalk-bench', version: '1.0.0' })
let server: BenchServer | undefined
try {
  await mcp.connect(new StdioClientTransport({ command: process.execPath, args: MCP_TEST_SERVER_ARGS, cwd: PROJECT_ROOT }))
  const directTool = async (): Promise<number> => {
    const started = performance.now()
    await mcp.callTool({ name: 'echo', arguments: { text: 'ok' } })
    return performance.now() - started
  }
  const started = await startStubServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: 10, stub, manifest: MANIFEST })
  server = started.server
  const { client } = started
  for (let i = 0; i < 100; i++) {
    const tools = (await (await fetch(`${server.url}/v1/tools`)).json()) as { servers: Array<{ status: string }> }
    if (tools.servers.every((s) => s.status === 'connected')) break
    if (i === 99) throw new Error(`the MCP server did not connect: ${JSON.stringify(tools)}`)
    await sleep(100)
  }
  const plain = await Promise.all(Array.from({ length: 20 }, () => createSession(server!.url, 'plain')))
  const tooled = await Promise.all(Array.from({ length: 20 }, () => createSession(server!.url, 'tooled')))
  const messages: ChatMessages = [{ role: 'system', content: 'You are agent plain.' }, { role: 'user', content: QUESTION }]

  // Warm-up of every path.
  await posts(server.url, plain, 20, 0)
  await posts(server.url, tooled, 20, 1)
  for (let i = 0; i < 20; i++) await directTool()
  const rounds: Array<{ direct: number; tool: number; plain: number; tooled: number }> = []
  for (let run = 0; run < RUNS; run++) {
    const direct: number[] = []
    const tool: number[] = []
    const plains: number[] = []
    const tooleds: number[] = []
    for (let batch = 0; batch < REQUESTS / 20; batch++) {
      for (let i = 0; i < 20; i++) direct.push(await directWholeCall(client, messages))
      for (let i = 0; i < 20; i++) tool.push(await directTool())
      plains.push(...(await posts(server.url, plain, 20, 0)))
      tooleds.push(...(await posts(server.url, tooled, 20, 1)))
      stub.requests.length = 0
    }
    rounds.push({ direct: median(direct), tool: median(tool), plain: median(plains), tooled: median(tooleds) })
  }
  const perRun = rounds.map((r) => {
    const replyOverhead = r.plain - r.direct
    const stepOverhead = r.tooled - r.plain - r.direct - r.tool
    return { ...r, replyOverhead, stepOverhead, ratio: stepOverhead / replyOverhead }
  })
  const pick = (key: keyof (typeof perRun)[number]) => median(perRun.map((r) => r[key]))
  const runs = (key: keyof (typeof perRun)[number]) => perRun.map((r) => fmt(r[key])).join(' / ')

  console.log(`Tools benchmark (OpenAI SDK against a zero-latency loopback stub, the MCP test server's echo over stdio; ${RUNS} runs of ${REQUESTS} requests, median of the runs)`)
  console.log(`  direct SDK model call              p50 ${fmt(pick('direct'))} ms`)
  console.log(`  direct MCP tools/call (no-op echo) p50 ${fmt(pick('tool'))} ms`)
  console.log(`  plain JSON reply                   p50 ${fmt(pick('plain'))} ms, overhead ${fmt(pick('replyOverhead'))} ms (runs ${runs('replyOverhead')})`)
  console.log(`  JSON reply with one tool step      p50 ${fmt(pick('tooled'))} ms, the step's overhead ${fmt(pick('stepOverhead'))} ms (runs ${runs('stepOverhead')})`)
  console.log(`  tool step / plain reply overhead   ${fmt(pick('ratio'))} (runs ${runs('ratio')}; target < 1.5)`)
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'tools.json'), JSON.stringify({ at: new Date().toISOString(), runs: RUNS, requests: REQUESTS, perRun }, null, 2) + '\n')
} finally {
  server?.child.kill('SIGTERM')
  await sleep(500)
  await mcp.close().catch(() => undefined)
  await stub.close()
  await database.dispose()
}
