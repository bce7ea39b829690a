import type pg from 'pg'
import type { Cache, SeqListSnapshot } from '../cache/cache.js'
import { withTransaction, type Queryable } from '../db/transaction.js'
import { DomainError, assertStorable } from '../domain-errors.js'
import { recordEvents } from '../events/event-log.js'
import { resolveMode, type GroupSettings, type ModeRequest, type ResolvedMode, type SessionMode } from '../groups/group-settings.js'
import type { ConversationMetrics } from '../metrics/conversation-metrics.js'

/** A session as the API shows it. */
export interface Session {
  id: string
  status: 'active' | 'invalidated' | 'expired'
  agents: string[]
  /** single: one reply per message; group: each message starts a round of turns (DESIGN section 9). */
  mode: SessionMode
  /** The group's settings in group mode, else null. */
  group: GroupSettings | null
  metadata: Record<string, unknown>
  createdAt: string
  updatedAt: string
  expiresAt: string | null
  version: number
  messageCount: number
}

/** The row as stored (and cached): the API shape plus what only the service needs. */
export interface SessionRecord extends Session {
  tenant: string
  lastSeq: number
}

export interface SessionRow {
  id: string
  tenant: string
  status: Session['status']
  agents: string[]
  mode: SessionMode
  group_settings: GroupSettings | null
  metadata: Record<string, unknown>
  created_at: Date
  updated_at: Date
  expires_at: Date | null
  version: number
  message_count: number
  last_seq: string | number
}

export const SESSION_COLUMNS = 'id, tenant, status, agents, mode, group_settings, metadata, created_at, updated_at, expires_at, version, message_count, last_seq'

export function toRecord (row: SessionRow): SessionRecord {
  return {
    id: row.id,
    tenant: row.tenant,
    status: row.status,
    agents: row.agents,
    mode: row.mode,
    group: row.group_settings,
    metadata: row.metadata,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
    expiresAt: row.expires_at ? row.expires_at.toISOString() : null,
    version: row.version,
    messageCount: row.message_count,
    lastSeq: Number(row.last_seq)
  }
}

export function toSession (record: SessionRecord): Session {
  const { tenant: _tenant, lastSeq: _lastSeq, ...session } = record
  return session
}

export interface SessionStoreOptions {
  pool: pg.Pool
  cache: Cache
  metrics: ConversationMetrics
  defaultTtlSeconds: number
  /** Validates agent ids against the manifest; returns the unknown ones. */
  unknownAgents: (ids: string[]) => string[]
  defaultAgents: () => string[]
  /**
   * Validates and completes a request's mode, group and preset (src/groups/group-settings.ts).
   * Default: no presets, at most 10 turns.
   */
  resolveMode?: (request: ModeRequest, current?: SessionRecord) => ResolvedMode
  /**
   * The one clock of a session's lifetime: its expiry is set and judged by it, in SQL too (passed
   * as a parameter, never PostgreSQL's now()), so a skew between this host and the database cannot
   * make a session look active or expired wrongly.
   */
  now?: () => number
}

export interface SessionChanges extends ModeRequest {
  metadata?: Record<string, unknown>
  agents?: string[]
  ttlSeconds?: number
}

export interface NewSession extends ModeRequest {
  agents?: string[]
  metadata?: Record<string, unknown>
  ttlSeconds?: number
}

const CACHE_TTL_SECONDS = 300
const sessionKey = (id: string) => `session:${id}`

/**
 * Sessions in PostgreSQL (the truth) with their records cached in Redis (write-through, TTL'd,
 * dropped on every change). Every state change writes its event in the same transaction.
 */
export class SessionStore {
  readonly now: () => number
  private readonly resolveMode: (request: ModeRequest, current?: SessionRecord) => ResolvedMode

  constructor (private readonly options: SessionStoreOptions) {
    this.now = options.now ?? Date.now
    this.resolveMode = options.resolveMode ?? ((request, current) => resolveMode(request, {
      maxTurns: 10,
      presets: new Map(),
      isAgent: (id) => options.unknownAgents([id]).length === 0,
      defaultAgents: options.defaultAgents
    }, current))
  }

  async create (tenant: string, input: NewSession): Promise<Session> {
    const { mode, group, agents: chosen } = this.resolveMode(input)
    const agents = chosen ?? this.options.defaultAgents()
    this.assertAgents(agents)
    assertStorable('metadata', input.metadata)
    const ttl = input.ttlSeconds ?? this.options.defaultTtlSeconds
    const record = await withTransaction(this.options.pool, async (client) => {
      const { rows } = await client.query<SessionRow>(
        `INSERT INTO sessions (tenant, agents, metadata, expires_at, mode, group_settings)
         VALUES ($1, $2, $3, $4::timestamptz + make_interval(secs => $5), $6, $7)
         RETURNING ${SESSION_COLUMNS}`,
        [tenant, agents, input.metadata ?? {}, new Date(this.now()), ttl, mode, group]
      )
      const created = toRecord(rows[0] as SessionRow)
      await recordEvents(client, [{ type: 'session.created', tenant, sessionId: created.id, data: { agents, ttlSeconds: ttl, mode, ...(group ? { group } : {}) } }])
      return created
    })
    this.options.metrics.sessionsCreated.inc()
    await this.cacheRecord(record)
    return toSession(record)
  }

  /** The live record of an active session of this tenant: 404 for others' and unknown, 410 if ended. */
  async getActive (tenant: string, id: string): Promise<SessionRecord> {
    const record = await this.find(id)
    if (!record || record.tenant !== tenant) throw notFound()
    assertActive(record, this.now())
    return record
  }

  /**
   * getActive, with the cached seq list `listKey` (the session's history) read in the same round
   * trip to the cache. The list is for the caller to check against the record's lastSeq.
   */
  async getActiveWithList (tenant: string, id: string, listKey: string): Promise<{ record: SessionRecord; list: SeqListSnapshot | undefined }> {
    const { value, list } = await this.options.cache.getRankedWithSeqList(sessionKey(id), listKey)
    const record = await this.resolve(id, value)
    if (!record || record.tenant !== tenant) throw notFound()
    assertActive(record, this.now())
    return { record, list }
  }

  /** Reads through the cache; PostgreSQL on a miss (or with Redis down). */
  async find (id: string): Promise<SessionRecord | undefined> {
    return this.resolve(id, await this.options.cache.getRanked(sessionKey(id)))
  }

  /** The record from its cached value, else from PostgreSQL (and cached again). */
  private async resolve (id: string, cached: string | undefined): Promise<SessionRecord | undefined> {
    this.options.metrics.cacheLookups.inc({ cache: 'session', result: cached ? 'hit' : 'miss' })
    if (cached) return withMode(JSON.parse(cached) as SessionRecord)
    const record = await this.load(this.options.pool, id)
    if (record) await this.cacheRecord(record)
    return record
  }

  async load (db: Queryable, id: string): Promise<SessionRecord | undefined> {
    const { rows } = await db.query<SessionRow>(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE id = $1`, [id])
    return rows[0] ? toRecord(rows[0]) : undefined
  }

  /** Newest first, keyset-paginated: the cursor is opaque to clients. */
  async list (tenant: string, limit: number, cursor?: string): Promise<{ sessions: Session[]; nextCursor: string | null }> {
    const position = cursor ? decodeCursor(cursor) : undefined
    const { rows } = await this.options.pool.query<SessionRow & { created_us: string }>(
      `SELECT ${SESSION_COLUMNS}, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us
         FROM sessions
        WHERE tenant = $1
          AND ($2::bigint IS NULL OR (created_at, id) < (timestamptz 'epoch' + $2::bigint * interval '1 microsecond', $3::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $4`,
      [tenant, position?.createdUs ?? null, position?.id ?? null, limit + 1]
    )
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    return {
      sessions: page.map((row) => toSession(withLiveStatus(toRecord(row), this.now()))),
      nextCursor: rows.length > limit && last ? encodeCursor(last.created_us, last.id) : null
    }
  }

  /** Optimistic locking: applies only if `expectedVersion` is still the stored version. */
  async update (tenant: string, id: string, expectedVersion: number, changes: SessionChanges): Promise<Session> {
    if (changes.agents) this.assertAgents(changes.agents)
    assertStorable('metadata', changes.metadata)
    const now = this.now()
    const changesMode = changes.mode !== undefined || changes.group !== undefined || changes.preset !== undefined
    const record = await withTransaction(this.options.pool, async (client) => {
      // A change of agents or mode is judged against the row it changes (a group keeps 2 to 10 agents).
      let resolved: ResolvedMode | undefined
      if (changesMode || changes.agents) {
        const current = await this.load(client, id)
        if (current && current.tenant === tenant && current.version === expectedVersion && (changesMode || current.mode === 'group')) {
          resolved = this.resolveMode(changes, current)
          if (resolved.agents) this.assertAgents(resolved.agents)
        }
      }
      const { rows } = await client.query<SessionRow>(
        `UPDATE sessions
            SET metadata = COALESCE($4::jsonb, metadata),
                agents = COALESCE($5::text[], agents),
                expires_at = CASE WHEN $6::int IS NULL THEN expires_at ELSE $7::timestamptz + make_interval(secs => $6::int) END,
                mode = COALESCE($8, mode),
                group_settings = CASE WHEN $8::text IS NULL THEN group_settings ELSE $9::jsonb END,
                version = version + 1
          WHERE id = $1 AND tenant = $2 AND version = $3
            AND status = 'active' AND (expires_at IS NULL OR expires_at > $7)
          RETURNING ${SESSION_COLUMNS}`,
        [id, tenant, expectedVersion, changes.metadata ?? null, resolved?.agents ?? changes.agents ?? null, changes.ttlSeconds ?? null, new Date(now), resolved?.mode ?? null, resolved?.group ?? null]
      )
      if (rows[0]) {
        const updated = toRecord(rows[0])
        await recordEvents(client, [{ type: 'session.updated', tenant, sessionId: id, data: { version: updated.version, fields: Object.keys(changes) } }])
        return updated
      }
      // Nothing matched: say why, from the row itself.
      const current = await this.load(client, id)
      if (!current || current.tenant !== tenant) throw notFound()
      assertActive(current, now)
      this.options.metrics.lockConflicts.inc({ kind: 'version' })
      throw new DomainError('precondition_failed', `Session version is ${current.version}, not ${expectedVersion}: reload it and retry`, {
        code: 'VERSION_MISMATCH',
        details: { currentVersion: current.version }
      })
    })
    await this.cacheRecord(record)
    return toSession(record)
  }

  /**
   * DELETE: the session answers 410 from now on; its rows go with the cleanup job's purge. The
   * version is raised so that the cached tombstone outranks any older record still in flight.
   */
  async invalidate (tenant: string, id: string): Promise<void> {
    const now = this.now()
    const record = await withTransaction(this.options.pool, async (client) => {
      const { rows } = await client.query<SessionRow>(
        `UPDATE sessions SET status = 'invalidated', invalidated_at = $3, reply_lease_until = NULL, version = version + 1
          WHERE id = $1 AND tenant = $2 AND status = 'active' AND (expires_at IS NULL OR expires_at > $3)
          RETURNING ${SESSION_COLUMNS}`,
        [id, tenant, new Date(now)]
      )
      const row = rows[0]
      if (!row) {
        const current = await this.load(client, id)
        if (!current || current.tenant !== tenant) throw notFound()
        // Not active at `now`, the very time the statement judged by.
        throw ended(current)
      }
      await recordEvents(client, [{ type: 'session.invalidated', tenant, sessionId: id }])
      return toRecord(row)
    })
    this.options.metrics.sessionsInvalidated.inc()
    await this.cacheRecord(record)
  }

  /**
   * Marks up to `limit` active sessions whose expiry has passed as expired, with their
   * session.expired events; returns their ids.
   */
  async expireDue (limit: number): Promise<string[]> {
    return withTransaction(this.options.pool, async (client) => {
      const { rows } = await client.query<{ id: string; tenant: string }>(
        `UPDATE sessions SET status = 'expired'
          WHERE id IN (SELECT id FROM sessions WHERE status = 'active' AND expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
          RETURNING id, tenant`,
        [new Date(this.now()), limit]
      )
      await recordEvents(client, rows.map((s) => ({ type: 'session.expired' as const, tenant: s.tenant, sessionId: s.id })))
      return rows.map((s) => s.id)
    })
  }

  /** Deletes up to `limit` sessions that ended more than `graceSeconds` ago, their messages with them; returns their ids. */
  async purgeEnded (graceSeconds: number, limit: number): Promise<string[]> {
    const { rows } = await this.options.pool.query<{ id: string }>(
      `DELETE FROM sessions
        WHERE id IN (SELECT id FROM sessions
                      WHERE status <> 'active' AND COALESCE(invalidated_at, expires_at, updated_at) < $1::timestamptz - make_interval(secs => $2)
                      LIMIT $3 FOR UPDATE SKIP LOCKED)
        RETURNING id`,
      [new Date(this.now()), graceSeconds, limit]
    )
    return rows.map((s) => s.id)
  }

  async forget (...ids: string[]): Promise<void> {
    await this.options.cache.delete(...ids.map(sessionKey))
  }

  async cacheRecord (record: SessionRecord): Promise<void> {
    const untilExpiry = record.expiresAt ? Math.floor((Date.parse(record.expiresAt) - this.now()) / 1000) : CACHE_TTL_SECONDS
    if (untilExpiry <= 0) return
    // Ranked by (lastSeq, version): every change of the row raises one of them, so an older record
    // written late (another replica, a slow Redis round trip) never replaces a newer one.
    await this.options.cache.setRanked(sessionKey(record.id), JSON.stringify(record), Math.min(CACHE_TTL_SECONDS, untilExpiry), [record.lastSeq, record.version])
  }

  async countActive (): Promise<number> {
    const { rows } = await this.options.pool.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM sessions WHERE status = 'active' AND (expires_at IS NULL OR expires_at > $1)",
      [new Date(this.now())]
    )
    return rows[0]?.n ?? 0
  }

  private assertAgents (agents: string[]): void {
    if (agents.length === 0) throw new DomainError('invalid', 'A session needs at least one agent', { code: 'NO_AGENTS' })
    const unknown = this.options.unknownAgents(agents)
    if (unknown.length > 0) {
      throw new DomainError('invalid', `Unknown agent${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`, { code: 'UNKNOWN_AGENT', details: { unknown } })
    }
  }
}

/** A record cached by a release before group mode (no `mode`) is a single-mode session. */
function withMode (record: SessionRecord): SessionRecord {
  if (record.mode === undefined) return { ...record, mode: 'single', group: null }
  return record
}

export function notFound (): DomainError {
  return new DomainError('not_found', 'Session not found', { code: 'SESSION_NOT_FOUND' })
}

/** An active session whose expiry has passed is expired, whether or not the cleanup job ran yet. */
export function withLiveStatus (record: SessionRecord, now: number): SessionRecord {
  if (record.status === 'active' && record.expiresAt && Date.parse(record.expiresAt) <= now) return { ...record, status: 'expired' }
  return record
}

export function assertActive (record: SessionRecord, now: number): void {
  if (withLiveStatus(record, now).status !== 'active') throw ended(record)
}

/** The 410 of a session that is not active: invalidated, else expired. */
function ended (record: SessionRecord): DomainError {
  if (record.status === 'invalidated') return new DomainError('gone', 'Session invalidated', { code: 'SESSION_INVALIDATED' })
  return new DomainError('gone', 'Session expired', { code: 'SESSION_EXPIRED' })
}

function encodeCursor (createdUs: string, id: string): string {
  return Buffer.from(`${createdUs}.${id}`).toString('base64url')
}

function decodeCursor (cursor: string): { createdUs: string; id: string } {
  const [createdUs, id] = Buffer.from(cursor, 'base64url').toString().split('.')
  if (!createdUs || !/^\d{1,20}$/.test(createdUs) || !id || !/^[0-9a-f-]{36}$/.test(id)) {
    throw new DomainError('invalid', 'Invalid cursor: pass the nextCursor of the previous page', { code: 'INVALID_CURSOR' })
  }
  return { createdUs, id }
}
