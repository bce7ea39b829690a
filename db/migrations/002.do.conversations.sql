-- Conversations: a per-session reply lease (one reply at a time, across replicas, without holding a
-- connection) and idempotency keys for message posts (24 hours).

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS reply_lease_until timestamptz;

CREATE TABLE IF NOT EXISTS idempotency_keys (
  tenant        text NOT NULL,
  key           text NOT NULL,
  session_id    uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  request_hash  text NOT NULL,
  status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed')),
  status_code   integer,
  response      jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL DEFAULT now() + interval '24 hours',
  PRIMARY KEY (tenant, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_idx ON idempotency_keys (expires_at);
