-- natter embedded store, schema version 5: account security (issue 9).

-- How each session was signed in (SessionStarted.method).
ALTER TABLE sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'password';

-- EmailVerified; the TOTP second factor (TotpEnabled/TotpDisabled): the secret
-- sealed with the server key, never in plaintext.
-- A proved phone number (PhoneAdded), E.164; one account each.
ALTER TABLE users ADD COLUMN phone TEXT;
CREATE UNIQUE INDEX users_by_phone ON users (phone);

ALTER TABLE users ADD COLUMN email_verified_at_ms INTEGER;
ALTER TABLE users ADD COLUMN totp_sealed_secret BLOB;
ALTER TABLE users ADD COLUMN totp_enabled_at_ms INTEGER;

-- Recovery codes (SHA-256 of the normalized code), single use.
CREATE TABLE recovery_codes (
    user_id     TEXT NOT NULL,
    code_hash   BLOB NOT NULL,
    used_at_ms  INTEGER,
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;
