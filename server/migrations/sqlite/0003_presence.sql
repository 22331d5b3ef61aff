-- natter embedded store, schema version 3: presence.

-- A privacy setting, projected from PrivacyChanged events.
ALTER TABLE users ADD COLUMN hide_last_seen INTEGER NOT NULL DEFAULT 0;

-- Last-seen times. Presence itself is ephemeral (never in the log); this is
-- the one piece of it that survives a restart.
CREATE TABLE last_seen (
    user_id       TEXT PRIMARY KEY,
    last_seen_ms  INTEGER NOT NULL
) WITHOUT ROWID;
