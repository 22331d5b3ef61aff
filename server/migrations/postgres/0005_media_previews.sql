-- natter PostgreSQL store, schema version 5: previews and collection of media (issue 10).

-- A preview natterd made (preview_of: the media it shows), and the preview of
-- media that has one.
ALTER TABLE media ADD COLUMN preview_media_id TEXT COLLATE "C";
ALTER TABLE media ADD COLUMN preview_of TEXT COLLATE "C";
-- A video's or audio's length from its container (0 when unknown).
ALTER TABLE media ADD COLUMN duration_ms BIGINT NOT NULL DEFAULT 0;
-- Uploads no message sent, oldest first: what the collector discards.
CREATE INDEX media_unsent ON media (uploaded_at_ms) WHERE first_seq IS NULL AND preview_of IS NULL;
