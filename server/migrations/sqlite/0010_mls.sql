-- natter embedded store, schema version 10: MLS device keys and encrypted conversations (issue 12).

-- DeviceKeyRegistered: each device's MLS signature public key (a newer one
-- replaces it); the device's sign-out (SessionRevoked) removes it.
CREATE TABLE device_keys (
    device_id         TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    signature_key     BLOB NOT NULL,
    registered_at_ms  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX device_keys_by_user ON device_keys (user_id, device_id);

-- ConversationEncrypted: the conversation is end-to-end encrypted.
ALTER TABLE conversations ADD COLUMN e2ee INTEGER NOT NULL DEFAULT 0;
