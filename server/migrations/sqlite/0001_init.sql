-- natter embedded store, schema version 1.

-- The log: the source of truth.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,          -- global, strictly increasing in commit order
    stream          TEXT    NOT NULL,
    version         INTEGER NOT NULL,             -- 1-based within the stream
    event_id        BLOB    NOT NULL,             -- 16 bytes; makes appends idempotent
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         BLOB    NOT NULL,             -- natter.events.v1 protobuf
    recorded_at_ms  INTEGER NOT NULL,
    UNIQUE (stream, version)
);
CREATE UNIQUE INDEX events_by_id ON events (event_id);

CREATE TABLE streams (
    stream  TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID;

-- Read models: projections of the log, rebuilt by replaying it.
CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE sessions (
    token_hash     BLOB PRIMARY KEY,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    device_name    TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    revoked_at_ms  INTEGER
) WITHOUT ROWID;
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE conversations (
    conversation_id   TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    last_seq          INTEGER NOT NULL,
    last_position     INTEGER NOT NULL,           -- orders the conversation list
    last_activity_ms  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE members (
    conversation_id  TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    ordinal          INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id   TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    position          INTEGER NOT NULL,
    sender_user_id    TEXT NOT NULL,
    sender_device_id  TEXT NOT NULL,
    client_msg_id     TEXT NOT NULL,
    content_kind      TEXT NOT NULL,
    text              TEXT,
    sent_at_ms        INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;

-- Which log positions concern which user: the per-user event feed.
CREATE TABLE feed (
    user_id   TEXT NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (user_id, position)
) WITHOUT ROWID;
