-- When each user last made a request on each node ([push] idle_after_ms: a
-- connected device that has done nothing for that long is notified as if it
-- were offline). Written by the node in batches, at most every second.
ALTER TABLE online ADD COLUMN active_at_ms BIGINT NOT NULL DEFAULT 0;
