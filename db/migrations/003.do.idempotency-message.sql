-- The user message an idempotent post stored: once it is set, a retry never stores the message again,
-- even if the request that stored it died before its reply.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS message_id uuid;
