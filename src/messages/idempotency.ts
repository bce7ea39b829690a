import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type pg from 'pg'
import type { Queryable } from '../db/transaction.js'
import { DomainError } from '../domain-errors.js'

/** What a completed post answered: replayed as is to every retry with the same key. */
export interface StoredOutcome {
  statusCode: number
  body: unknown
}

export type Claim = { kind: 'claimed' } | { kind: 'replay'; outcome: StoredOutcome }

export function requestHash(parts: unknown): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex')
}

/**
 * Idempotency keys for message posts, per tenant, kept 24 hours. The first request with a key claims
 * it (a row in 'pending'); the outcome is written in the same transaction as the reply, so a retry
 * either finds the outcome or the claim. A retry that races the first request waits for its outcome
 * instead of storing anything twice.
 */
export class IdempotencyKeys {
  constructor(
    private readonly pool: pg.Pool,
    /** A pending claim older than this was abandoned (its process died) and may be taken over. */
    private readonly abandonAfterMs: number
  ) {}

  async claim(tenant: string, key: string, sessionId: string, hash: string): Promise<Claim> {
    const deadline = Date.now() + this.abandonAfterMs + 5000
    let wait = 25
    for (;;) {
      const { rows } = await this.pool.query<{ inserted: boolean; request_hash: string; status: string; status_code: number | null; response: unknown; age_ms: number }>(
        `WITH attempt AS (
           INSERT INTO idempotency_keys (tenant, key, session_id, request_hash)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant, key) DO UPDATE
             SET request_hash = EXCLUDED.request_hash, session_id = EXCLUDED.session_id,
                 created_at = now(), expires_at = now() + interval '24 hours'
             WHERE idempotency_keys.expires_at < now()
                OR (idempotency_keys.status = 'pending' AND idempotency_keys.created_at < now() - make_interval(secs => $5 / 1000.0))
           RETURNING true AS inserted, request_hash, status, status_code, response, 0 AS age_ms
         )
         SELECT * FROM attempt
         UNION ALL
         SELECT false, request_hash, status, status_code, response, (extract(epoch FROM now() - created_at) * 1000)::int
           FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM attempt)`,
        [tenant, key, sessionId, hash, this.abandonAfterMs]
      )
      const row = rows[0]
      if (row?.inserted) return { kind: 'claimed' }
      if (row && row.request_hash !== hash) {
        throw new DomainError('conflict', 'This Idempotency-Key was already used with a different request', { code: 'IDEMPOTENCY_KEY_REUSED' })
      }
      if (row?.status === 'completed') return { kind: 'replay', outcome: { statusCode: row.status_code ?? 201, body: row.response } }
      // Pending (the first request is still producing its reply), or released just now: wait, retry.
      if (Date.now() > deadline) {
        throw new DomainError('busy', 'A request with this Idempotency-Key is still in progress', { code: 'IDEMPOTENCY_KEY_IN_PROGRESS', retryAfterSeconds: 2 })
      }
      await sleep(wait)
      wait = Math.min(wait * 2, 500)
    }
  }

  /** Records the outcome: call inside the transaction that commits the reply. */
  async complete(db: Queryable, tenant: string, key: string, outcome: StoredOutcome): Promise<void> {
    await db.query(
      `UPDATE idempotency_keys SET status = 'completed', status_code = $3, response = $4 WHERE tenant = $1 AND key = $2`,
      [tenant, key, outcome.statusCode, JSON.stringify(outcome.body)]
    )
  }

  /** Nothing was stored under the claim (the request failed early): a retry may try again. */
  async release(tenant: string, key: string): Promise<void> {
    await this.pool.query(`DELETE FROM idempotency_keys WHERE tenant = $1 AND key = $2 AND status = 'pending'`, [tenant, key])
  }

  async purgeExpired(): Promise<number> {
    const { rowCount } = await this.pool.query('DELETE FROM idempotency_keys WHERE expires_at < now()')
    return rowCount ?? 0
  }
}
