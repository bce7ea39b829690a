import type pg from 'pg'

export type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient

type AfterCommit = (pool: pg.Pool) => Promise<void> | void

// The work each open withTransaction client runs once its transaction has committed.
const pendingAfterCommit = new WeakMap<object, AfterCommit[]>()

/**
 * Queues `task` to run on `db` right after its transaction commits, when `db` is a client inside
 * withTransaction; returns false (and queues nothing) otherwise, so the caller runs it at once.
 */
export function afterCommit (db: Queryable, task: AfterCommit): boolean {
  const queue = pendingAfterCommit.get(db)
  if (!queue) return false
  queue.push(task)
  return true
}

/** Runs `work` in one transaction on one pooled connection: committed if it returns, rolled back if it throws. */
export async function withTransaction<T> (pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  let broken = false
  const queue: AfterCommit[] = []
  pendingAfterCommit.set(client, queue)
  try {
    await client.query('BEGIN')
    const result = await work(client)
    await client.query('COMMIT')
    pendingAfterCommit.delete(client)
    // Tasks are best effort (announcements): the transaction is committed whatever they do.
    for (const task of queue) {
      try {
        await task(pool)
      } catch {
        // ignored: see above
      }
    }
    return result
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {
      broken = true
    })
    throw err
  } finally {
    pendingAfterCommit.delete(client)
    // A connection whose rollback failed is in an unknown state: destroy it rather than reuse it.
    client.release(broken)
  }
}
