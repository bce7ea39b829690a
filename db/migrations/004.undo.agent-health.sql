DROP INDEX IF EXISTS health_checks_unfolded_idx;
ALTER TABLE health_checks
  DROP COLUMN IF EXISTS attempts,
  DROP COLUMN IF EXISTS failures,
  DROP COLUMN IF EXISTS rate_limited,
  DROP COLUMN IF EXISTS failure_streak,
  DROP COLUMN IF EXISTS folded_at;
DROP TABLE IF EXISTS agent_health;
