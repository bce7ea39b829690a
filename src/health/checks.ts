import { getHeapStatistics } from 'node:v8'
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import type pg from 'pg'
import type { AgentRegistry } from '../agents/registry.js'
import type { Cache } from '../cache/cache.js'
import type { ServerStatus, ToolCatalog } from '../tools/tools.js'

export type ServiceStatus = 'up' | 'degraded' | 'down' | 'disabled'

export interface CheckResult {
  status: ServiceStatus
  message?: string
  latencyMs?: number
}

function withTimeout<T> (promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

const round = (ms: number) => Math.round(ms * 100) / 100

/** A real round trip through the pool (so an exhausted pool shows up too), bounded in time. */
export async function checkPostgres (pool: pg.Pool, timeoutMs: number): Promise<CheckResult> {
  const started = performance.now()
  try {
    await withTimeout(pool.query('SELECT 1'), timeoutMs, 'PostgreSQL')
    return { status: 'up', latencyMs: round(performance.now() - started) }
  } catch (err) {
    return { status: 'down', message: (err as Error).message, latencyMs: round(performance.now() - started) }
  }
}

export async function checkCache (cache: Cache, timeoutMs: number): Promise<CheckResult> {
  if (cache.backend === 'memory') return { status: 'disabled', message: 'no REDIS_URL: in-process cache' }
  try {
    const latencyMs = await cache.ping(timeoutMs)
    return { status: 'up', latencyMs: round(latencyMs) }
  } catch (err) {
    return { status: 'degraded', message: `Redis unreachable (${(err as Error).message}); serving from PostgreSQL` }
  }
}

export function checkMemory (warnRatio: number): CheckResult {
  const { used_heap_size: used, heap_size_limit: limit } = getHeapStatistics()
  const ratio = used / limit
  const message = `heap ${(used / 1048576).toFixed(1)} MiB of ${(limit / 1048576).toFixed(0)} MiB (${(ratio * 100).toFixed(1)}%), rss ${(process.memoryUsage.rss() / 1048576).toFixed(1)} MiB`
  return { status: ratio >= warnRatio ? 'degraded' : 'up', message }
}

/** Event-loop delay over a sliding window, sampled by the runtime (no timers of our own). */
export class EventLoopMonitor {
  private readonly histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: 20 })
  private readonly resetTimer: NodeJS.Timeout

  constructor (windowMs = 10_000) {
    this.histogram.enable()
    this.resetTimer = setInterval(() => this.histogram.reset(), windowMs)
    this.resetTimer.unref()
  }

  /** Forgets what was sampled so far: start-up (loading and compiling) is not service latency. */
  reset (): void {
    this.histogram.reset()
  }

  check (warnMs: number): CheckResult {
    const p99 = this.histogram.count > 0 ? this.histogram.percentile(99) / 1e6 : 0
    return {
      status: p99 >= warnMs ? 'degraded' : 'up',
      latencyMs: round(p99),
      message: `event-loop delay p99 ${p99.toFixed(1)} ms`
    }
  }

  stop (): void {
    clearInterval(this.resetTimer)
    this.histogram.disable()
  }
}

/** Up when every agent is healthy; degraded when some are not; down when none can answer. */
export function checkAgents (agents: AgentRegistry): CheckResult {
  const list = agents.list()
  const count = (status: string) => list.filter((agent) => agent.status === status).length
  const [healthy, degraded, down] = [count('healthy'), count('degraded'), count('down')]
  const onEcho = list.filter((agent) => agent.effectiveProvider === 'echo').length
  const message = `${list.length} agents: ${healthy} healthy, ${degraded} degraded, ${down} down${onEcho ? ` (${onEcho} on the offline echo provider)` : ''}`
  const status = down === list.length ? 'down' : healthy === list.length ? 'up' : 'degraded'
  return { status, message }
}

export interface ToolsCheckResult extends CheckResult {
  /** Each MCP server of the manifest and its status. */
  servers: Record<string, ServerStatus>
}

/**
 * The MCP servers: up when none is down, down when all are, degraded in between. A server still
 * connecting counts as up (the service has just started, or is reconnecting right now): it is named in
 * the message. Tools are optional, so this never takes the service out of rotation.
 */
export function checkTools (tools: ToolCatalog | undefined): ToolsCheckResult {
  const snapshots = tools?.servers() ?? []
  const servers = Object.fromEntries(snapshots.map((server) => [server.id, server.status]))
  if (snapshots.length === 0) return { status: 'disabled', message: 'no MCP servers in the agents manifest', servers }
  const connected = snapshots.filter((server) => server.status === 'connected').length
  const down = snapshots.filter((server) => server.status === 'down').length
  const others = snapshots.filter((server) => server.status !== 'connected').map((server) => `${server.id} ${server.status}${server.error ? ` (${server.error})` : ''}`)
  const message = `${connected} of ${snapshots.length} MCP servers connected${others.length > 0 ? `: ${others.join(', ')}` : ''}`
  const status = down === 0 ? 'up' : down === snapshots.length ? 'down' : 'degraded'
  return { status, message, servers }
}
