-- natter embedded store, schema version 11: operating a deployment (issue 14).

-- AdminGranted / AdminRevoked: the account holds the admin role.
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
-- AccountDisabled / AccountEnabled: when an admin disabled the account.
ALTER TABLE users ADD COLUMN disabled_at_ms INTEGER;
