-- Token usage per reply, per tenant (DESIGN section 12): the source of the daily token budget and of
-- GET /v1/usage. A row is written by a trigger in the transaction that stores the assistant message,
-- whatever code path stores it, so no route can forget to count a reply. The rows carry the tenant
-- (chat_messages has none) and have no foreign key: a session purged after it ended keeps its usage.
CREATE TABLE IF NOT EXISTS reply_usage (
  tenant         text NOT NULL,
  session_id     uuid NOT NULL,
  agent          text,
  model          text,
  input_tokens   integer NOT NULL DEFAULT 0,
  output_tokens  integer NOT NULL DEFAULT 0,
  created_at     timestamptz NOT NULL
);

-- A tenant's range of days is one contiguous stretch of this index, and the columns the usage sums
-- and groups are in it: an index-only scan however many messages the tenant has in other days.
CREATE INDEX IF NOT EXISTS reply_usage_tenant_time_idx
  ON reply_usage (tenant, created_at) INCLUDE (input_tokens, output_tokens, agent, model);

CREATE OR REPLACE FUNCTION record_reply_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO reply_usage (tenant, session_id, agent, model, input_tokens, output_tokens, created_at)
  SELECT s.tenant, NEW.session_id, NEW.agent, NEW.model, COALESCE(NEW.input_tokens, 0), COALESCE(NEW.output_tokens, 0), NEW.created_at
    FROM sessions s WHERE s.id = NEW.session_id;
  RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER chat_messages_reply_usage AFTER INSERT ON chat_messages
  FOR EACH ROW WHEN (NEW.role = 'assistant') EXECUTE FUNCTION record_reply_usage();

-- The replies stored before this migration.
INSERT INTO reply_usage (tenant, session_id, agent, model, input_tokens, output_tokens, created_at)
SELECT s.tenant, m.session_id, m.agent, m.model, COALESCE(m.input_tokens, 0), COALESCE(m.output_tokens, 0), m.created_at
  FROM chat_messages m JOIN sessions s ON s.id = m.session_id
 WHERE m.role = 'assistant';
