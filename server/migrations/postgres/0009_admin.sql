-- natter on PostgreSQL, schema version 9: operating a deployment (issue 14).

-- AdminGranted / AdminRevoked: the account holds the admin role.
ALTER TABLE users ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;
-- AccountDisabled / AccountEnabled: when an admin disabled the account.
ALTER TABLE users ADD COLUMN disabled_at_ms BIGINT;
