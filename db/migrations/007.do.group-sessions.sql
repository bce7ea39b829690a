-- Group conversations (DESIGN section 9): a session is in mode 'single' (one reply per message, as
-- before) or 'group' (each message starts a round of turns), with the group's settings as JSON
-- ({ strategy, maxTurns, manager?, terminationKeyword?, allowRepeat, preset? }). Existing sessions
-- stay single.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT 'single';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS group_settings jsonb;
ALTER TABLE sessions ADD CONSTRAINT sessions_mode_check
  CHECK ((mode = 'single' AND group_settings IS NULL) OR (mode = 'group' AND group_settings IS NOT NULL));
