-- natter PostgreSQL store, schema version 2: account security (issue 9).
-- Read models first (rebuilt from the log), then short-lived state kept
-- outside the log and never rebuilt (auth_*: codes, counters, challenges).

ALTER TABLE sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'password';

-- A proved phone number (PhoneAdded), E.164; one account each.
ALTER TABLE users ADD COLUMN phone TEXT COLLATE "C";
CREATE UNIQUE INDEX users_by_phone ON users (phone);

ALTER TABLE users ADD COLUMN email_verified_at_ms BIGINT;
ALTER TABLE users ADD COLUMN totp_sealed_secret BYTEA;
ALTER TABLE users ADD COLUMN totp_enabled_at_ms BIGINT;

CREATE TABLE recovery_codes (
    user_id     TEXT COLLATE "C" NOT NULL,
    code_hash   BYTEA NOT NULL,
    used_at_ms  BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- One-time codes (phone and email): only an HMAC of the code is stored.
CREATE TABLE auth_codes (
    purpose        TEXT NOT NULL,
    subject        TEXT COLLATE "C" NOT NULL,
    code_hash      BYTEA NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    attempts_left  INTEGER NOT NULL,
    PRIMARY KEY (purpose, subject)
);

-- Fixed-window counters for rate limits that hold across nodes.
CREATE TABLE auth_counters (
    key              TEXT COLLATE "C" PRIMARY KEY,
    window_start_ms  BIGINT NOT NULL,
    count            INTEGER NOT NULL
);

-- The newest TOTP step accepted per user: a code is accepted once.
CREATE TABLE auth_totp_steps (
    user_id    TEXT COLLATE "C" PRIMARY KEY,
    last_step  BIGINT NOT NULL
);

-- Second-factor challenges between a first factor and VerifyMfa.
CREATE TABLE auth_challenges (
    challenge_hash  BYTEA PRIMARY KEY,
    user_id         TEXT COLLATE "C" NOT NULL,
    device_name     TEXT NOT NULL,
    method          TEXT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    attempts_left   INTEGER NOT NULL
);

-- When and from where each session was last used.
CREATE TABLE auth_session_activity (
    token_hash    BYTEA PRIMARY KEY,
    last_used_ms  BIGINT NOT NULL,
    last_address  TEXT NOT NULL
);

CREATE TABLE auth_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
