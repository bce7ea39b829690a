import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'

export interface LoadOptions {
  port: number
  /** The server process, whose CPU time is read from /proc while the load runs. */
  pid: number
  connections: number
  durationSeconds: number
  /** The benchmark's other (idle) servers, whose CPU is reported apart from other tenants'. */
  idlePids: number[]
}

export interface LoadResult {
  /** 2xx responses per second over the measured duration. */
  requestsPerSecond: number
  latencyP50Ms: number
  latencyP99Ms: number
  requests: number
  non2xx: number
  errors: number
  timeouts: number
  /** Share of one core the server process used (1 = a full core). */
  serverCpu: number
  /** Share of one core the load generator (this process) used. */
  clientCpu: number
  /** Cores used by the benchmark's idle servers meanwhile (timers, probes: should be near 0). */
  idleServersCpu: number
  /** Cores used by everything else on the machine meanwhile (other tenants): noise. */
  otherCpu: number
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100

/** utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat). */
function processCpuSeconds (pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}

/** Busy CPU time of the whole machine, in seconds (/proc/stat: all but idle and iowait). */
export function machineBusySeconds (): number {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '').trim().split(/\s+/).slice(1, 9).map(Number)
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields
  return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
}

/** GET / on the loopback port with autocannon, run in this process (the server has its own). */
export async function runLoad (opts: LoadOptions): Promise<LoadResult> {
  const serverBefore = processCpuSeconds(opts.pid)
  const machineBefore = machineBusySeconds()
  const idleBefore = opts.idlePids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0)
  const clientBefore = process.cpuUsage()
  const started = process.hrtime.bigint()
  const result = await autocannon({
    url: `http://127.0.0.1:${opts.port}/`,
    connections: opts.connections,
    duration: opts.durationSeconds,
    pipelining: 1
  })
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9
  const client = process.cpuUsage(clientBefore)
  const serverCpu = (processCpuSeconds(opts.pid) - serverBefore) / elapsed
  const clientCpu = (client.user + client.system) / 1e6 / elapsed
  const machineCpu = (machineBusySeconds() - machineBefore) / elapsed
  const idleServersCpu = (opts.idlePids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0) - idleBefore) / elapsed
  return {
    requestsPerSecond: result['2xx'] / result.duration,
    latencyP50Ms: result.latency.p50,
    latencyP99Ms: result.latency.p99,
    requests: result.requests.total,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    serverCpu,
    clientCpu,
    idleServersCpu,
    otherCpu: Math.max(0, machineCpu - serverCpu - clientCpu - idleServersCpu)
  }
}

const QUIET_SAMPLE_MS = 500

/**
 * Waits (up to maxWaitMs) for half a second in which the rest of the machine uses less than `threshold`
 * of a core, so a measurement does not start in the middle of someone else's test run. Returns the
 * load seen last, in cores.
 */
export async function waitForQuiet (threshold: number, maxWaitMs: number, benchPids: number[]): Promise<number> {
  const deadline = Date.now() + maxWaitMs
  const benchCpu = () => benchPids.reduce((sum, pid) => sum + processCpuSeconds(pid), 0)
  for (;;) {
    const before = machineBusySeconds()
    const benchBefore = benchCpu()
    const self = process.cpuUsage()
    await new Promise((resolve) => setTimeout(resolve, QUIET_SAMPLE_MS))
    const used = process.cpuUsage(self)
    const own = (used.user + used.system) / 1e6 + benchCpu() - benchBefore
    const other = (machineBusySeconds() - before - own) / (QUIET_SAMPLE_MS / 1000)
    if (other < threshold || Date.now() >= deadline) return other
  }
}

/** VmRSS of a process in MiB. */
export function residentMemoryMb (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? NaN)
  return kb / 1024
}
