import type { StartupSample } from './startup.js'
import type { VariantRuns } from './throughput.js'

export function median (values: number[]): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

export interface VariantSummary {
  name: string
  description: string
  role: string
  without?: string
  requestsPerSecond: { median: number; min: number; max: number; runs: number[] }
  /** (max - min) / median over the runs. */
  spread: number
  latencyP99Ms: number
  latencyP50Ms: number
  /** Median requests per second over bare's median. */
  ratioToBare: number
  /** Median requests per second over full's median. */
  ratioToFull: number
  /** Server CPU time per request, in microseconds (median of runs): additive, unlike req/s. */
  cpuMicrosPerRequest: number
  serverCpu: number
  clientCpu: number
  /** Cores used by the rest of the machine during the runs (median): high means a noisy figure. */
  otherCpu: number
  non2xx: number
  errors: number
  logLinesPerRequest: number | null
  logBytesPerRequest: number | null
}

export interface PluginCost {
  plugin: string
  variant: string
  /** Share of throughput the plugin costs: 1 - full / (full without it). */
  throughputShare: number
  /** Server CPU time the plugin adds per request, in microseconds. */
  cpuMicrosPerRequest: number
}

export function summarise (all: VariantRuns[]): VariantSummary[] {
  const medianOf = (name: string) => median(all.find((v) => v.variant.name === name)?.runs.map((r) => r.requestsPerSecond) ?? [])
  const bare = medianOf('bare')
  const full = medianOf('full')
  return all.map(({ variant, runs, logLinesPerRequest, logBytesPerRequest }) => {
    const rps = runs.map((r) => r.requestsPerSecond)
    const m = median(rps)
    return {
      name: variant.name,
      description: variant.description,
      role: variant.role,
      ...(variant.without ? { without: variant.without } : {}),
      requestsPerSecond: { median: m, min: Math.min(...rps), max: Math.max(...rps), runs: rps },
      spread: (Math.max(...rps) - Math.min(...rps)) / m,
      latencyP99Ms: median(runs.map((r) => r.latencyP99Ms)),
      latencyP50Ms: median(runs.map((r) => r.latencyP50Ms)),
      ratioToBare: m / bare,
      ratioToFull: m / full,
      cpuMicrosPerRequest: median(runs.map((r) => (r.serverCpu * 1e6) / r.requestsPerSecond)),
      serverCpu: median(runs.map((r) => r.serverCpu)),
      clientCpu: median(runs.map((r) => r.clientCpu)),
      otherCpu: median(runs.map((r) => r.otherCpu)),
      non2xx: runs.reduce((sum, r) => sum + r.non2xx, 0),
      errors: runs.reduce((sum, r) => sum + r.errors + r.timeouts, 0),
      logLinesPerRequest,
      logBytesPerRequest
    }
  })
}

export function pluginCosts (summaries: VariantSummary[]): PluginCost[] {
  const full = summaries.find((s) => s.name === 'full')
  if (!full) return []
  return summaries
    .filter((s) => s.role === 'cost')
    .map((s) => ({
      plugin: s.without ?? s.name,
      variant: s.name,
      throughputShare: 1 - full.requestsPerSecond.median / s.requestsPerSecond.median,
      cpuMicrosPerRequest: full.cpuMicrosPerRequest - s.cpuMicrosPerRequest
    }))
}

/** full / bare per round: how much the ratio itself moves between rounds. */
export function roundRatios (all: VariantRuns[]): number[] {
  const bare = all.find((v) => v.variant.name === 'bare')?.runs ?? []
  const full = all.find((v) => v.variant.name === 'full')?.runs ?? []
  return full.map((r, i) => r.requestsPerSecond / (bare[i]?.requestsPerSecond ?? NaN))
}

export interface StartupSummary {
  label: string
  samples: StartupSample[]
  readyMsMedian: number
  opsUpMsMedian: number
  rssIdleMbMedian: number
  rssAtReadyMbMedian: number
  exitCodes: (number | null)[]
}

export function summariseStartup (label: string, samples: StartupSample[]): StartupSummary {
  return {
    label,
    samples,
    readyMsMedian: median(samples.map((s) => s.readyMs)),
    opsUpMsMedian: median(samples.map((s) => s.opsUpMs)),
    rssIdleMbMedian: median(samples.map((s) => s.rssIdleMb)),
    rssAtReadyMbMedian: median(samples.map((s) => s.rssAtReadyMb)),
    exitCodes: samples.map((s) => s.exitCode)
  }
}

// ---- text output ----

const int = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '-')
const fixed = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-')
const percent = (n: number) => (Number.isFinite(n) ? `${(n * 100).toFixed(1)}%` : '-')

export function table (headers: string[], rows: string[][], alignLeft = new Set([0])): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) =>
    cells.map((c, i) => (alignLeft.has(i) ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ')
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n')
}

export function throughputTable (summaries: VariantSummary[]): string {
  return table(
    ['variant', 'req/s (median)', 'min..max (best)', 'spread', 'p50 ms', 'p99 ms', 'x bare', 'x full', 'CPU us/req', 'srv CPU', 'client CPU', 'other CPU', 'log lines/req', 'non-2xx'],
    summaries.map((s) => [
      s.name,
      int(s.requestsPerSecond.median),
      `${int(s.requestsPerSecond.min)}..${int(s.requestsPerSecond.max)}`,
      percent(s.spread),
      fixed(s.latencyP50Ms, 0),
      fixed(s.latencyP99Ms, 0),
      fixed(s.ratioToBare, 2),
      fixed(s.ratioToFull, 2),
      fixed(s.cpuMicrosPerRequest, 1),
      percent(s.serverCpu),
      percent(s.clientCpu),
      percent(s.otherCpu),
      s.logLinesPerRequest === null ? '-' : fixed(s.logLinesPerRequest, 2),
      String(s.non2xx + s.errors)
    ])
  )
}

export function costTable (costs: PluginCost[]): string {
  return table(
    ['plugin (full minus variant)', 'variant', 'throughput cost', 'CPU us/req added'],
    costs.map((c) => [c.plugin, c.variant, percent(c.throughputShare), fixed(c.cpuMicrosPerRequest, 1)])
  )
}

export function candidateTable (candidates: VariantSummary[]): string {
  return table(
    ['candidate', 'req/s (median)', 'x bare', 'x full', 'CPU us/req'],
    candidates.map((c) => [c.name, int(c.requestsPerSecond.median), fixed(c.ratioToBare, 2), fixed(c.ratioToFull, 2), fixed(c.cpuMicrosPerRequest, 1)])
  )
}

export function startupTable (summaries: StartupSummary[]): string {
  return table(
    ['start-up', 'runs', '/ready 200 ms (median)', 'all runs ms', 'ops port up ms', 'RSS at ready MB', 'RSS idle MB', 'RSS settled MB', 'exit codes'],
    summaries.map((s) => [
      s.label,
      String(s.samples.length),
      int(s.readyMsMedian),
      s.samples.map((x) => int(x.readyMs)).join(' '),
      int(s.opsUpMsMedian),
      fixed(s.rssAtReadyMbMedian),
      fixed(s.rssIdleMbMedian),
      fixed(s.samples.find((x) => x.rssSettledMb !== undefined)?.rssSettledMb ?? NaN),
      s.exitCodes.join(' ')
    ])
  )
}
