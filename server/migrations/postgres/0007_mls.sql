-- natter PostgreSQL store, schema version 7: MLS device keys and KeyPackages
-- (issue 12).

-- DeviceKeyRegistered: each device's MLS signature public key (a newer one
-- replaces it); the device's sign-out (SessionRevoked) removes it. A read model.
CREATE TABLE device_keys (
    device_id         TEXT COLLATE "C" PRIMARY KEY,
    user_id           TEXT COLLATE "C" NOT NULL,
    signature_key     BYTEA NOT NULL,
    registered_at_ms  BIGINT NOT NULL
);
CREATE INDEX device_keys_by_user ON device_keys (user_id, device_id);

-- The KeyPackages each device published (mls::postgres). Not a read model
-- and not in the log: each ordinary one is handed out once and deleted as it
-- is claimed; the last-resort one stays until replaced. Rebuild leaves it alone.
CREATE TABLE mls_key_packages (
    device_id        TEXT COLLATE "C" NOT NULL,
    package_ref      BYTEA NOT NULL,
    user_id          TEXT COLLATE "C" NOT NULL,
    -- The device key it was signed with: only those of the current key are handed out.
    signature_key    BYTEA NOT NULL,
    last_resort      BOOLEAN NOT NULL,
    not_after_ms     BIGINT NOT NULL,
    published_at_ms  BIGINT NOT NULL,
    package          BYTEA NOT NULL,
    PRIMARY KEY (device_id, package_ref)
);
CREATE INDEX mls_key_packages_to_claim ON mls_key_packages (device_id, last_resort, published_at_ms);

-- ConversationEncrypted: the conversation is end-to-end encrypted.
ALTER TABLE conversations ADD COLUMN e2ee BOOLEAN NOT NULL DEFAULT FALSE;
