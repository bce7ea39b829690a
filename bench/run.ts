import { execFileSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { PROJECT_ROOT } from '../src/paths.js'
import { onInterrupt } from './cleanup.js'
import { prepareDatabase } from './database.js'
import {
  candidateTable,
  costTable,
  pluginCosts,
  roundRatios,
  startupTable,
  summarise,
  summariseStartup,
  throughputTable,
  type StartupSummary,
  type VariantSummary
} from './report.js'
import { measureStartup, npmStartNodeFlags, type StartupSample } from './startup.js'
import { measureThroughput, type PairedRatio } from './throughput.js'
import { selectVariants } from './variants.js'

// npm run bench: GET / throughput of the production api instance against bare Fastify (and the cost
// of each plugin, and of proposed changes), then start-up time and idle memory of the compiled
// service. Everything on loopback. Settings, from the environment:
//   BENCH_DURATION     seconds per measured run (5)       BENCH_RUNS          runs per variant (3)
//   BENCH_CONNECTIONS  autocannon connections (50)        BENCH_WARMUP        seconds of warm-up per server (1)
//   BENCH_VARIANTS     comma list, or all (default: all but the extras in bench/variants.ts)
//   BENCH_ONLY         throughput | startup               BENCH_STARTUP_RUNS  starts with DATABASE_URL (5)
//   BENCH_EMBEDDED_RUNS starts on the embedded PostgreSQL (2)
//   BENCH_IDLE_MS      idle time before reading RSS (2000) BENCH_SETTLE_S     longest wait for RSS to settle (30)
//   BENCH_QUIET_WAIT   seconds to wait for a quiet machine before each run (10)
//   BENCH_RETRY_BUDGET seconds that may go to measuring disturbed runs again (120)
//   BENCH_PAIRS        pairs of 1 s slices, bare then full (alternating), after the rounds (12)
//   BENCH_SKIP_BUILD=1 when dist/ is already built from the current sources
//   DATABASE_URL, REDIS_URL: the servers to use (a scratch database is created and dropped);
//   without DATABASE_URL an embedded PostgreSQL, without REDIS_URL the in-process cache.

const TARGET_RATIO = 0.7
const TARGET_READY_MS = 1500
const TARGET_RSS_MB = 120
/** Median share of a core other processes may use during the kept runs of bare and full before the verdict is "NOISY". */
const NOISY_OTHER_CPU = 0.25

function setting (name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number (got ${JSON.stringify(raw)})`)
  return value
}

const settings = {
  durationSeconds: setting('BENCH_DURATION', 5),
  runs: Math.max(1, Math.round(setting('BENCH_RUNS', 3))),
  connections: Math.max(1, Math.round(setting('BENCH_CONNECTIONS', 50))),
  warmupSeconds: setting('BENCH_WARMUP', 1),
  startupRuns: Math.max(1, Math.round(setting('BENCH_STARTUP_RUNS', 5))),
  embeddedRuns: Math.round(setting('BENCH_EMBEDDED_RUNS', 2)),
  idleMs: setting('BENCH_IDLE_MS', 2000),
  settleMs: setting('BENCH_SETTLE_S', 30) * 1000,
  quietWaitMs: setting('BENCH_QUIET_WAIT', 10) * 1000,
  retryBudgetSeconds: setting('BENCH_RETRY_BUDGET', 120),
  pairedSlices: Math.round(setting('BENCH_PAIRS', 12)),
  only: process.env.BENCH_ONLY ?? ''
}
if (!['', 'throughput', 'startup'].includes(settings.only)) throw new Error('BENCH_ONLY must be throughput or startup')
const variants = selectVariants(process.env.BENCH_VARIANTS)
const redisUrl = process.env.REDIS_URL || undefined

const log = (line: string) => console.log(line)
const benchStarted = Date.now()

function gitCommit (): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: PROJECT_ROOT, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'plugins', 'routes'], { cwd: PROJECT_ROOT, encoding: 'utf8' }).trim()
    return dirty ? `${head} (service code modified)` : head
  } catch {
    return 'unknown'
  }
}

const machine = {
  node: process.version,
  cpu: cpus()[0]?.model ?? 'unknown',
  cores: cpus().length,
  memoryGb: Math.round(totalmem() / 2 ** 30),
  loadAverageAtStart: loadavg()[0],
  commit: gitCommit()
}
log(
  `SmallTalk Server benchmark: node ${machine.node}, ${machine.cores} x ${machine.cpu}, load average ${machine.loadAverageAtStart.toFixed(2)}, commit ${machine.commit}`
)
log(
  `autocannon in this process, each server under test in a process of its own (on ${machine.cores} cores); ` +
    `${settings.connections} connections, ${settings.durationSeconds} s x ${settings.runs} runs per variant, ${settings.warmupSeconds} s warm-up`
)

const database = await prepareDatabase(process.env.DATABASE_URL || undefined)
const forgetDatabase = onInterrupt(() => database.dispose())
log(`database: ${database.description}; cache: ${redisUrl ? 'Redis at REDIS_URL' : 'in-process (no REDIS_URL)'}`)

// The production configuration: what server.ts reads from a deployment's environment.
const serviceEnv: Record<string, string> = {
  NODE_ENV: 'production',
  LOG_LEVEL: 'info',
  DATABASE_URL: database.url,
  ...(redisUrl ? { REDIS_URL: redisUrl } : {})
}

let summaries: VariantSummary[] = []
let ratios: number[] = []
let retriedRuns = 0
let failedVariants: { variant: string; error: string }[] = []
let paired: PairedRatio | null = null
const startups: StartupSummary[] = []
let buildMs: number | undefined
try {
  if (settings.only !== 'startup') {
    log('\n== Throughput: GET / ==')
    const measured = await measureThroughput({ ...settings, variants, env: serviceEnv, progress: (line) => log('  ' + line) })
    summaries = summarise(measured.variants)
    ratios = roundRatios(measured.variants)
    retriedRuns = measured.retriedRuns
    failedVariants = measured.failed
    paired = measured.paired
  }
  if (settings.only !== 'throughput') {
    log(`\n== Start-up: ${['node', ...npmStartNodeFlags(), 'dist/src/server.js'].join(' ')} (npm start) to /ready 200 ==`)
    if (process.env.BENCH_SKIP_BUILD !== '1') {
      const buildStarted = Date.now()
      execFileSync('npm', ['run', 'build', '--silent'], { cwd: PROJECT_ROOT, stdio: 'inherit' })
      buildMs = Date.now() - buildStarted
      log(`  npm run build: ${buildMs} ms (not counted)`)
    }
    const timeoutMs = 120_000
    const startupEnv = { ...serviceEnv }
    const first = await measureStartup({ env: startupEnv, idleMs: 0, timeoutMs })
    log(`  first start (migrations, cold file cache; not counted): ${Math.round(first.readyMs)} ms`)
    const external: StartupSample[] = []
    for (let i = 0; i < settings.startupRuns; i++) {
      // The last run idles on until V8 gives back the memory start-up used (steady-state RSS).
      const settleMs = i === settings.startupRuns - 1 ? settings.settleMs : 0
      const sample = await measureStartup({ env: startupEnv, idleMs: settings.idleMs, settleMs, timeoutMs })
      external.push(sample)
      log(
        `  ${database.kind === 'external' ? 'external' : 'separate embedded'} PostgreSQL, run ${i + 1}: ${Math.round(sample.readyMs)} ms, ` +
          `RSS ${sample.rssIdleMb.toFixed(1)} MB ${settings.idleMs} ms after ready` +
          (sample.rssSettledMb !== undefined ? `, ${sample.rssSettledMb.toFixed(1)} MB settled (${((sample.settledAfterMs ?? 0) / 1000).toFixed(1)} s after ready)` : '')
      )
    }
    startups.push(summariseStartup(`PostgreSQL at DATABASE_URL (${database.kind === 'external' ? 'external server' : 'the benchmark’s embedded server'}), migrated`, external))

    if (settings.embeddedRuns > 0) {
      // The embedded path: DATA_DIR already initialised by a first start, as on a developer's second `npm start`.
      const dataDir = await mkdtemp(join(tmpdir(), 'st-bench-data-'))
      const forgetDataDir = onInterrupt(() => rm(dataDir, { recursive: true, force: true }))
      try {
        await chmod(dataDir, 0o755)
        const embeddedEnv = { NODE_ENV: 'production', LOG_LEVEL: 'info', DATA_DIR: dataDir, ...(redisUrl ? { REDIS_URL: redisUrl } : {}) }
        const init = await measureStartup({ env: embeddedEnv, idleMs: 0, timeoutMs })
        log(`  embedded PostgreSQL, first start (initdb + migrations; not counted): ${Math.round(init.readyMs)} ms`)
        const embedded: StartupSample[] = []
        for (let i = 0; i < settings.embeddedRuns; i++) {
          embedded.push(await measureStartup({ env: embeddedEnv, idleMs: settings.idleMs, timeoutMs }))
          log(`  embedded PostgreSQL, run ${i + 1}: ${Math.round(embedded.at(-1)?.readyMs ?? NaN)} ms, idle RSS ${embedded.at(-1)?.rssIdleMb.toFixed(1)} MB`)
        }
        startups.push(summariseStartup('embedded PostgreSQL (no DATABASE_URL), data dir initialised', embedded))
      } finally {
        await rm(dataDir, { recursive: true, force: true })
        forgetDataDir()
      }
    }
  }
} finally {
  await database.dispose()
  forgetDatabase()
}

// ---- report ----

const bare = summaries.find((s) => s.name === 'bare')
const full = summaries.find((s) => s.name === 'full')
const costs = pluginCosts(summaries)
const verdicts: string[] = []
if (bare && full) {
  log('\n== GET / throughput (autocannon, median of runs) ==')
  log(throughputTable(summaries))
  log('\n== Cost of each plugin in the full app (full against full without it) ==')
  log(costTable(costs))
  const candidates = summaries.filter((v) => v.role === 'candidate')
  if (candidates.length > 0) {
    log('\n== Candidate changes to the service code (bench/stubs) ==')
    log(candidateTable(candidates))
  }
  for (const v of summaries) log(`  ${v.name}: ${v.description}`)
  log(
    `noise: spread (max-min)/median of full ${(full.spread * 100).toFixed(0)}%, of bare ${(bare.spread * 100).toFixed(0)}%; ` +
      `${retriedRuns} run(s) measured again because other processes were busy; other CPU during the kept runs of full ${(full.otherCpu * 100).toFixed(0)}% of a core`
  )
  for (const f of failedVariants) log(`SKIPPED ${f.variant}: ${f.error}`)
  const ratioLine =
    `full / bare = ${full.ratioToBare.toFixed(2)} (medians ${Math.round(full.requestsPerSecond.median)} / ${Math.round(bare.requestsPerSecond.median)} req/s; ` +
    `per round ${ratios.map((r) => r.toFixed(2)).join(', ')}; best runs ${(full.requestsPerSecond.max / bare.requestsPerSecond.max).toFixed(2)}); target >= ${TARGET_RATIO}`
  // With other processes busy during the runs the figure says more about them than about the api.
  const noisy = Math.max(full.otherCpu, bare.otherCpu) > NOISY_OTHER_CPU
  const label = noisy ? 'NOISY' : full.ratioToBare >= TARGET_RATIO ? 'PASS' : 'FAIL'
  verdicts.push(`${label} ${ratioLine}`)
  if (noisy) {
    verdicts.push(
      `      other processes used ${Math.round(Math.max(full.otherCpu, bare.otherCpu) * 100)}% of a core during the kept runs: run again on a quiet machine`
    )
  }
  if (paired) {
    verdicts.push(
      `      cross-check, ${paired.pairs} pairs of ${paired.sliceSeconds} s slices back to back: full / bare ${paired.ratio.toFixed(2)} ` +
        `(per pair median ${paired.median.toFixed(2)}, quartiles ${paired.lowerQuartile.toFixed(2)}..${paired.upperQuartile.toFixed(2)})`
    )
  }
  if (full.non2xx + full.errors > 0) verdicts.push(`WARN full answered ${full.non2xx} non-2xx and had ${full.errors} errors/timeouts`)
}
const primary = startups[0]
if (primary) {
  log(`\n== Start-up and idle memory (${['node', ...npmStartNodeFlags(), 'dist/src/server.js'].join(' ')}) ==`)
  log(startupTable(startups))
  verdicts.push(`${primary.readyMsMedian < TARGET_READY_MS ? 'PASS' : 'FAIL'} start-up to /ready 200: ${Math.round(primary.readyMsMedian)} ms median; target < ${TARGET_READY_MS} ms`)
  const settled = primary.samples.find((sample) => sample.rssSettledMb !== undefined)
  const idleRss = settled?.rssSettledMb ?? primary.rssIdleMbMedian
  verdicts.push(
    `${idleRss < TARGET_RSS_MB ? 'PASS' : 'FAIL'} idle RSS: ${idleRss.toFixed(1)} MB` +
      (settled ? ` settled (${((settled.settledAfterMs ?? 0) / 1000).toFixed(0)} s after ready)` : '') +
      `, ${primary.rssIdleMbMedian.toFixed(1)} MB median ${settings.idleMs} ms after ready; target < ${TARGET_RSS_MB} MB`
  )
  if (primary.exitCodes.some((code) => code !== 0)) verdicts.push(`WARN exit codes after SIGTERM: ${primary.exitCodes.join(' ')}`)
}
log('\n' + verdicts.join('\n'))

const resultsDir = join(PROJECT_ROOT, 'bench', 'results')
await mkdir(resultsDir, { recursive: true })
const resultsFile = join(resultsDir, 'latest.json')
await writeFile(
  resultsFile,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      command: 'npm run bench',
      machine,
      settings: { ...settings, variants: variants.map((v) => v.name) },
      database: database.kind,
      cache: redisUrl ? 'redis' : 'memory',
      targets: { ratio: TARGET_RATIO, readyMs: TARGET_READY_MS, idleRssMb: TARGET_RSS_MB },
      throughput: summaries.length ? { fullToBare: full?.ratioToBare, roundRatios: ratios, paired, retriedRuns, failedVariants, variants: summaries, pluginCosts: costs } : null,
      startup: startups.length ? { buildMs, runs: startups } : null,
      verdicts,
      benchSeconds: Math.round((Date.now() - benchStarted) / 1000)
    },
    null,
    2
  ) + '\n'
)
log(`\nwrote ${resultsFile} (${Math.round((Date.now() - benchStarted) / 1000)} s in all)`)
