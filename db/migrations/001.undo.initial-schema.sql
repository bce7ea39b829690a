DROP TABLE IF EXISTS event_logs;
DROP TABLE IF EXISTS health_checks;
DROP TABLE IF EXISTS agent_states;
DROP TABLE IF EXISTS chat_messages;
DROP TABLE IF EXISTS sessions;
DROP FUNCTION IF EXISTS set_updated_at();
