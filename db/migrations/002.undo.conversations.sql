DROP TABLE IF EXISTS idempotency_keys;
ALTER TABLE sessions DROP COLUMN IF EXISTS reply_lease_until;
