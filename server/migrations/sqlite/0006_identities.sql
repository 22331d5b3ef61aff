-- natter embedded store, schema version 6: accounts without a password or an
-- email (made by a texted code, or by Google or GitHub), and the external
-- identities an account may sign in with (issue 9).

-- SQLite cannot drop NOT NULL: the users read model is copied into a table
-- where email and password_hash may be NULL (UNIQUE allows many NULLs).
CREATE TABLE users_v6 (
    user_id               TEXT PRIMARY KEY,
    email                 TEXT UNIQUE,
    display_name          TEXT NOT NULL,
    password_hash         TEXT,
    created_at_ms         INTEGER NOT NULL,
    hide_last_seen        INTEGER NOT NULL DEFAULT 0,
    phone                 TEXT,
    email_verified_at_ms  INTEGER,
    totp_sealed_secret    BLOB,
    totp_enabled_at_ms    INTEGER
) WITHOUT ROWID;
INSERT INTO users_v6 (user_id, email, display_name, password_hash, created_at_ms, hide_last_seen, phone,
                      email_verified_at_ms, totp_sealed_secret, totp_enabled_at_ms)
    SELECT user_id, email, display_name, password_hash, created_at_ms, hide_last_seen, phone,
           email_verified_at_ms, totp_sealed_secret, totp_enabled_at_ms
    FROM users;
DROP TABLE users;
ALTER TABLE users_v6 RENAME TO users;
CREATE UNIQUE INDEX users_by_phone ON users (phone);

-- IdentityLinked / IdentityUnlinked: (provider, subject) belongs to one account.
CREATE TABLE identities (
    provider      TEXT NOT NULL,
    subject       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    email         TEXT,
    linked_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
) WITHOUT ROWID;
CREATE INDEX identities_by_user ON identities (user_id);
