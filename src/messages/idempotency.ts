import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import type { Queryable } from '../db/transaction.js'
import { DomainError, type Failure } from '../domain-errors.js'

/**
 * What a completed post came to, as the domain says it (the route maps it to HTTP): replayed to
 * every retry with the same key.
 */
export type StoredOutcome = { ok: true; result: unknown } | { ok: false; failure: Failure }

export type Claim = { kind: 'claimed' } | { kind: 'replay'; outcome: StoredOutcome }

/** A digest of the request, the same whatever the order of the keys of its objects. */
export function requestHash (parts: unknown): string {
  return createHash('sha256').update(canonicalJson(parts)).digest('hex')
}

/** JSON with every object's keys sorted: `{"b":1,"a":2}` and `{"a":2,"b":1}` are one text. */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item ?? null)).join(',')}]`
  if (value && typeof value === 'object') {
    const entries = Object.entries(value).filter(([, inner]) => inner !== undefined)
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([key, inner]) => `${JSON.stringify(key)}:${canonicalJson(inner)}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/**
 * Idempotency keys for message posts, per tenant, kept 24 hours. The first request with a key claims
 * it (a row in 'pending'); the outcome is written in the same transaction as the reply, so a retry
 * either finds the outcome or the claim. A retry that races the first request waits for its outcome
 * instead of storing anything twice.
 */
export class IdempotencyKeys {
  constructor (
    private readonly pool: pg.Pool,
    /** A pending claim older than this was abandoned (its process died) and may be taken over. */
    private readonly abandonAfterMs: number
  ) {}

  async claim (tenant: string, key: string, sessionId: string, hash: string): Promise<Claim> {
    const deadline = Date.now() + this.abandonAfterMs + 5000
    let wait = 25
    for (;;) {
      const { rows } = await this.pool.query<{ inserted: boolean; request_hash: string; status: string; response: StoredOutcome | null; message_id: string | null; age_ms: number; lease_free: boolean }>(
        `WITH attempt AS (
           INSERT INTO idempotency_keys (tenant, key, session_id, request_hash)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, session_id = EXCLUDED.session_id, message_id = NULL,
                 status = 'pending', status_code = NULL, response = NULL,
                 created_at = now(), expires_at = now() + interval '24 hours'
             WHERE idempotency_keys.expires_at < now()
                OR (idempotency_keys.status = 'pending' AND idempotency_keys.message_id IS NULL
                    AND idempotency_keys.created_at < now() - make_interval(secs => $5 / 1000.0))
           RETURNING true AS inserted, request_hash, status, response, message_id, 0 AS age_ms, false AS lease_free
         )
         SELECT * FROM attempt
         UNION ALL
         SELECT false, k.request_hash, k.status, k.response, k.message_id,
                (extract(epoch FROM now() - k.created_at) * 1000)::int,
                COALESCE(s.reply_lease_until IS NULL OR s.reply_lease_until < now(), true)
           FROM idempotency_keys k LEFT JOIN sessions s ON s.id = k.session_id
          WHERE k.tenant = $1 AND k.key = $2 AND NOT EXISTS (SELECT 1 FROM attempt)`,
        [tenant, key, sessionId, hash, this.abandonAfterMs]
      )
      const row = rows[0]
      if (row?.inserted) return { kind: 'claimed' }
      if (row && row.request_hash !== hash) {
        throw new DomainError('conflict', 'This Idempotency-Key was already used with a different request', { code: 'IDEMPOTENCY_KEY_REUSED' })
      }
      if (row?.status === 'completed' && row.response) return { kind: 'replay', outcome: row.response }
      if (row?.message_id && (row.lease_free || row.age_ms > this.abandonAfterMs)) {
        // The first request stored its message, then ended without recording its reply (its process
        // died, or the database failed under it): no reply is running, and the message is never
        // stored again.
        return { kind: 'replay', outcome: await this.abandon(tenant, key, row.message_id) }
      }
      // Pending (the first request is still producing its reply), or released just now: wait, retry.
      if (Date.now() > deadline) {
        throw new DomainError('busy', 'A request with this Idempotency-Key is still in progress', { code: 'IDEMPOTENCY_KEY_IN_PROGRESS', retryAfterSeconds: 2 })
      }
      await sleep(wait)
      wait = Math.min(wait * 2, 500)
    }
  }

  /** Links the claim to the user message it stored: call inside the transaction that stores it. */
  async attachMessage (db: Queryable, tenant: string, key: string, messageId: string): Promise<void> {
    await db.query('UPDATE idempotency_keys SET message_id = $3 WHERE tenant = $1 AND key = $2', [tenant, key, messageId])
  }

  private async abandon (tenant: string, key: string, messageId: string): Promise<StoredOutcome> {
    const lost: StoredOutcome = {
      ok: false,
      failure: {
        kind: 'unavailable',
        message: 'The first request with this Idempotency-Key stored its message but its reply was lost; post a new message to get a reply',
        code: 'REPLY_LOST',
        details: { messageId }
      }
    }
    const { rows } = await this.pool.query<{ response: StoredOutcome }>(
      `UPDATE idempotency_keys SET status = 'completed', response = $3
        WHERE tenant = $1 AND key = $2 AND status = 'pending'
        RETURNING response`,
      [tenant, key, JSON.stringify(lost)]
    )
    if (rows[0]) return rows[0].response
    // Completed meanwhile by someone else: that outcome stands.
    const { rows: current } = await this.pool.query<{ response: StoredOutcome | null }>(
      'SELECT response FROM idempotency_keys WHERE tenant = $1 AND key = $2',
      [tenant, key]
    )
    return current[0]?.response ?? lost
  }

  /** Records the outcome: call inside the transaction that commits the reply. */
  async complete (db: Queryable, tenant: string, key: string, outcome: StoredOutcome): Promise<void> {
    await db.query(
      'UPDATE idempotency_keys SET status = \'completed\', response = $3 WHERE tenant = $1 AND key = $2',
      [tenant, key, JSON.stringify(outcome)]
    )
  }

  /** Nothing was stored under the claim (the request failed early): a retry may try again. */
  async release (tenant: string, key: string): Promise<void> {
    await this.pool.query('DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND status = \'pending\' AND message_id IS NULL', [tenant, key])
  }

  async purgeExpired (): Promise<number> {
    const { rowCount } = await this.pool.query('DELETE FROM idempotency_keys WHERE expires_at < now()')
    return rowCount ?? 0
  }
}
