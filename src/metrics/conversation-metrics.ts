import promClient, { type Registry } from 'prom-client'

/**
 * The conversation metrics (DESIGN section 5). Every label value comes from a bounded set: roles,
 * outcomes, agent ids from the manifest, cache names; never ids or user input.
 */
export class ConversationMetrics {
  readonly sessionsCreated: promClient.Counter
  readonly sessionsInvalidated: promClient.Counter
  readonly sessionsExpired: promClient.Counter
  readonly messages: promClient.Counter<'role'>
  readonly replyLatency: promClient.Histogram<'agent' | 'outcome'>
  readonly idempotentReplays: promClient.Counter
  readonly lockConflicts: promClient.Counter<'kind'>
  readonly cacheLookups: promClient.Counter<'cache' | 'result'>

  /** `activeSessions` is asked at most every 15 s, and a scrape never waits more than `timeoutMs` for it. */
  constructor (registry: Registry, activeSessions: () => Promise<number>, timeoutMs: number) {
    const registers = [registry]
    this.sessionsCreated = new promClient.Counter({ name: 'smalltalk_sessions_created_total', help: 'Sessions created', registers })
    this.sessionsInvalidated = new promClient.Counter({ name: 'smalltalk_sessions_invalidated_total', help: 'Sessions deleted by their client', registers })
    this.sessionsExpired = new promClient.Counter({ name: 'smalltalk_sessions_expired_total', help: 'Sessions expired by the cleanup job', registers })
    this.messages = new promClient.Counter({ name: 'smalltalk_messages_total', help: 'Messages stored, by role', labelNames: ['role'], registers })
    this.replyLatency = new promClient.Histogram({
      name: 'smalltalk_reply_duration_seconds',
      help: 'Time from a user message to its stored reply (or failure), by agent and outcome',
      labelNames: ['agent', 'outcome'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers
    })
    this.idempotentReplays = new promClient.Counter({ name: 'smalltalk_idempotent_replays_total', help: 'Message posts answered from an earlier request with the same Idempotency-Key', registers })
    this.lockConflicts = new promClient.Counter({
      name: 'smalltalk_conflicts_total',
      help: 'Requests refused by concurrency control: stale If-Match (version) or a reply already running (busy)',
      labelNames: ['kind'],
      registers
    })
    this.cacheLookups = new promClient.Counter({
      name: 'smalltalk_cache_lookups_total',
      help: 'Cache reads by cache (session, history, history_page) and result (hit, miss)',
      labelNames: ['cache', 'result'],
      registers
    })
    // Zero-valued series exist from the start, so dashboards and alerts see them before traffic.
    for (const role of ['user', 'assistant']) this.messages.inc({ role }, 0)
    for (const kind of ['version', 'busy']) this.lockConflicts.inc({ kind }, 0)
    for (const cache of ['session', 'history']) for (const result of ['hit', 'miss']) this.cacheLookups.inc({ cache, result }, 0)

    let cached = { value: 0, at: 0 }
    new promClient.Gauge({
      name: 'smalltalk_active_sessions',
      help: 'Sessions active and not expired (counted in PostgreSQL, at most every 15 s)',
      registers,
      async collect () {
        if (Date.now() - cached.at > 15_000) {
          let timer: NodeJS.Timeout | undefined
          const deadline = new Promise<number>((resolve) => (timer = setTimeout(() => resolve(cached.value), timeoutMs)))
          const value = await Promise.race([activeSessions().catch(() => cached.value), deadline])
          clearTimeout(timer)
          cached = { value, at: Date.now() }
        }
        this.set(cached.value)
      }
    })
  }
}
