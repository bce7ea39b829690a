import { setTimeout as sleep } from 'node:timers/promises'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import { pino } from 'pino'
import { Registry } from 'prom-client'
import { ToolMetrics } from '../../src/metrics/tool-metrics.js'
import { McpServers, type McpServersOptions } from '../../src/tools/mcp-servers.js'
import type { McpServerConfig, ServerSnapshot } from '../../src/tools/tools.js'
import { MCP_TEST_SERVER_ARGS, startHttpMcpServer } from '../support/mcp-test-server.js'
import { freePort } from '../support/server-process.js'

// The catalog against the test MCP server, as a real child process over stdio and over real
// streamable HTTP on loopback: the SDK's client and server both run.

const stdio = (id: string, extra: Partial<McpServerConfig> = {}): McpServerConfig => ({
  id, transport: 'stdio', command: process.execPath, args: MCP_TEST_SERVER_ARGS, ...extra
})

interface Started { servers: McpServers; logs: () => string; registry: Registry }

function start (t: Test, configs: McpServerConfig[], options: Partial<McpServersOptions> = {}): Started {
  let logs = ''
  const stream = new Writable({ write (chunk, _encoding, done) { logs += String(chunk); done() } })
  const registry = new Registry()
  const servers = new McpServers({
    servers: configs,
    environment: { PATH: process.env.PATH, HOME: '/tmp', SHARED_NAME: 'given', SECRET_NAME: 'kept-back' },
    log: pino({ level: 'debug' }, stream),
    toolTimeoutMs: 5_000,
    resultMaxChars: 1_000,
    metrics: new ToolMetrics(registry, configs.map((config) => config.id)),
    backoff: { initialMs: 50, maxMs: 200, healthyMs: 60_000 },
    ...options
  })
  servers.start()
  t.teardown(() => servers.close())
  return { servers, logs: () => logs, registry }
}

/** Polls the snapshot of one server until `ready` holds (a child process starts in its own time). */
async function until (servers: McpServers, id: string, ready: (snapshot: ServerSnapshot) => boolean, timeoutMs = 20_000): Promise<ServerSnapshot> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const snapshot = servers.servers().find((server) => server.id === id)!
    if (ready(snapshot)) return snapshot
    if (Date.now() > deadline) throw new Error(`server ${id} never got there: ${JSON.stringify(snapshot)}`)
    await sleep(25)
  }
}
const connected = (snapshot: ServerSnapshot) => snapshot.status === 'connected'
const never = new AbortController().signal

t.test('a stdio server: connect, list, call, refusals, errors, the environment it gets', async (t) => {
  const { servers, registry, logs } = start(t, [stdio('local', { env: ['SHARED_NAME'] })])
  t.equal(servers.servers()[0]!.status, 'connecting', 'start() returns before the child is up')
  const snapshot = await until(servers, 'local', connected)
  t.same(snapshot.tools.map((tool) => tool.name).sort(), ['add', 'calls', 'crash', 'echo', 'env', 'fail', 'grow', 'mixed', 'slow'])
  const add = snapshot.tools.find((tool) => tool.name === 'add')!
  t.equal(add.description, 'Adds two numbers')
  t.match(add.inputSchema, { type: 'object', properties: { a: { type: 'number' } } })

  const ok = await servers.call('local', 'add', { a: 2, b: 3 }, never)
  t.match(ok, { content: '5', isError: false, outcome: 'ok' })
  t.ok(ok.latencyMs >= 0, 'latency measured')

  const invalid = await servers.call('local', 'add', { a: 'two' }, never)
  t.equal(invalid.outcome, 'invalid_arguments')
  t.ok(invalid.isError)
  t.match(invalid.content, /arguments\/a must be number/)
  t.match(invalid.content, /must have required property 'b'/)
  const calls = await servers.call('local', 'calls', {}, never)
  t.same(JSON.parse(calls.content), { add: 1 }, 'the invalid call never reached the server')

  t.match(await servers.call('local', 'fail', {}, never), { outcome: 'error', isError: true, content: 'the tool failed on purpose' })
  t.match(await servers.call('local', 'nope', {}, never), { outcome: 'unavailable', isError: true, content: /no tool "nope"/ })
  t.match(await servers.call('elsewhere', 'add', {}, never), { outcome: 'unavailable', content: /no MCP server "elsewhere"/ })
  t.match(await servers.call('local', 'mixed', {}, never), { outcome: 'ok', content: 'a picture:\n[image image/png]\n[resource file:///notes.txt]' })

  t.equal((await servers.call('local', 'env', { name: 'SHARED_NAME' }, never)).content, 'given', 'a named variable is passed')
  t.equal((await servers.call('local', 'env', { name: 'SECRET_NAME' }, never)).content, '(not set)', 'an unnamed one is not')
  t.equal((await servers.call('local', 'env', { name: 'HOME' }, never)).content, '/tmp', 'HOME is passed')

  const long = 'x'.repeat(1_500)
  const cut = await servers.call('local', 'echo', { text: long }, never)
  t.equal(cut.content, `${'x'.repeat(1_000)}…[cut: 500 more characters]`, 'the result is cut at TOOL_RESULT_MAX_CHARS')

  const metrics = await registry.getSingleMetricAsString('smalltalk_tool_calls_total')
  t.match(metrics, /smalltalk_tool_calls_total\{server="local",tool="add",outcome="ok"\} 1/)
  t.match(metrics, /smalltalk_tool_calls_total\{server="local",tool="add",outcome="invalid_arguments"\} 1/)
  t.match(metrics, /smalltalk_tool_calls_total\{server="local",tool="fail",outcome="error"\} 1/)
  t.match(metrics, /smalltalk_tool_calls_total\{server="\(unknown\)",tool="\(unknown\)",outcome="unavailable"\} 1/, 'names no server offers are not labels')
  t.match(await registry.getSingleMetricAsString('smalltalk_mcp_server_up'), /smalltalk_mcp_server_up\{server="local"\} 1/)
  t.match(await registry.getSingleMetricAsString('smalltalk_tool_call_duration_seconds'), /smalltalk_tool_call_duration_seconds_count\{server="local",tool="add"\} 2/)
  t.notMatch(logs(), /kept-back/, 'the environment is never logged')
})

t.test('timeouts, cancellation, allow and tools/list_changed', async (t) => {
  const { servers } = start(t, [stdio('quick', { timeoutMs: 300 }), stdio('narrow', { allow: ['echo', 'grow'] })])
  await until(servers, 'quick', connected)
  const narrow = await until(servers, 'narrow', connected)
  t.same(narrow.tools.map((tool) => tool.name).sort(), ['echo', 'grow'], 'allow filters the tools')
  t.match(await servers.call('narrow', 'add', { a: 1, b: 1 }, never), { outcome: 'unavailable' }, 'a tool left out by allow cannot be called')

  t.match(await servers.call('quick', 'slow', { ms: 5_000 }, never), { outcome: 'timeout', isError: true, content: /within 300 ms/ }, "the server's timeoutMs")
  const abort = new AbortController()
  setTimeout(() => abort.abort(new Error('reply aborted')), 50)
  t.match(await servers.call('quick', 'slow', { ms: 5_000 }, abort.signal), { outcome: 'cancelled', isError: true })
  t.match(await servers.call('quick', 'echo', { text: 'x' }, abort.signal), { outcome: 'cancelled' }, 'an aborted signal is not called')
  t.match(await servers.call('quick', 'echo', { text: 'still here' }, never), { outcome: 'ok', content: 'still here' }, 'the connection survives both')

  const unfiltered = start(t, [stdio('growing')]).servers
  await until(unfiltered, 'growing', connected)
  t.match(await unfiltered.call('growing', 'grow', {}, never), { outcome: 'ok' })
  await until(unfiltered, 'growing', (snapshot) => snapshot.tools.some((tool) => tool.name === 'grown'))
  t.match(await unfiltered.call('growing', 'grown', {}, never), { outcome: 'ok', content: 'grown' }, 're-listed on tools/list_changed')
  t.match(await servers.call('narrow', 'grow', {}, never), { outcome: 'ok' })
  await sleep(300)
  t.notOk(servers.servers().find((s) => s.id === 'narrow')!.tools.some((tool) => tool.name === 'grown'), 'a new tool outside allow stays out')
})

t.test('a stdio server that dies mid-call: an error, then it is restarted and answers again', async (t) => {
  const { servers, registry, logs } = start(t, [stdio('fragile')])
  await until(servers, 'fragile', connected)
  const crash = await servers.call('fragile', 'crash', {}, never)
  t.equal(crash.outcome, 'error')
  t.ok(crash.isError)
  const down = servers.servers()[0]!
  t.not(down.status, 'connected', 'down (or already reconnecting) after the crash')
  t.match(await servers.call('fragile', 'echo', { text: 'x' }, never), { outcome: /unavailable|ok/ })
  await until(servers, 'fragile', connected)
  t.match(await servers.call('fragile', 'echo', { text: 'back' }, never), { outcome: 'ok', content: 'back' }, 'a later call works')
  t.match(logs(), /MCP server \\"fragile\\" is down/, 'the loss is logged')
  t.match(await registry.getSingleMetricAsString('smalltalk_mcp_server_up'), /server="fragile"\} 1/)
})

t.test('a stdio program that cannot start is down, retried with back-off, and never blocks', async (t) => {
  const { servers, registry } = start(t, [{ id: 'missing', transport: 'stdio', command: '/nonexistent/mcp-server' }])
  const down = await until(servers, 'missing', (snapshot) => snapshot.status === 'down' && snapshot.error !== undefined, 5_000)
  t.match(down.error, /ENOENT|nonexistent/)
  t.same(down.tools, [])
  t.match(await servers.call('missing', 'echo', { text: 'x' }, never), { outcome: 'unavailable', content: /not connected/ })
  t.match(await registry.getSingleMetricAsString('smalltalk_mcp_server_up'), /server="missing"\} 0/)
})

t.test('an http server: headers sent, connect, call; one that is unreachable reports down', async (t) => {
  const http = await startHttpMcpServer()
  t.teardown(() => http.close())
  const port = await freePort()
  const { servers } = start(t, [
    { id: 'remote', transport: 'http', url: http.url, headers: { authorization: 'Bearer s3cret' }, allow: ['add', 'echo'] },
    { id: 'nowhere', transport: 'http', url: `http://127.0.0.1:${port}/mcp` }
  ])
  t.same(servers.servers().map((server) => server.status), ['connecting', 'connecting'], 'start returns before any server answers')
  const remote = await until(servers, 'remote', connected)
  t.same(remote.tools.map((tool) => tool.name).sort(), ['add', 'echo'])
  t.equal(http.lastHeaders().authorization, 'Bearer s3cret', 'the configured headers are sent')
  t.match(await servers.call('remote', 'add', { a: 40, b: 2 }, never), { outcome: 'ok', content: '42' })
  t.same(http.counts, { add: 1 })
  const nowhere = await until(servers, 'nowhere', (snapshot) => snapshot.status === 'down', 5_000)
  t.match(nowhere.error, /fetch failed|ECONNREFUSED/)
  t.match(await servers.call('nowhere', 'add', { a: 1, b: 1 }, never), { outcome: 'unavailable' })
})

t.test('an http server that goes away while connected: the call is an error and the server is down', async (t) => {
  const http = await startHttpMcpServer()
  const { servers, registry } = start(t, [{ id: 'remote', transport: 'http', url: http.url }])
  await until(servers, 'remote', connected)
  await http.close()
  const failed = await servers.call('remote', 'echo', { text: 'anyone?' }, never)
  t.match(failed, { outcome: 'error', isError: true, content: /Tool "echo" failed/ })
  t.not(servers.servers()[0]!.status, 'connected', 'no longer offered')
  t.match(await servers.call('remote', 'echo', { text: 'x' }, never), { outcome: 'unavailable' })
  t.match(await registry.getSingleMetricAsString('smalltalk_mcp_server_up'), /server="remote"\} 0/)
})

t.test('close ends the stdio children and stops reconnecting', async (t) => {
  const { servers } = start(t, [stdio('child'), { id: 'missing', transport: 'stdio', command: '/nonexistent/mcp-server' }])
  await until(servers, 'child', connected)
  const pid = await childPid()
  await servers.close()
  t.throws(() => process.kill(pid, 0), 'the child process is gone')
  t.same(servers.servers().map((server) => server.status), ['down', 'down'])
  await sleep(300)
  t.same(servers.servers().map((server) => server.status), ['down', 'down'], 'no reconnect after close')
})

/** The stdio child's pid, from the process table: the test server's only child of this process. */
async function childPid (): Promise<number> {
  const { execFileSync } = await import('node:child_process')
  const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' })
  const line = out.split('\n').find((row) => row.includes('mcp-test-server'))
  if (!line) throw new Error(`no test server child in:\n${out}`)
  return Number(line.trim().split(/\s+/)[0])
}
