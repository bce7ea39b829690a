import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import type { Clock } from '../clock.js'
import type { RedisGate } from './redis-gate.js'

/** A stream's entry outlives its replica by at most this long (a crash, a lost connection to Redis). */
export const STREAM_LEASE_MS = 30_000
/** Each replica renews the entries of its open streams this often. */
export const STREAM_HEARTBEAT_MS = 10_000

// KEYS[1]: the tenant's sorted set of open streams (member: stream id, score: lease end).
// ARGV: now, lease end, max, stream id, key TTL (ms). Drops expired leases, then admits if room.
const ACQUIRE_SCRIPT = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1`

type ScriptedClient = Redis & {
  acquireStreamSlot(key: string, now: number, leaseEnd: number, max: number, id: string, ttlMs: number): Promise<number>
}

interface Slot {
  id: string
  tenant: string
}

export interface StreamSlotsOptions {
  gate: RedisGate
  clock: Clock
  /** LIMIT_REPLICAS: while Redis is unreachable each replica admits max / replicas. */
  replicas: number
}

/**
 * Open streams per tenant, counted across replicas in Redis: one sorted set per tenant whose members
 * are the open streams, each scored by the end of its lease. The replica that holds a stream renews
 * its lease every STREAM_HEARTBEAT_MS and removes it when the stream ends; a replica that dies stops
 * renewing, and its streams stop counting within STREAM_LEASE_MS. While Redis is unreachable, a
 * replica admits its share (max / LIMIT_REPLICAS, at least 1) of the streams it holds itself; streams
 * opened meanwhile are written to Redis at the next renewal once it is back.
 */
export class StreamSlots {
  private readonly open = new Map<string, Slot>()
  private cancelHeartbeat: (() => void) | undefined
  private closed = false

  constructor (private readonly options: StreamSlotsOptions) {
    options.gate.client?.defineCommand('acquireStreamSlot', { numberOfKeys: 1, lua: ACQUIRE_SCRIPT })
  }

  /** Takes a slot for a stream of `tenant`; returns its release (idempotent), or undefined when the tenant has `max` open. */
  async acquire (tenant: string, max: number): Promise<(() => void) | undefined> {
    const { gate, clock } = this.options
    const slot: Slot = { id: randomUUID(), tenant }
    let admitted: boolean | undefined
    if (gate.usable()) {
      try {
        const now = clock.now()
        admitted = await (gate.client as ScriptedClient).acquireStreamSlot(keyOf(tenant), now, now + STREAM_LEASE_MS, max, slot.id, STREAM_LEASE_MS) === 1
        gate.succeeded()
      } catch (err) {
        gate.failed(err)
      }
    }
    admitted ??= this.heldBy(tenant) < Math.max(1, Math.floor(max / this.options.replicas))
    if (!admitted) return undefined
    this.open.set(slot.id, slot)
    this.scheduleHeartbeat()
    let released = false
    return () => {
      if (released) return
      released = true
      this.open.delete(slot.id)
      if (gate.usable()) gate.client?.zrem(keyOf(tenant), slot.id).catch(() => undefined)
    }
  }

  /** Streams of `tenant` open on this replica. */
  heldBy (tenant: string): number {
    let count = 0
    for (const slot of this.open.values()) if (slot.tenant === tenant) count++
    return count
  }

  /** Stops renewing: the leases of streams still open expire by themselves. */
  close (): void {
    this.closed = true
    this.cancelHeartbeat?.()
  }

  private scheduleHeartbeat (): void {
    if (this.cancelHeartbeat || this.closed) return
    this.cancelHeartbeat = this.options.clock.setTimeout(() => {
      this.cancelHeartbeat = undefined
      this.renew()
      if (this.open.size > 0) this.scheduleHeartbeat()
    }, STREAM_HEARTBEAT_MS)
  }

  private renew (): void {
    const { gate, clock } = this.options
    if (!gate.usable() || this.open.size === 0) return
    const leaseEnd = clock.now() + STREAM_LEASE_MS
    const byTenant = new Map<string, Array<string | number>>()
    for (const slot of this.open.values()) {
      const members = byTenant.get(slot.tenant) ?? []
      members.push(leaseEnd, slot.id)
      byTenant.set(slot.tenant, members)
    }
    const pipeline = gate.client!.pipeline()
    for (const [tenant, members] of byTenant) {
      pipeline.zadd(keyOf(tenant), ...members)
      pipeline.pexpire(keyOf(tenant), STREAM_LEASE_MS)
    }
    pipeline.exec().then(() => gate.succeeded(), (err: unknown) => gate.failed(err))
  }
}

const keyOf = (tenant: string) => `limits:streams:${tenant}`
