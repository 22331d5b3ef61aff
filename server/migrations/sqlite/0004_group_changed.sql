-- natter embedded store, schema version 4: the seq of each conversation's last
-- change of shape (members, roles, name), which a group change is decided on
-- (Precondition::GroupUnchanged). Messages and receipts do not move it.
ALTER TABLE conversations ADD COLUMN changed_seq INTEGER NOT NULL DEFAULT 0;

UPDATE conversations SET changed_seq = COALESCE(
    (SELECT MAX(version) FROM events
     WHERE stream = 'conv:' || conversations.conversation_id AND event_type <> 'MessageSent'),
    0);
