-- The seed schema: sessions, their messages, per-session agent state, agent health samples and the
-- event log. Written to be re-runnable (IF NOT EXISTS / OR REPLACE) in case a crash falls between the
-- migration and its bookkeeping row. gen_random_uuid() is built into PostgreSQL 13+, no extension.

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
  NEW.updated_at = now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE IF NOT EXISTS sessions (
  id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant         text NOT NULL DEFAULT 'default',
  status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invalidated', 'expired')),
  agents         text[] NOT NULL DEFAULT '{}',
  metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
  version        integer NOT NULL DEFAULT 1,
  message_count  integer NOT NULL DEFAULT 0,
  last_seq       bigint NOT NULL DEFAULT 0,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz,
  invalidated_at timestamptz
);
CREATE INDEX IF NOT EXISTS sessions_tenant_created_idx ON sessions (tenant, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS sessions_expires_idx ON sessions (expires_at) WHERE status = 'active';
CREATE INDEX IF NOT EXISTS sessions_status_idx ON sessions (status) WHERE status <> 'active';
CREATE OR REPLACE TRIGGER sessions_updated_at BEFORE UPDATE ON sessions
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS chat_messages (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  session_id    uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  seq           bigint NOT NULL,
  role          text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
  agent         text,
  content       text NOT NULL,
  metadata      jsonb NOT NULL DEFAULT '{}'::jsonb,
  provider      text,
  model         text,
  input_tokens  integer,
  output_tokens integer,
  latency_ms    integer,
  created_at    timestamptz NOT NULL DEFAULT now(),
  UNIQUE (session_id, seq)
);

CREATE TABLE IF NOT EXISTS agent_states (
  session_id    uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  agent_id      text NOT NULL,
  state         jsonb NOT NULL DEFAULT '{}'::jsonb,
  reply_count   integer NOT NULL DEFAULT 0,
  input_tokens  bigint NOT NULL DEFAULT 0,
  output_tokens bigint NOT NULL DEFAULT 0,
  last_used_at  timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, agent_id)
);
CREATE OR REPLACE TRIGGER agent_states_updated_at BEFORE UPDATE ON agent_states
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE IF NOT EXISTS health_checks (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  agent_id    text NOT NULL,
  provider    text NOT NULL,
  model       text NOT NULL,
  status      text NOT NULL CHECK (status IN ('healthy', 'degraded', 'down')),
  latency_ms  integer,
  error       text,
  source      text NOT NULL DEFAULT 'probe' CHECK (source IN ('probe', 'traffic')),
  checked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS health_checks_agent_time_idx ON health_checks (agent_id, checked_at DESC);
CREATE INDEX IF NOT EXISTS health_checks_time_idx ON health_checks (checked_at);

CREATE TABLE IF NOT EXISTS event_logs (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  type        text NOT NULL,
  tenant      text,
  session_id  uuid,
  agent_id    text,
  data        jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS event_logs_tenant_id_idx ON event_logs (tenant, id);
CREATE INDEX IF NOT EXISTS event_logs_session_idx ON event_logs (session_id, id) WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS event_logs_type_idx ON event_logs (type, id);
CREATE INDEX IF NOT EXISTS event_logs_time_idx ON event_logs (created_at);
