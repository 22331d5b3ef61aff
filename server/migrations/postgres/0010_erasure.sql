-- natter on PostgreSQL, schema version 10: erasure and retention (issue 14).

-- AccountErased: the row is a tombstone (no email, phone, name or credentials).
ALTER TABLE users ADD COLUMN erased_at_ms BIGINT;
-- Retention (RetentionSet): the conversation's own limit on message age, 0: none.
ALTER TABLE conversations ADD COLUMN retention_secs BIGINT NOT NULL DEFAULT 0;
-- The retention worker finds a conversation's old messages by time.
CREATE INDEX messages_by_age ON messages (conversation_id, sent_at_ms);
