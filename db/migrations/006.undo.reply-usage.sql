DROP TRIGGER IF EXISTS chat_messages_reply_usage ON chat_messages;
DROP FUNCTION IF EXISTS record_reply_usage();
DROP TABLE IF EXISTS reply_usage;
