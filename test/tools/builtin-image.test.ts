import { execFileSync } from 'node:child_process'
import t from 'tap'
import { createTestDatabase } from '../helper.js'
import { freePort } from '../support/server-process.js'
import { buildRuntimeLayout } from '../deploy/runtime-layout.js'
import { cleanEnv, startChild, stopChild, waitForStatus } from '../deploy/support.js'

// The built-in MCP server in the image's layout (the runtime stage's files, no node_modules), started
// by the service as agents/default.yaml says: it connects, its tools are listed, and SIGTERM ends it.

t.setTimeout(480_000)
const layout = await buildRuntimeLayout(t)

t.test('the image runs the built-in MCP server of the default manifest', async (t) => {
  const [port, healthPort] = [await freePort(), await freePort()]
  const env = cleanEnv({ NODE_ENV: 'production', HOST: '127.0.0.1', PORT: String(port), HEALTH_PORT: String(healthPort), DATABASE_URL: await createTestDatabase(t) })
  const server = startChild(process.execPath, layout.cmd.slice(1), { cwd: layout.dir, env })
  t.teardown(() => stopChild(server, 5000))
  await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 60_000)

  const deadline = Date.now() + 20_000
  let tools: { servers: Array<{ id: string; status: string; tools: Array<{ name: string }> }>; agents: Record<string, string[]> }
  do {
    tools = await (await fetch(`http://127.0.0.1:${port}/v1/tools`)).json() as typeof tools
    if (tools.servers[0]?.status === 'connected') break
    await new Promise((resolve) => setTimeout(resolve, 100))
  } while (Date.now() < deadline)
  if (tools.servers[0]?.status !== 'connected') t.comment(server.output())
  t.match(tools.servers, [{ id: 'builtin', status: 'connected' }], 'the built-in server connects')
  t.same(tools.servers[0]!.tools.map((tool) => tool.name).sort(), ['calculator', 'current_time'])
  t.same(tools.agents.assistant, ['builtin/calculator', 'builtin/current_time'])
  const health = await (await fetch(`http://127.0.0.1:${healthPort}/health`)).json() as { services: { tools: unknown } }
  t.match(health.services.tools, { status: 'up', servers: { builtin: 'connected' } })

  const children = () => execFileSync('ps', ['-o', 'args=', '--ppid', String(server.child.pid)], { encoding: 'utf8' })
  t.match(children(), /dist\/src\/tools\/builtin\/server\.js/, 'the service started it')
  t.equal(await stopChild(server, 15_000), 0, 'SIGTERM: a clean exit')
})
