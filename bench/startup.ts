import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { PROJECT_ROOT } from '../src/paths.js'
import { onInterrupt } from './cleanup.js'
import { residentMemoryMb } from './load.js'

export interface StartupSample {
  /** From spawn to the first answer of the ops port (any status: /ready is 503 while starting). */
  opsUpMs: number
  /** From spawn to GET /ready answering 200. */
  readyMs: number
  rssAtReadyMb: number
  /** VmRSS after idling for idleMs once ready. */
  rssIdleMb: number
  /**
   * With settleMs: VmRSS once V8's memory reducer has given back the young generation that start-up
   * grew (it runs after some seconds without allocation), and when that happened (ms after ready).
   */
  rssSettledMb?: number
  settledAfterMs?: number
  /** Exit code after SIGTERM (0 is a clean graceful shutdown). */
  exitCode: number | null
  shutdownMs: number
}

export interface StartupOptions {
  env: Record<string, string>
  idleMs: number
  /** If > 0, keep idling (up to this long) until RSS settles, see StartupSample.rssSettledMb. */
  settleMs?: number
  timeoutMs: number
}

export const SERVER_SCRIPT = join(PROJECT_ROOT, 'dist', 'src', 'server.js')

/** The node flags of `npm start` (package.json's start script), so the service starts here as it does there. */
export function npmStartNodeFlags (): string[] {
  const pkg = JSON.parse(readFileSync(join(PROJECT_ROOT, 'package.json'), 'utf8')) as { scripts?: { start?: string } }
  const match = /^node((?:\s+--\S+)*)\s+dist\/src\/server\.js$/.exec(pkg.scripts?.start ?? '')
  if (!match) throw new Error('package.json\'s start script is not "node [--flags] dist/src/server.js": teach bench/startup.ts the new one')
  return (match[1] ?? '').split(/\s+/).filter(Boolean)
}

import { freeLoopbackPort as freePort } from '../src/db/embedded-postgres.js'

export { freePort }

function readyStatus (port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/ready', agent: false, timeout: 1000 }, (res) => {
      res.resume()
      resolve(res.statusCode)
    })
    req.on('error', () => resolve(undefined))
    req.on('timeout', () => req.destroy())
    req.end()
  })
}

/**
 * Samples VmRSS every 500 ms until it has dropped by 10% from `startMb` and held for 3 s, or until
 * maxMs: the last sample (and when it settled) either way.
 */
async function waitForSettledRss (pid: number, startMb: number, maxMs: number): Promise<{ rssMb: number; afterMs: number }> {
  const started = performance.now()
  let droppedAt: number | undefined
  let rssMb = startMb
  while (performance.now() - started < maxMs) {
    await sleep(500)
    rssMb = residentMemoryMb(pid)
    const now = performance.now() - started
    if (rssMb < startMb * 0.9) droppedAt ??= now
    if (droppedAt !== undefined && now - droppedAt >= 3000) return { rssMb, afterMs: droppedAt }
  }
  return { rssMb, afterMs: droppedAt ?? maxMs }
}

/**
 * One start of the compiled service, as `npm start` runs it (`node <its flags> dist/src/server.js`;
 * npm's own start-up and the prestart build are not counted): spawn, poll /ready every 10 ms until
 * 200, idle, read VmRSS, SIGTERM, wait for the exit.
 */
export async function measureStartup (opts: StartupOptions): Promise<StartupSample> {
  const healthPort = await freePort()
  const env = {
    PATH: process.env.PATH ?? '',
    HOME: process.env.HOME ?? '',
    HOST: '127.0.0.1',
    PORT: String(await freePort()),
    HEALTH_PORT: String(healthPort),
    ...opts.env
  }
  const started = performance.now()
  const child = spawn(process.execPath, [...npmStartNodeFlags(), SERVER_SCRIPT], { cwd: PROJECT_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  const output: string[] = []
  const keep = (chunk: Buffer) => {
    output.push(...chunk.toString().split('\n').filter(Boolean))
    output.splice(0, Math.max(0, output.length - 20))
  }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  const forget = onInterrupt(kill)
  try {
    let opsUpMs: number | undefined
    let readyMs: number | undefined
    while (readyMs === undefined) {
      if (child.exitCode !== null) throw new Error(`the server exited with code ${child.exitCode} before /ready:\n${output.join('\n')}`)
      if (performance.now() - started > opts.timeoutMs) throw new Error(`/ready not 200 within ${opts.timeoutMs} ms:\n${output.join('\n')}`)
      const status = await readyStatus(healthPort)
      const now = performance.now() - started
      if (status !== undefined && opsUpMs === undefined) opsUpMs = now
      if (status === 200) readyMs = now
      else await sleep(10)
    }
    const pid = child.pid ?? 0
    const rssAtReadyMb = residentMemoryMb(pid)
    await sleep(opts.idleMs)
    const rssIdleMb = residentMemoryMb(pid)
    const settled = opts.settleMs ? await waitForSettledRss(pid, rssIdleMb, opts.settleMs) : undefined
    const stopping = performance.now()
    child.kill('SIGTERM')
    const exitCode = await Promise.race([exited, sleep(15_000, 'timeout' as const, { ref: false })])
    if (exitCode === 'timeout') throw new Error(`no exit within 15 s of SIGTERM:\n${output.join('\n')}`)
    return {
      opsUpMs: opsUpMs ?? readyMs,
      readyMs,
      rssAtReadyMb,
      rssIdleMb,
      ...(settled ? { rssSettledMb: settled.rssMb, settledAfterMs: settled.afterMs + opts.idleMs } : {}),
      exitCode,
      shutdownMs: performance.now() - stopping
    }
  } finally {
    await kill()
    forget()
  }
}
