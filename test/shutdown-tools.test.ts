import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import pg from 'pg'
import { createTestDatabase, eventually, tempDir } from './helper.js'
import { MCP_TEST_SERVER_ARGS } from './support/mcp-test-server.js'
import { startServerProcess } from './support/server-process.js'

// SIGTERM while a tool call runs (DESIGN section 14): the real server process, an echo agent whose
// `/tool slow` line calls the MCP test server's slow tool over stdio.

const MANIFEST = `
mcpServers:
  - { id: local, transport: stdio, command: ${JSON.stringify(process.execPath)}, args: ${JSON.stringify(MCP_TEST_SERVER_ARGS)} }
agents:
  - { id: assistant, name: Assistant, description: Echo with tools., provider: echo, model: echo-1, systemPrompt: Hi., tools: [local] }
`

async function start (t: Test, shutdownMs: number) {
  const database = await createTestDatabase(t)
  const file = join(await tempDir(t), 'agents.yaml')
  await writeFile(file, MANIFEST)
  const server = await startServerProcess({ DATABASE_URL: database, AGENTS_FILE: file, SHUTDOWN_TIMEOUT_MS: String(shutdownMs) })
  t.teardown(() => server.child.kill('SIGKILL'))
  const connected = await eventually(async () => {
    const body = await (await fetch(`${server.apiUrl}/v1/tools`)).json() as { servers: Array<{ status: string }> }
    return body.servers[0]?.status === 'connected'
  }, 20_000)
  t.ok(connected, 'the stdio server is connected')
  const db = new pg.Client({ connectionString: database })
  await db.connect()
  t.teardown(() => db.end())
  return { server, db }
}

async function streamed (apiUrl: string, content: string): Promise<{ sessionId: string; text: Promise<string> }> {
  const session = await (await fetch(`${apiUrl}/v1/sessions`, { method: 'POST' })).json() as { id: string }
  const response = await fetch(`${apiUrl}/v1/sessions/${session.id}/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ content })
  })
  return { sessionId: session.id, text: response.text() }
}

const toolCalled = (db: pg.Client, sessionId: string) => eventually(async () => (await db.query("SELECT 1 FROM event_logs WHERE session_id = $1 AND type = 'tool.called'", [sessionId])).rowCount === 1, 10_000)

t.test('SIGTERM mid-call within the drain: the call finishes, the reply is stored and sent, exit 0', async (t) => {
  const { server, db } = await start(t, 15_000)
  const reply = await streamed(server.apiUrl, '/tool slow {"ms":1500}')
  t.ok(await toolCalled(db, reply.sessionId), 'the call is running')
  server.child.kill('SIGTERM')
  const text = await reply.text
  t.match(text, /event: tool_result\ndata: \{[^\n]*"waited 1500 ms"/)
  t.match(text, /event: done\ndata: \{[^\n]*"Echo \(echo-1\): slow -> waited 1500 ms"/)
  t.equal(await server.exited, 0, server.output())
  const { rows } = await db.query('SELECT role, metadata->>\'outcome\' AS outcome FROM chat_messages WHERE session_id = $1 ORDER BY seq', [reply.sessionId])
  t.same(rows, [{ role: 'user', outcome: null }, { role: 'tool', outcome: 'ok' }, { role: 'assistant', outcome: null }])
})

t.test('SIGTERM mid-call past the drain deadline: the call is stored as cancelled, the reply ends with an error, exit 0', async (t) => {
  const { server, db } = await start(t, 1500)
  const reply = await streamed(server.apiUrl, '/tool slow {"ms":20000}')
  t.ok(await toolCalled(db, reply.sessionId), 'the call is running')
  server.child.kill('SIGTERM')
  const text = await reply.text
  t.match(text, /event: error\ndata: \{[^\n]*"code":"SHUTTING_DOWN"/)
  t.notMatch(text, /event: done/)
  t.equal(await server.exited, 0, server.output())
  const { rows } = await db.query('SELECT role, metadata->>\'outcome\' AS outcome FROM chat_messages WHERE session_id = $1 ORDER BY seq', [reply.sessionId])
  t.same(rows, [{ role: 'user', outcome: null }, { role: 'tool', outcome: 'cancelled' }], 'the cancelled call is recorded; no reply is stored')
})
