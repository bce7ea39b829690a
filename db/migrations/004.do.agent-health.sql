-- Agent health shared by the replicas. Only the replica holding the monitor's advisory lock writes
-- agent_health (state and hysteresis counters, so a new lock holder carries on where the last one
-- stopped); every replica reads it to show and route by the same state.
CREATE TABLE IF NOT EXISTS agent_health (
  agent_id   text PRIMARY KEY,
  status     text NOT NULL CHECK (status IN ('healthy', 'degraded', 'down')),
  reason     text NOT NULL DEFAULT '',
  failures   integer NOT NULL DEFAULT 0,
  successes  integer NOT NULL DEFAULT 0,
  -- When the agent's provider+model was last probed: probes never come more often than the interval,
  -- whichever replica holds the lock.
  probed_at  timestamptz,
  changed_at timestamptz NOT NULL DEFAULT now(),
  checked_at timestamptz NOT NULL DEFAULT now()
);

-- A traffic sample aggregates one replica's replies of an agent over an interval: how many, how many
-- failed or were rate limited, and the run of failures at its end (a burst). folded_at is set when
-- the lock holder has applied it to agent_health, so each sample counts exactly once.
ALTER TABLE health_checks
  ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 1,
  ADD COLUMN IF NOT EXISTS failures integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS rate_limited integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS failure_streak integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS folded_at timestamptz;
CREATE INDEX IF NOT EXISTS health_checks_unfolded_idx ON health_checks (id) WHERE folded_at IS NULL;
