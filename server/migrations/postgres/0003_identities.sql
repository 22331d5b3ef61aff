-- natter PostgreSQL store, schema version 3: accounts without a password or
-- an email (made by a texted code, or by Google or GitHub), and the external
-- identities an account may sign in with (issue 9).

ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;

-- IdentityLinked / IdentityUnlinked: (provider, subject) belongs to one account.
CREATE TABLE identities (
    provider      TEXT COLLATE "C" NOT NULL,
    subject       TEXT COLLATE "C" NOT NULL,
    user_id       TEXT COLLATE "C" NOT NULL,
    email         TEXT COLLATE "C",
    linked_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_by_user ON identities (user_id);
