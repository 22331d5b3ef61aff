-- natter embedded store, schema version 2: groups, roles, receipts.

ALTER TABLE conversations ADD COLUMN name TEXT;

-- Former members keep their row (with the seq of their leaving) so they can
-- still read the history up to it.
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE members ADD COLUMN left_seq INTEGER;

-- Watermarks per user (delivered: the furthest any of their devices received).
CREATE TABLE receipts (
    conversation_id  TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    delivered_seq    INTEGER NOT NULL DEFAULT 0,
    read_seq         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

-- Delivered watermark per device.
CREATE TABLE device_receipts (
    conversation_id  TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    delivered_seq    INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, device_id)
) WITHOUT ROWID;
