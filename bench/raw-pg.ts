import type pg from 'pg'
import { STORE_REPLY, TAKE_LEASE_AND_STORE_MESSAGE } from '../src/messages/reply-repository.js'

/**
 * The rows one reply commits, written by a plain `pg` script with no service around it: the
 * baseline the conversation and provider benchmarks compare the service with. Two transactions, as
 * in the service: the lease, the user message and its 2 events; then the reply, the agent state and
 * its event.
 */
export async function commitReplyRows (client: pg.PoolClient | pg.Client, sessionId: string): Promise<void> {
  await client.query('BEGIN')
  const { rows } = await client.query<{ last_seq: string }>(
    `UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = now() + interval '65 seconds'
      WHERE id = $1 AND status = 'active' RETURNING last_seq`,
    [sessionId]
  )
  const seq = Number(rows[0]?.last_seq)
  await client.query('INSERT INTO chat_messages (session_id, seq, role, content) VALUES ($1, $2, \'user\', $3)', [sessionId, seq, 'How do I make this query faster?'])
  await client.query(
    'INSERT INTO event_logs (type, tenant, session_id, data) SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::jsonb[])',
    [['message.created', 'agent.selected'], ['default', 'default'], [sessionId, sessionId], ['{}', '{}']]
  )
  await client.query('COMMIT')
  await client.query('BEGIN')
  const { rows: updated } = await client.query<{ last_seq: string }>(
    'UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1, reply_lease_until = NULL WHERE id = $1 RETURNING last_seq',
    [sessionId]
  )
  await client.query(
    `INSERT INTO chat_messages (session_id, seq, role, content, agent, provider, model, input_tokens, output_tokens, latency_ms)
     VALUES ($1, $2, 'assistant', $3, 'assistant', 'echo', 'gpt-4o-mini', 30, 12, 5)`,
    [sessionId, Number(updated[0]?.last_seq), 'Echo (gpt-4o-mini): How do I make this query faster?']
  )
  await client.query(
    `INSERT INTO agent_states (session_id, agent_id, reply_count, input_tokens, output_tokens, last_used_at) VALUES ($1, 'assistant', 1, 30, 12, now())
     ON CONFLICT (session_id, agent_id) DO UPDATE SET reply_count = agent_states.reply_count + 1, last_used_at = now()`,
    [sessionId]
  )
  await client.query('INSERT INTO event_logs (type, tenant, session_id, data) VALUES (\'message.created\', \'default\', $1, \'{}\')', [sessionId])
  await client.query('COMMIT')
}

/**
 * The same rows written with the service's own two statements (src/messages/reply-repository.ts), sent
 * by a plain script: the floor under the service, which adds HTTP, auth, validation, the cache, the
 * provider call, serialisation and the (batched) NOTIFY of its events.
 */
export async function commitReplyRowsAsService (client: pg.PoolClient | pg.Client, sessionId: string): Promise<void> {
  const token = await takeLeaseAsService(client, sessionId)
  await storeReplyAsService(client, sessionId, token)
}

/** Step 1 alone (the lease and the user message); returns the lease's token. */
export async function takeLeaseAsService (client: pg.PoolClient | pg.Client, sessionId: string): Promise<string> {
  const { rows } = await client.query<{ lease_token: string }>(TAKE_LEASE_AND_STORE_MESSAGE, [sessionId, 'default', 65_000, 'How do I make this query faster?', {}, null, new Date()])
  if (!rows[0]) throw new Error(`session ${sessionId}: lease not taken`)
  return rows[0].lease_token
}

/**
 * Step 3 alone (the reply, its usage and events, the lease released), under the lease `token`.
 */
export async function storeReplyAsService (client: pg.PoolClient | pg.Client, sessionId: string, token: string): Promise<void> {
  const selected = JSON.stringify({ reason: 'default', matched: [], score: 0 })
  const { rows } = await client.query(STORE_REPLY, [sessionId, 'default', 'Echo (gpt-4o-mini): How do I make this query faster?', 'assistant', 'echo', 'gpt-4o-mini', 30, 12, 5, selected, token, 'assistant', null, new Date(), null])
  if (!rows[0]) throw new Error(`session ${sessionId}: reply not stored`)
}
