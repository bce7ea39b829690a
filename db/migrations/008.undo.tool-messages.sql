-- Tool messages go with the role that allowed them.
DELETE FROM chat_messages WHERE role = 'tool';
ALTER TABLE chat_messages DROP CONSTRAINT IF EXISTS chat_messages_role_check;
ALTER TABLE chat_messages ADD CONSTRAINT chat_messages_role_check CHECK (role IN ('user', 'assistant', 'system'));
