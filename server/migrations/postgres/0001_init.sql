-- natter PostgreSQL store, schema version 1: the log and the read models that
-- the embedded store reached in its versions 1 to 3, plus what several nodes
-- share (nodes, online). Ids are text in the "C" collation so that every
-- ORDER BY gives the same answer as SQLite's binary comparison.

-- The log: the source of truth. Positions are assigned under one advisory
-- lock, in commit order (see ARCHITECTURE.md, "Gap-free positions").
CREATE TABLE events (
    position        BIGINT   PRIMARY KEY,
    stream          TEXT     COLLATE "C" NOT NULL,
    version         BIGINT   NOT NULL,
    event_id        BYTEA    NOT NULL UNIQUE,
    event_type      TEXT     NOT NULL,
    schema_version  INTEGER  NOT NULL,
    payload         BYTEA    NOT NULL,
    recorded_at_ms  BIGINT   NOT NULL,
    UNIQUE (stream, version)
);

CREATE TABLE streams (
    stream   TEXT COLLATE "C" PRIMARY KEY,
    version  BIGINT NOT NULL
);

-- Read models: projections of the log, rebuilt by replaying it.
CREATE TABLE users (
    user_id         TEXT COLLATE "C" PRIMARY KEY,
    email           TEXT COLLATE "C" NOT NULL UNIQUE,
    display_name    TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    hide_last_seen  BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    token_hash     BYTEA PRIMARY KEY,
    user_id        TEXT COLLATE "C" NOT NULL,
    device_id      TEXT COLLATE "C" NOT NULL,
    device_name    TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    revoked_at_ms  BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE conversations (
    conversation_id   TEXT COLLATE "C" PRIMARY KEY,
    kind              TEXT NOT NULL,
    name              TEXT,
    created_at_ms     BIGINT NOT NULL,
    last_seq          BIGINT NOT NULL,
    last_position     BIGINT NOT NULL,
    last_activity_ms  BIGINT NOT NULL,
    -- The seq of the last change of shape (members, roles, name), which a
    -- group change is decided on (Precondition::GroupUnchanged).
    changed_seq       BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id  TEXT COLLATE "C" NOT NULL,
    user_id          TEXT COLLATE "C" NOT NULL,
    ordinal          BIGINT NOT NULL,
    role             TEXT NOT NULL DEFAULT 'member',
    left_seq         BIGINT,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, conversation_id);

CREATE TABLE messages (
    conversation_id   TEXT COLLATE "C" NOT NULL,
    seq               BIGINT NOT NULL,
    position          BIGINT NOT NULL,
    sender_user_id    TEXT COLLATE "C" NOT NULL,
    sender_device_id  TEXT COLLATE "C" NOT NULL,
    client_msg_id     TEXT COLLATE "C" NOT NULL,
    content_kind      TEXT NOT NULL,
    text              TEXT,
    sent_at_ms        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

-- Which log positions concern which user. By position too: other nodes read
-- an event's audience from here.
CREATE TABLE feed (
    user_id   TEXT COLLATE "C" NOT NULL,
    position  BIGINT NOT NULL,
    PRIMARY KEY (user_id, position)
);
CREATE INDEX feed_by_position ON feed (position);

CREATE TABLE receipts (
    conversation_id  TEXT COLLATE "C" NOT NULL,
    user_id          TEXT COLLATE "C" NOT NULL,
    delivered_seq    BIGINT NOT NULL DEFAULT 0,
    read_seq         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE device_receipts (
    conversation_id  TEXT COLLATE "C" NOT NULL,
    device_id        TEXT COLLATE "C" NOT NULL,
    user_id          TEXT COLLATE "C" NOT NULL,
    delivered_seq    BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, device_id)
);

-- Not projections: presence state.
CREATE TABLE last_seen (
    user_id       TEXT COLLATE "C" PRIMARY KEY,
    last_seen_ms  BIGINT NOT NULL
);

-- Live natterd nodes (a heartbeat) and which users are connected to which.
CREATE TABLE nodes (
    node_id       TEXT COLLATE "C" PRIMARY KEY,
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE online (
    user_id  TEXT COLLATE "C" NOT NULL,
    node_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, node_id)
);

-- Failed sign-ins per account, shared by every node so that spreading
-- guesses over nodes gains nothing (session::guard has the rules). Rows idle
-- for a day are swept by the node heartbeat.
CREATE TABLE login_failures (
    email         TEXT COLLATE "C" PRIMARY KEY,
    failures      INTEGER NOT NULL,
    locked_until  TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The first statement of every log write (see ARCHITECTURE.md, "Gap-free
-- positions"): takes the log lock, asks for the commit's wake-up of the nodes'
-- tailers, and returns the head. VOLATILE, so the MAX reads a fresh snapshot
-- taken after the lock is held, not the calling statement's.
CREATE FUNCTION natter_begin_write(lock_key BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    PERFORM pg_notify('natter_log', '');
    RETURN (SELECT COALESCE(MAX(position), 0) FROM events);
END
$$;
