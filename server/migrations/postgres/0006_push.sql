-- natter PostgreSQL store, schema version 6: Web Push (issue 11).

-- PushSubscribed / PushUnsubscribed: at most one subscription per device; the
-- device's sign-out (SessionRevoked) removes it.
CREATE TABLE push_subscriptions (
    device_id      TEXT COLLATE "C" PRIMARY KEY,
    user_id        TEXT COLLATE "C" NOT NULL,
    endpoint       TEXT NOT NULL,
    p256dh         BYTEA NOT NULL,
    auth           BYTEA NOT NULL,
    created_at_ms  BIGINT NOT NULL
);
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user_id);

-- ConversationMuted / ConversationUnmuted (until_ms NULL: until unmuted).
CREATE TABLE push_mutes (
    user_id          TEXT COLLATE "C" NOT NULL,
    conversation_id  TEXT COLLATE "C" NOT NULL,
    until_ms         BIGINT,
    PRIMARY KEY (user_id, conversation_id)
);

-- PushPreviewsSet.
ALTER TABLE users ADD COLUMN push_show_text BOOLEAN NOT NULL DEFAULT TRUE;

-- Log followers that send to the outside world (the push worker): how far
-- each has handled the log, and which node holds it (a lease the holder
-- renews). Not a read model: rebuild leaves it alone.
CREATE TABLE followers (
    name            TEXT COLLATE "C" PRIMARY KEY,
    holder          TEXT NOT NULL,
    lease_until_ms  BIGINT NOT NULL,
    position        BIGINT NOT NULL
);
