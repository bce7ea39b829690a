ALTER TABLE sessions DROP CONSTRAINT IF EXISTS sessions_mode_check;
ALTER TABLE sessions DROP COLUMN IF EXISTS group_settings;
ALTER TABLE sessions DROP COLUMN IF EXISTS mode;
