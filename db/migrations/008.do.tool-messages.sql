-- Tools (DESIGN section 14): every tool call of a reply and its result are stored between the user
-- message and the reply as messages with role 'tool' (content: the result text; metadata: callId,
-- tool, server, arguments, isError, latencyMs, outcome, step; agent: the agent that called it).
ALTER TABLE chat_messages DROP CONSTRAINT IF EXISTS chat_messages_role_check;
ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_role_check CHECK (role IN ('user', 'assistant', 'system', 'tool'));
