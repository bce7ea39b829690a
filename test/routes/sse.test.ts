import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { buildTestApp, eventually, tempDir, testEnv } from '../helper.js'
import { LlmStub } from '../support/llm-stub.js'
import { stalledClient, watchStreamedResponses } from '../support/stalled-client.js'

// routes/sse.ts through real sockets: a reply streamed to a client that stops reading.

const AGENTS = `agents:
  - id: writer
    name: Writer
    description: Writes at length.
    provider: openai
    model: writer-test
    systemPrompt: You write.
`

t.test('a reply streamed to a client that stops reading is finished and stored; the client is disconnected', async (t) => {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  // 8 MB in 80 deltas: far more than the kernel's socket buffers and the stream's bound together.
  const deltas = Array.from({ length: 80 }, (_, i) => `${i}:${'x'.repeat(100_000)} `)
  stub.setDefault({ text: deltas })
  const file = join(await tempDir(t), 'agents.yaml')
  await writeFile(file, AGENTS)
  const app = await buildTestApp(t, await testEnv(t, { AGENTS_FILE: file, OPENAI_API_KEY: 'sk-test', OPENAI_BASE_URL: stub.openaiBaseUrl, SSE_DRAIN_TIMEOUT_MS: '300' }))
  const watched = watchStreamedResponses(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', payload: { agents: ['writer'] } })).json()

  const body = JSON.stringify({ content: 'write at length' })
  const client = await stalledClient(
    (app.server.address() as { port: number }).port,
    `POST /v1/sessions/${session.id}/messages HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  )
  t.teardown(() => client.socket.destroy())

  const stored = async () => {
    const res = await app.inject(`/v1/sessions/${session.id}/messages`)
    if (res.statusCode !== 200) throw new Error(`history: ${res.statusCode} ${res.body.slice(0, 300)}`)
    return res.json().messages as Array<{ role: string; content: string }>
  }
  t.ok(await eventually(async () => (await stored()).length === 2, 20_000, 200), 'the reply is stored although its client took almost nothing')
  t.ok((await stored())[1]?.content === deltas.join(''), 'the whole reply')
  t.ok(await eventually(() => watched[0]?.closed === true, 5000), 'the client that stopped reading was disconnected')
  t.equal((await app.inject({ method: 'POST', url: `/v1/sessions/${session.id}/messages`, payload: { content: 'next' } })).statusCode, 201, 'the session takes the next message')
})
