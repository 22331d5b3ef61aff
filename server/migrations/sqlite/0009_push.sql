-- natter embedded store, schema version 9: Web Push (issue 11).

-- PushSubscribed / PushUnsubscribed: at most one subscription per device; the
-- device's sign-out (SessionRevoked) removes it.
CREATE TABLE push_subscriptions (
    device_id      TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    p256dh         BLOB NOT NULL,
    auth           BLOB NOT NULL,
    created_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);

-- ConversationMuted / ConversationUnmuted (until_ms NULL: until unmuted).
CREATE TABLE push_mutes (
    user_id          TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    until_ms         INTEGER,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;

-- PushPreviewsSet.
ALTER TABLE users ADD COLUMN push_show_text INTEGER NOT NULL DEFAULT 1;

-- Log followers that send to the outside world (the push worker): how far
-- each has handled the log, and which node holds it. Not a read model:
-- rebuild leaves it alone.
CREATE TABLE followers (
    name            TEXT PRIMARY KEY,
    holder          TEXT NOT NULL,
    lease_until_ms  INTEGER NOT NULL,
    position        INTEGER NOT NULL
) WITHOUT ROWID;
