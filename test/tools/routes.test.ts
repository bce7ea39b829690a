import { join } from 'node:path'
import t from 'tap'
import { buildService, eventually, testEnv } from '../helper.js'
import { MCP_TEST_SERVER_ARGS, startHttpMcpServer } from '../support/mcp-test-server.js'
import { freePort } from '../support/server-process.js'

// The tools plugin in the real app: the manifest's servers connected after ready, GET /v1/tools,
// /health's services.tools and the metrics on the ops instance, the children stopped on close.

const never = new AbortController().signal

t.test('GET /v1/tools, /health and the metrics show each server; the agents get their tools', async (t) => {
  const http = await startHttpMcpServer()
  t.teardown(() => http.close())
  const deadPort = await freePort()
  const manifest = `
mcpServers:
  - { id: local, transport: stdio, command: ${JSON.stringify(process.execPath)}, args: ${JSON.stringify(MCP_TEST_SERVER_ARGS)}, allow: [echo, add] }
  - { id: remote, transport: http, url: ${JSON.stringify(http.url)} }
  - { id: gone, transport: http, url: "http://127.0.0.1:${deadPort}/mcp" }
agents:
  - { id: helper, name: Helper, provider: echo, model: echo, tools: [local, remote/fail, remote/nope, gone] }
  - { id: plain, name: Plain, provider: echo, model: echo }
`
  const dir = t.testdir({ 'team.yaml': manifest })
  const { app, ops } = await buildService(t, await testEnv(t, { AGENTS_FILE: join(dir, 'team.yaml'), API_KEYS: 'k1:acme' }))
  const auth = { authorization: 'Bearer k1' }

  t.equal((await app.inject('/v1/tools')).statusCode, 401, 'the same API key as /v1/agents')
  t.ok(await eventually(() => app.tools.servers().filter((server) => server.status === 'connected').length === 2, 20_000), 'both live servers connect')
  t.ok(await eventually(() => app.tools.servers().find((server) => server.id === 'gone')!.status === 'down'))

  const res = await app.inject({ url: '/v1/tools', headers: auth })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.same(body.servers.map((server: { id: string; status: string }) => [server.id, server.status]), [['local', 'connected'], ['remote', 'connected'], ['gone', 'down']])
  t.same(body.servers[0].tools.map((tool: { name: string }) => tool.name).sort(), ['add', 'echo'])
  t.match(body.servers[0].tools.find((tool: { name: string }) => tool.name === 'add'), { description: 'Adds two numbers', inputSchema: { type: 'object' } })
  t.type(body.servers[2].error, 'string', 'a down server says why')
  t.same(body.agents, { helper: ['local/echo', 'local/add', 'remote/fail'], plain: [] }, 'refs expanded over what is offered now')

  const health = (await ops.inject('/health')).json()
  t.match(health.services.tools, { status: 'degraded', servers: { local: 'connected', remote: 'connected', gone: 'down' }, message: /2 of 3 MCP servers connected: gone down/ })
  t.equal(health.status, 'degraded', 'a down tool server shows')
  t.equal((await ops.inject('/ready')).statusCode, 200, 'and never fails readiness')

  t.match(await app.tools.call('local', 'add', { a: 1, b: 2 }, never), { outcome: 'ok', content: '3' })
  app.toolMetrics.observeSteps(2)
  const metrics = (await ops.inject('/metrics')).body
  t.match(metrics, /smalltalk_mcp_server_up\{server="local"\} 1/)
  t.match(metrics, /smalltalk_mcp_server_up\{server="gone"\} 0/)
  t.match(metrics, /smalltalk_tool_calls_total\{server="local",tool="add",outcome="ok"\} 1/)
  t.match(metrics, /smalltalk_tool_call_duration_seconds_count\{server="local",tool="add"\} 1/)
  t.match(metrics, /smalltalk_tool_steps_per_reply_count 1/)

  await app.close()
  t.same(app.tools.servers().map((server) => server.status), ['down', 'down', 'down'], 'closed with the app')
})

t.test('a manifest without MCP servers: tools disabled, health unaffected', async (t) => {
  const dir = t.testdir({ 'team.yaml': 'agents:\n  - { id: solo, name: Solo, provider: echo, model: echo }\n' })
  const { app, ops } = await buildService(t, await testEnv(t, { AGENTS_FILE: join(dir, 'team.yaml') }))
  t.same((await app.inject('/v1/tools')).json(), { servers: [], agents: { solo: [] } })
  const health = (await ops.inject('/health')).json()
  t.same(health.services.tools, { status: 'disabled', message: 'no MCP servers in the agents manifest', servers: {} })
})

t.test('the default manifest: the built-in server gives the assistant a calculator and the time', async (t) => {
  const { app } = await buildService(t, await testEnv(t))
  t.ok(await eventually(() => app.tools.servers().find((server) => server.id === 'builtin')?.status === 'connected', 20_000), 'builtin connects')
  const body = (await app.inject('/v1/tools')).json()
  t.same(body.servers[0].tools.map((tool: { name: string }) => tool.name).sort(), ['calculator', 'current_time'])
  t.same(body.agents.assistant, ['builtin/calculator', 'builtin/current_time'])
  t.match(await app.tools.call('builtin', 'calculator', { expression: '(2 + 3) * -2' }, never), { outcome: 'ok', content: '-10' })
  t.match(await app.tools.call('builtin', 'calculator', { expression: '1 / 0' }, never), { outcome: 'error', isError: true, content: /division by zero/ })
  t.match(await app.tools.call('builtin', 'current_time', { timeZone: 'Europe/Paris' }, never), { outcome: 'ok', content: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d \(Europe\/Paris\)$/ })
  t.match(await app.tools.call('builtin', 'current_time', { timeZone: 'Nowhere/Land' }, never), { outcome: 'error', content: /unknown time zone/ })
})
