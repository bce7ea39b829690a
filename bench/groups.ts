// The group conversation benchmarks of issue 11, against the production build (dist/) on a real
// PostgreSQL and Redis, with the agents on the OpenAI SDK talking to a zero-latency stub of the
// OpenAI wire format on loopback. Each figure sits beside a baseline from the same run:
//   1. Speaker selection at 10 agents (round-robin, expertise, mentions): time per call, in process.
//   2. One connection, one request at a time: a single-mode JSON reply and a round of 3 turns
//      (round-robin, and the manager strategy), each beside the same chat completion called directly
//      with the SDK (the model's own latency as a client sees it). The service's overhead per turn =
//      (round latency - 3 direct calls) / 3, against its overhead for a single reply = reply latency -
//      1 direct call; the manager's cost per turn = (manager round - round-robin round) / 3.
//   3. 20 connections over 100 sessions: rounds per second beside single-mode replies per second
//      (interleaved runs).
// Usage: npm run bench:groups (DATABASE_URL and REDIS_URL default to the local servers).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { AgentDefinition } from '../src/agents/agent.js'
import { bestByExpertise, mentionedAgents, nextInTurn } from '../src/groups/speakers.js'
import { PROJECT_ROOT } from '../src/paths.js'
import { LlmStub } from '../test/support/llm-stub.js'
import { postMessages, type BenchServer, type LoadResult } from './conversation-load.js'
import { MODEL, QUESTION, directWholeCall, startStubServer, type ChatMessages } from './openai-stub.js'
import { prepareDatabase } from './database.js'
import { median } from './report.js'

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const DURATION = Number(process.env.BENCH_DURATION ?? 8)
const REQUESTS = Number(process.env.BENCH_REPLIES ?? 120)
const REPLY = 'The stub answers at once with a short reply of a dozen words or so.'

const MANIFEST = `agents:
${['a', 'b', 'c', 'boss'].map((id) => `  - id: ${id}
    name: Agent ${id}
    description: Agent ${id}.
    provider: openai
    model: ${MODEL}
    systemPrompt: You are agent ${id}.
    maxTokens: 256`).join('\n')}
`

// 1. Speaker selection, in process.
function selectionFigures (): Record<string, number> {
  const words = ['sql', 'index', 'query', 'poem', 'essay', 'plan', 'budget', 'bug', 'test', 'deploy', 'docker', 'css', 'design', 'review', 'api', 'latency']
  const agents: AgentDefinition[] = Array.from({ length: 10 }, (_, i) => ({
    id: `agent-${i}`,
    name: `Agent${i}`,
    description: '',
    provider: 'echo',
    model: 'echo',
    systemPrompt: '',
    temperature: 0,
    maxTokens: 10,
    expertise: Array.from({ length: 8 }, (_, k) => `${words[(i + k) % words.length]}${k > 3 ? ' tuning' : ''}`)
  }))
  const message = 'Could you review the query plan of this SQL, why the index is not used, and how the latency of the API could be cut? @Agent3 @agent-7 ' + 'More context follows here. '.repeat(10)
  const cases: Record<string, () => unknown> = {
    'round-robin': () => nextInTurn(agents, 'agent-4', (agent) => agent.id !== 'agent-5'),
    expertise: () => bestByExpertise(agents, message, (agent) => agent.id !== 'agent-2'),
    mentions: () => mentionedAgents(message, agents)
  }
  const figures: Record<string, number> = {}
  for (const [name, run] of Object.entries(cases)) {
    const calls = 20_000
    const rounds: number[] = []
    for (let round = 0; round < 5; round++) {
      const started = performance.now()
      for (let i = 0; i < calls; i++) run()
      rounds.push(((performance.now() - started) / calls) * 1000)
    }
    figures[name] = median(rounds.slice(1))
  }
  return figures
}

async function createSession (url: string, body: Record<string, unknown>): Promise<string> {
  const response = await fetch(`${url}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (response.status !== 201) throw new Error(`POST /v1/sessions answered ${response.status}: ${await response.text()}`)
  return ((await response.json()) as { id: string }).id
}

async function sessions (url: string, count: number, body: Record<string, unknown>): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < count; i++) ids.push(await createSession(url, body))
  return ids
}

/** One request at a time: the latency of each post (a reply, or a whole round). */
async function posts (url: string, ids: string[], count: number, expectTurns: number): Promise<number[]> {
  const latencies: number[] = []
  for (let i = 0; i < count; i++) {
    const started = performance.now()
    const response = await fetch(`${url}/v1/sessions/${ids[i % ids.length]}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: QUESTION }) })
    const body = (await response.json()) as { replies?: unknown[]; round?: { turns: number } }
    if (response.status !== 201) throw new Error(`POST messages answered ${response.status}: ${JSON.stringify(body)}`)
    if (expectTurns > 1 && body.round?.turns !== expectTurns) throw new Error(`a round of ${body.round?.turns} turns, not ${expectTurns}`)
    latencies.push(performance.now() - started)
  }
  return latencies
}

const fmt = (value: number, digits = 2) => value.toFixed(digits)
const spread = (values: number[]) => `${Math.round(((Math.max(...values) - Math.min(...values)) / median(values)) * 100)}%`

const selection = selectionFigures()
const database = await prepareDatabase(DATABASE_URL)
const stub = await LlmStub.start()
stub.setDefault((request) => (request.model === MODEL && /FINISH|speaks next/.test(JSON.stringify(request.body)) ? { text: 'b' } : { text: REPLY }))
let server: BenchServer | undefined
try {
  const started = await startStubServer({ databaseUrl: database.url, redisUrl: REDIS_URL, poolSize: 10, stub, manifest: MANIFEST })
  server = started.server
  const { client } = started
  const single = await sessions(server.url, 20, { agents: ['a'] })
  const group = await sessions(server.url, 20, { agents: ['a', 'b', 'c'], group: { strategy: 'round-robin', maxTurns: 3 } })
  const managed = await sessions(server.url, 20, { agents: ['a', 'b', 'c'], group: { strategy: 'manager', manager: 'boss', maxTurns: 3 } })
  const messages: ChatMessages = [{ role: 'system', content: 'You are agent a.' }, { role: 'user', content: QUESTION }]

  // 2. One at a time, interleaved in batches so that a noisy neighbour hits every side alike.
  await posts(server.url, single, 20, 1)
  await posts(server.url, group, 20, 3)
  await posts(server.url, managed, 20, 3)
  const rounds: Array<{ direct: number; single: number; group: number; managed: number }> = []
  for (let run = 0; run < RUNS; run++) {
    const direct: number[] = []
    const singles: number[] = []
    const groups: number[] = []
    const manageds: number[] = []
    for (let batch = 0; batch < REQUESTS / 20; batch++) {
      stub.requests.length = 0
      for (let i = 0; i < 20; i++) direct.push(await directWholeCall(client, messages))
      singles.push(...(await posts(server.url, single, 20, 1)))
      groups.push(...(await posts(server.url, group, 20, 3)))
      manageds.push(...(await posts(server.url, managed, 20, 3)))
    }
    rounds.push({ direct: median(direct), single: median(singles), group: median(groups), managed: median(manageds) })
    stub.requests.length = 0
  }
  const perRun = rounds.map((r) => {
    const singleOverhead = r.single - r.direct
    const turnOverhead = (r.group - 3 * r.direct) / 3
    return { ...r, singleOverhead, turnOverhead, ratio: turnOverhead / singleOverhead, managerPerTurn: (r.managed - r.group) / 3 }
  })
  const pick = (key: keyof (typeof perRun)[number]) => median(perRun.map((r) => r[key]))

  // 3. 20 connections over 100 sessions each: rounds per second beside replies per second.
  const loadSingle = await sessions(server.url, 100, { agents: ['a'] })
  const loadGroup = await sessions(server.url, 100, { agents: ['a', 'b', 'c'], group: { strategy: 'round-robin', maxTurns: 3 } })
  const load = { connections: 20, durationSeconds: DURATION }
  const singleLoad: LoadResult[] = []
  const groupLoad: LoadResult[] = []
  for (let run = 0; run < RUNS; run++) {
    singleLoad.push(await postMessages(server.url, loadSingle, load))
    stub.requests.length = 0
    groupLoad.push(await postMessages(server.url, loadGroup, load))
    stub.requests.length = 0
  }
  const repliesPerSecond = median(singleLoad.map((r) => r.perSecond))
  const roundsPerSecond = median(groupLoad.map((r) => r.perSecond))

  console.log(`Group conversation benchmarks (OpenAI SDK against a zero-latency loopback stub; ${RUNS} rounds, median of the rounds)`)
  console.log('  speaker selection, 10 agents  ' + Object.entries(selection).map(([name, us]) => `${name} ${fmt(us, 2)} µs`).join(', ') + ' per call (target < 100 µs)')
  console.log(`  direct SDK call (one model call)     p50 ${fmt(pick('direct'))} ms`)
  console.log(`  single-mode JSON reply               p50 ${fmt(pick('single'))} ms, overhead ${fmt(pick('singleOverhead'))} ms (runs ${perRun.map((r) => fmt(r.singleOverhead)).join(' / ')})`)
  console.log(`  round of 3 turns (round-robin)       p50 ${fmt(pick('group'))} ms, overhead per turn ${fmt(pick('turnOverhead'))} ms (runs ${perRun.map((r) => fmt(r.turnOverhead)).join(' / ')})`)
  console.log(`  per turn / single reply              ${fmt(pick('ratio'))} (runs ${perRun.map((r) => fmt(r.ratio)).join(' / ')}; target <= 1.3)`)
  console.log(`  round of 3 turns (manager)           p50 ${fmt(pick('managed'))} ms: the manager's model call costs ${fmt(pick('managerPerTurn'))} ms per turn, bounded by GROUP_MANAGER_TIMEOUT_MS`)
  console.log(`  20 connections, 100 sessions         ${fmt(roundsPerSecond, 1)} rounds/s (${fmt(roundsPerSecond * 3, 1)} turns/s; spread ${spread(groupLoad.map((r) => r.perSecond))}, non-2xx ${groupLoad.map((r) => r.non2xx).join('/')}) beside ${fmt(repliesPerSecond, 1)} single replies/s (spread ${spread(singleLoad.map((r) => r.perSecond))}, non-2xx ${singleLoad.map((r) => r.non2xx).join('/')})`)
  mkdirSync(join(PROJECT_ROOT, 'bench', 'results'), { recursive: true })
  writeFileSync(join(PROJECT_ROOT, 'bench', 'results', 'groups.json'), JSON.stringify({ at: new Date().toISOString(), selectionMicroseconds: selection, perRun, singleLoad, groupLoad }, null, 2) + '\n')
} finally {
  server?.child.kill('SIGTERM')
  await sleep(500)
  await stub.close()
  await database.dispose()
}
