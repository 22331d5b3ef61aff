-- natter embedded store, schema version 7: media (issue 10).

-- Content other than text, as the log stores it (natter.events.v1.MessageContent);
-- `text` keeps a media message's caption.
ALTER TABLE messages ADD COLUMN content_pb BLOB;

-- MediaUploaded; first_seq is the first message that sent it (who may read it
-- follows from that message, like the message itself).
CREATE TABLE media (
    media_id          TEXT PRIMARY KEY,
    uploader_user_id  TEXT NOT NULL,
    conversation_id   TEXT NOT NULL,
    sha256            BLOB NOT NULL,
    size              INTEGER NOT NULL,
    mime_type         TEXT NOT NULL,
    file_name         TEXT NOT NULL,
    width             INTEGER NOT NULL,
    height            INTEGER NOT NULL,
    uploaded_at_ms    INTEGER NOT NULL,
    first_seq         INTEGER
) WITHOUT ROWID;
CREATE INDEX media_by_uploader ON media (uploader_user_id);
CREATE INDEX media_by_sha256 ON media (sha256);
