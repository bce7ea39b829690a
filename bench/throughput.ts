import { fork, type ChildProcess } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { onInterrupt } from './cleanup.js'
import { runLoad, waitForQuiet, type LoadResult } from './load.js'
import { median } from './report.js'
import type { ServerMessage, ServerSpec } from './server.js'
import type { Variant } from './variants.js'

export interface ThroughputOptions {
  variants: Variant[]
  env: Record<string, string>
  connections: number
  durationSeconds: number
  warmupSeconds: number
  runs: number
  /** Before each measured run, wait up to this long for the rest of the machine to be quiet. */
  quietWaitMs: number
  /** Total time that may be spent measuring noisy runs again. */
  retryBudgetSeconds: number
  /** Pairs of 1 s slices (bare, full, in alternating order) measured after the rounds; 0 for none. */
  pairedSlices: number
  progress: (line: string) => void
}

export interface VariantRuns {
  variant: Variant
  runs: LoadResult[]
  /** Access-log lines written per request sent (about 1 with the access log on, 0 with it off). */
  logLinesPerRequest: number | null
  logBytesPerRequest: number | null
}

/** full / bare from short slices measured back to back: less exposed to the machine's slow drifts. */
export interface PairedRatio {
  pairs: number
  /** Pairs left out because other processes were busy meanwhile (or kept: too few quiet ones). */
  noisyPairsLeftOut: number
  noisyPairsKept: number
  sliceSeconds: number
  /** Sum of full's requests per second over sum of bare's. */
  ratio: number
  /** Per-pair ratios: median and quartiles. */
  median: number
  lowerQuartile: number
  upperQuartile: number
  perPair: number[]
}

export interface RunningServer {
  variant: Variant
  child: ChildProcess
  port: number
  logFile: string
  logLinesAtStart: number
  logBytesAtStart: number
  requests: number
}

/** Cores the rest of the machine may use before a run starts (the idle servers use a few percent). */
const QUIET_THRESHOLD = 0.2
/** Other load (cores) above which a run counts as noisy and is measured again. */
const NOISY_THRESHOLD = 0.25
const MAX_RETRIES = 2
const SERVER_ENTRY = fileURLToPath(new URL('./server.ts', import.meta.url))
const SUBSTITUTION_HOOKS = fileURLToPath(new URL('./hooks/register.ts', import.meta.url))

export async function startServer (variant: Variant, env: Record<string, string>, logDir: string): Promise<RunningServer> {
  const logFile = join(logDir, `${variant.name}.log`)
  const spec: ServerSpec = { variant, env: { ...env, ...variant.env }, logFile }
  const child = fork(SERVER_ENTRY, [], {
    execArgv: ['--import', import.meta.resolve('tsx'), '--import', SUBSTITUTION_HOOKS],
    env: { ...process.env, BENCH_SERVER: JSON.stringify(spec), BENCH_SUBSTITUTE: JSON.stringify(variant.substitute ?? []) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${variant.name}: server did not start within 60 s`))
    }, 60_000)
    child.once('exit', (code) => reject(new Error(`${variant.name}: server exited with code ${code} before listening`)))
    child.on('message', (message: ServerMessage) => {
      if (message.type === 'listening') {
        clearTimeout(timer)
        resolve(message.port)
      } else if (message.type === 'failed') {
        clearTimeout(timer)
        reject(new Error(`${variant.name}: server failed to start: ${message.message}`))
      }
    })
  })
  const { lines, bytes } = await countLines(logFile)
  return { variant, child, port, logFile, logLinesAtStart: lines, logBytesAtStart: bytes, requests: 0 }
}

export async function stopServer (server: RunningServer): Promise<void> {
  const { child } = server
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  if (child.connected) child.send({ type: 'stop' })
  else child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
  await exited
  clearTimeout(timer)
}

async function countLines (file: string): Promise<{ lines: number; bytes: number }> {
  const exists = await stat(file).catch(() => undefined)
  if (!exists) return { lines: 0, bytes: 0 }
  let lines = 0
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++
  }
  return { lines, bytes: exists.size }
}

const PAIRED_SLICE_SECONDS = 1

async function measurePaired (
  servers: RunningServer[],
  opts: ThroughputOptions,
  load: (server: RunningServer, durationSeconds: number) => Promise<LoadResult>
): Promise<PairedRatio | null> {
  const bare = servers.find((s) => s.variant.name === 'bare')
  const full = servers.find((s) => s.variant.name === 'full')
  if (!bare || !full || opts.pairedSlices <= 0) return null
  const pairs: { bare: number; full: number; noisy: boolean }[] = []
  for (let i = 0; i < opts.pairedSlices; i++) {
    const results = new Map<RunningServer, LoadResult>()
    for (const server of i % 2 === 0 ? [bare, full] : [full, bare]) results.set(server, await load(server, PAIRED_SLICE_SECONDS))
    const [b, f] = [results.get(bare), results.get(full)]
    if (!b || !f) continue
    pairs.push({ bare: b.requestsPerSecond, full: f.requestsPerSecond, noisy: Math.max(b.otherCpu, f.otherCpu) > NOISY_THRESHOLD })
  }
  // Pairs during which other processes were busy are left out, unless that leaves fewer than half.
  const clean = pairs.filter((p) => !p.noisy)
  const kept = clean.length * 2 >= pairs.length ? clean : pairs
  const perPair = kept.map((p) => p.full / p.bare)
  const bareSum = kept.reduce((sum, p) => sum + p.bare, 0)
  const fullSum = kept.reduce((sum, p) => sum + p.full, 0)
  const sorted = [...perPair].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
  const result = {
    pairs: perPair.length,
    noisyPairsLeftOut: pairs.length - kept.length,
    noisyPairsKept: kept.filter((p) => p.noisy).length,
    sliceSeconds: PAIRED_SLICE_SECONDS,
    ratio: fullSum / bareSum,
    median: median(perPair),
    lowerQuartile: at(0.25),
    upperQuartile: at(0.75),
    perPair
  }
  opts.progress(
    `paired ${PAIRED_SLICE_SECONDS} s slices: full / bare ${result.ratio.toFixed(2)} over ${result.pairs} pairs ` +
      (result.noisyPairsLeftOut ? `(${result.noisyPairsLeftOut} noisy pairs left out) ` : '') +
      (result.noisyPairsKept ? `(${result.noisyPairsKept} of them noisy) ` : '') +
      `(bare ${Math.round(bareSum / result.pairs)}, full ${Math.round(fullSum / result.pairs)} req/s on average; per pair ${perPair.map((r) => r.toFixed(2)).join(' ')})`
  )
  return result
}

/**
 * Starts every variant's server (one process each, started one after the other so the migrations
 * run once), warms each up, then measures them round by round, the order reversed on every other
 * round so that drift (thermal, other tenants) spreads over all variants instead of favouring one.
 */
export async function measureThroughput (opts: ThroughputOptions): Promise<{
  variants: VariantRuns[]
  retriedRuns: number
  failed: { variant: string; error: string }[]
  paired: PairedRatio | null
}> {
  const logDir = await mkdtemp(join(tmpdir(), 'st-bench-logs-'))
  const servers: RunningServer[] = []
  const failed: { variant: string; error: string }[] = []
  const results = new Map<string, LoadResult[]>(opts.variants.map((v) => [v.name, []]))
  const stopAll = () => Promise.all(servers.map(stopServer))
  const forget = onInterrupt(stopAll)
  try {
    for (const variant of opts.variants) {
      try {
        servers.push(await startServer(variant, opts.env, logDir))
        opts.progress(`started ${variant.name} (pid ${servers.at(-1)?.child.pid})`)
      } catch (err) {
        // bare and full are the figure itself; another variant that cannot start is reported and skipped.
        if (variant.role === 'baseline' || variant.role === 'target') throw err
        failed.push({ variant: variant.name, error: (err as Error).message })
        opts.progress(`SKIPPED ${variant.name}: ${(err as Error).message.split('\n')[0]}`)
      }
    }
    const load = async (server: RunningServer, durationSeconds: number) => {
      const idlePids = servers.filter((s) => s !== server).map((s) => s.child.pid ?? 0)
      const result = await runLoad({ port: server.port, pid: server.child.pid ?? 0, idlePids, connections: opts.connections, durationSeconds })
      server.requests += result.requests
      return result
    }
    if (opts.warmupSeconds > 0) {
      for (const server of servers) await load(server, opts.warmupSeconds)
      opts.progress(`warmed up ${servers.length} servers (${opts.warmupSeconds} s each)`)
    }
    let retryBudgetMs = opts.retryBudgetSeconds * 1000
    let retried = 0
    for (let round = 0; round < opts.runs; round++) {
      const order = round % 2 === 0 ? servers : [...servers].reverse()
      for (const server of order) {
        let result: LoadResult | undefined
        // A run during which the rest of the machine was busy is measured again (the quietest kept),
        // as long as the retry budget lasts.
        for (let attempt = 0; ; attempt++) {
          if (opts.quietWaitMs > 0) await waitForQuiet(QUIET_THRESHOLD, opts.quietWaitMs, servers.map((s) => s.child.pid ?? 0))
          const retryStarted = Date.now()
          const attemptResult = await load(server, opts.durationSeconds)
          if (!result || attemptResult.otherCpu < result.otherCpu) result = attemptResult
          const noisy = attemptResult.otherCpu > NOISY_THRESHOLD
          opts.progress(
            `round ${round + 1}/${opts.runs} ${server.variant.name.padEnd(20)} ${Math.round(attemptResult.requestsPerSecond).toLocaleString('en-US').padStart(7)} req/s` +
              `  p99 ${attemptResult.latencyP99Ms} ms  CPU: server ${Math.round(attemptResult.serverCpu * 100)}% client ${Math.round(attemptResult.clientCpu * 100)}% idle servers ${Math.round(attemptResult.idleServersCpu * 100)}% other ${Math.round(attemptResult.otherCpu * 100)}%` +
              (attemptResult.non2xx || attemptResult.errors ? `  non-2xx ${attemptResult.non2xx} errors ${attemptResult.errors}` : '') +
              (noisy ? (attempt < MAX_RETRIES && retryBudgetMs > 0 ? '  (noisy: again)' : '  (noisy: kept, no retries left)') : '')
          )
          if (!noisy || attempt >= MAX_RETRIES || retryBudgetMs <= 0) break
          retryBudgetMs -= Date.now() - retryStarted
          retried++
        }
        results.get(server.variant.name)?.push(result)
      }
    }
    const paired = await measurePaired(servers, opts, load)
    await stopAll()
    const out: VariantRuns[] = []
    for (const server of servers) {
      const { lines, bytes } = await countLines(server.logFile)
      const logged = server.variant.log !== false && server.requests > 0
      out.push({
        variant: server.variant,
        runs: results.get(server.variant.name) ?? [],
        logLinesPerRequest: logged ? (lines - server.logLinesAtStart) / server.requests : null,
        logBytesPerRequest: logged ? (bytes - server.logBytesAtStart) / server.requests : null
      })
    }
    return { variants: out, retriedRuns: retried, failed, paired }
  } finally {
    await stopAll()
    forget()
    await rm(logDir, { recursive: true, force: true })
  }
}
