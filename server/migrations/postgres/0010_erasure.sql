-- natter on PostgreSQL, schema version 10: erasure (issue 14).

-- AccountErased: the row is a tombstone (no email, phone, name or credentials).
ALTER TABLE users ADD COLUMN erased_at_ms BIGINT;
-- Erasure finds a user's messages by sender.
CREATE INDEX messages_by_sender ON messages (sender_user_id);
