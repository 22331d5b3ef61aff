//! What the PostgreSQL writer sends inside a group commit, with as few round
//! trips as correctness allows.
//!
//! A batch is written in *waves*. A wave first reads every check its appends
//! need (event ids, stream versions, preconditions) in one pipelined flight,
//! then decides each append in order in memory, with an overlay of what the
//! earlier appends of the same wave wrote (stream versions, event ids), and
//! plans the rows: the events, their projections and the stream versions, as
//! a list of statements. The list is then sent pipelined, **in order** (each
//! request is handed to the connection before the next one is created), so the
//! server runs it exactly as if it had been sent one statement at a time.
//! Consecutive messages share one statement (`SEND_MESSAGES`), and the stream
//! versions one upsert at the end of the list.
//! A precondition whose answer an earlier append of the wave may have changed
//! (a change of that conversation's shape) ends the wave: the next wave
//! reads it again, after the writes.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use prost::Message as _;

use super::{parse_uuid, query, row_to_event, Conn, Failure, LOG_LOCK, SELECT_EVENT};
use crate::domain::conversation::ConversationKind;
use crate::domain::{Content, ConversationId, Event, Millis, Role, UserId};
use crate::store::{
    check_distinct_streams, codec, erasure::LogRewrite, kind_to_str, role_to_str, AppendError, AppendOutcome,
    CommittedEvent, Position, Precondition, RecordedEvent, StoreError, StreamAppend, Work, WriteJob,
};

type Param = Box<dyn ToSql + Sync + Send>;

fn p<T: ToSql + Sync + Send + 'static>(value: T) -> Param {
    Box::new(value)
}

/// One statement to send, with its parameters.
struct Stmt {
    sql: &'static str,
    params: Vec<Param>,
}

/// Where an event's audience comes from once its statements ran.
struct PlannedEvent {
    event: RecordedEvent,
    /// The statement whose `RETURNING user_id, position` rows name the members
    /// it reached (by its position: one statement may carry many events).
    feed: Option<usize>,
    /// Someone who learns of it without being a member (removed, leaving).
    extra: Option<UserId>,
}

/// Statements in the order they must run, and the events they write.
#[derive(Default)]
struct Plan {
    stmts: Vec<Stmt>,
    events: Vec<PlannedEvent>,
    /// Messages planned since the last other statement: written by one
    /// statement, placed where the next other statement (or the end) is.
    messages: MessageRun,
    /// The newest version of each stream written: one upsert at the end.
    versions: HashMap<String, u64>,
}

/// A run of consecutive `MessageSent` events, as the columns of `SEND_MESSAGES`.
#[derive(Default)]
struct MessageRun {
    /// Whether the event rows are written too (not in a rebuild).
    with_rows: bool,
    /// Indexes into `Plan::events`.
    events: Vec<usize>,
    position: Vec<i64>,
    stream: Vec<String>,
    version: Vec<i64>,
    event_id: Vec<Vec<u8>>,
    event_type: Vec<&'static str>,
    schema_version: Vec<i32>,
    payload: Vec<Vec<u8>>,
    recorded_at: Vec<i64>,
    conversation: Vec<String>,
    sender_user: Vec<String>,
    sender_device: Vec<String>,
    client_msg_id: Vec<String>,
    text: Vec<String>,
    sent_at: Vec<i64>,
    /// `text` or `media`; the content as stored for media; the media sent.
    content_kind: Vec<&'static str>,
    content_pb: Vec<Option<Vec<u8>>>,
    media_id: Vec<Option<String>>,
}

const INSERT_EVENT: &str =
    "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// A run of `MessageSent` events, projected (the same rules as
/// `Plan::project`) in one statement however many there are; `$events` is
/// where the event rows are written too, or nothing. The parts touch
/// different tables, so one snapshot serves them all. Returns the feed rows
/// written: each event's audience.
macro_rules! messages_sql {
    ($events:literal) => {
        concat!(
            "WITH i AS (
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bytea[], $5::text[], $6::int[],
                                      $7::bytea[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[],
                                      $13::text[], $14::bigint[], $15::text[], $16::bytea[], $17::text[])
                     AS i(position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms,
                          conversation_id, sender_user_id, sender_device_id, client_msg_id, text, sent_at_ms,
                          content_kind, content_pb, media_id)),",
            $events,
            "m AS (
                 INSERT INTO messages (conversation_id, seq, position, sender_user_id, sender_device_id, client_msg_id,
                                       content_kind, text, sent_at_ms, content_pb)
                 SELECT conversation_id, version, position, sender_user_id, sender_device_id, client_msg_id,
                        content_kind, text, sent_at_ms, content_pb
                 FROM i),
             md AS (
                 UPDATE media SET first_seq = f.seq
                 FROM (SELECT media_id, MIN(version) AS seq FROM i WHERE media_id IS NOT NULL GROUP BY media_id) f
                 WHERE media.media_id = f.media_id AND media.first_seq IS NULL),
             t AS (
                 UPDATE conversations c
                 SET last_seq = l.version, last_position = l.position,
                     last_activity_ms = GREATEST(c.last_activity_ms, l.recorded_at_ms)
                 FROM (SELECT DISTINCT ON (conversation_id) conversation_id, version, position, recorded_at_ms
                       FROM i ORDER BY conversation_id, position DESC) l
                 WHERE c.conversation_id = l.conversation_id)
             INSERT INTO feed (user_id, position)
             SELECT mb.user_id, i.position FROM i
             JOIN members mb ON mb.conversation_id = i.conversation_id AND mb.left_seq IS NULL
             ON CONFLICT DO NOTHING RETURNING user_id, position"
        )
    };
}
/// New messages: their event rows and their projection.
const SEND_MESSAGES: &str = messages_sql!(
    "e AS (
         INSERT INTO events (position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms)
         SELECT position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms FROM i),"
);
/// Messages already in the log (a rebuild): their projection only.
const PROJECT_MESSAGES: &str = messages_sql!("");
const SET_STREAM_VERSIONS: &str = "INSERT INTO streams (stream, version)
     SELECT * FROM unnest($1::text[], $2::bigint[])
     ON CONFLICT (stream) DO UPDATE SET version = GREATEST(streams.version, excluded.version)";
const TOUCH_CONVERSATION: &str = "UPDATE conversations SET last_seq = $2, last_position = $3,
            last_activity_ms = GREATEST(last_activity_ms, $4),
            changed_seq = CASE WHEN $5 THEN $2 ELSE changed_seq END
     WHERE conversation_id = $1";
const INSERT_MEMBER: &str = "INSERT INTO members (conversation_id, user_id, ordinal, role) VALUES ($1, $2, $3, $4)";

impl Plan {
    /// Adds a statement after everything planned so far (messages included).
    fn push(&mut self, sql: &'static str, params: Vec<Param>) -> usize {
        self.flush_messages();
        self.stmts.push(Stmt { sql, params });
        self.stmts.len() - 1
    }

    /// Turns the pending run of messages into its one statement.
    fn flush_messages(&mut self) {
        if self.messages.events.is_empty() {
            return;
        }
        let with_rows = self.messages.with_rows;
        let run = std::mem::replace(&mut self.messages, MessageRun { with_rows, ..MessageRun::default() });
        let at = self.stmts.len();
        for &e in &run.events {
            self.events[e].feed = Some(at);
        }
        self.stmts.push(Stmt {
            sql: if run.with_rows { SEND_MESSAGES } else { PROJECT_MESSAGES },
            params: vec![
                p(run.position),
                p(run.stream),
                p(run.version),
                p(run.event_id),
                p(run.event_type),
                p(run.schema_version),
                p(run.payload),
                p(run.recorded_at),
                p(run.conversation),
                p(run.sender_user),
                p(run.sender_device),
                p(run.client_msg_id),
                p(run.text),
                p(run.sent_at),
                p(run.content_kind),
                p(run.content_pb),
                p(run.media_id),
            ],
        });
    }

    /// The event's row (unless rebuilding from the log) and its projection.
    fn event(&mut self, rec: RecordedEvent, with_row: bool) {
        if let Event::MessageSent(m) = &rec.event {
            // The hot path: joins the run of messages (see `messages_sql`).
            if self.messages.with_rows != with_row {
                self.flush_messages();
                self.messages.with_rows = with_row;
            }
            let (ty, schema, payload) = codec::encode(&rec.event);
            let (kind, text, content_pb, media_id) = match &m.content {
                Content::Text(text) => ("text", text.clone(), None, None),
                Content::Mls { media, .. } => (
                    "mls",
                    String::new(),
                    Some(codec::encode_content(&m.content).encode_to_vec()),
                    media.map(|m| m.to_string()),
                ),
                Content::MlsCommit { .. } => {
                    ("mls", String::new(), Some(codec::encode_content(&m.content).encode_to_vec()), None)
                }
                Content::Erased => ("erased", String::new(), None, None),
                Content::Media(media) => (
                    "media",
                    media.caption.clone(),
                    Some(codec::encode_content(&m.content).encode_to_vec()),
                    Some(media.media_id.to_string()),
                ),
            };
            let run = &mut self.messages;
            run.events.push(self.events.len());
            run.position.push(rec.position as i64);
            run.stream.push(rec.stream.as_str().to_owned());
            run.version.push(rec.version as i64);
            run.event_id.push(rec.id.as_bytes().to_vec());
            run.event_type.push(ty);
            run.schema_version.push(schema as i32);
            run.payload.push(payload);
            run.recorded_at.push(rec.recorded_at.0 as i64);
            run.conversation.push(m.conversation_id.to_string());
            run.sender_user.push(m.sender_user_id.to_string());
            run.sender_device.push(m.sender_device_id.to_string());
            run.client_msg_id.push(m.client_msg_id.as_str().to_owned());
            run.text.push(text);
            run.sent_at.push(m.at.0 as i64);
            run.content_kind.push(kind);
            run.content_pb.push(content_pb);
            run.media_id.push(media_id);
            self.events.push(PlannedEvent { event: rec, feed: None, extra: None });
            return;
        }
        if with_row {
            let (ty, schema, payload) = codec::encode(&rec.event);
            self.push(
                INSERT_EVENT,
                vec![
                    p(rec.position as i64),
                    p(rec.stream.as_str().to_owned()),
                    p(rec.version as i64),
                    p(rec.id.as_bytes().to_vec()),
                    p(ty.to_owned()),
                    p(schema as i32),
                    p(payload),
                    p(rec.recorded_at.0 as i64),
                ],
            );
        }
        let (feed, extra) = self.project(&rec);
        self.events.push(PlannedEvent { event: rec, feed, extra });
    }

    fn stream_version(&mut self, stream: &str, version: u64) {
        let newest = self.versions.entry(stream.to_owned()).or_default();
        *newest = (*newest).max(version);
    }

    fn touch(&mut self, conv: &str, rec: &RecordedEvent) {
        self.push(
            TOUCH_CONVERSATION,
            vec![
                p(conv.to_owned()),
                p(rec.version as i64),
                p(rec.position as i64),
                p(rec.recorded_at.0 as i64),
                p(rec.event.changes_group()),
            ],
        );
    }

    /// A user's recovery codes become exactly `codes` (none: TOTP is off).
    fn recovery_codes(&mut self, user: UserId, codes: &[[u8; 32]]) {
        self.push("DELETE FROM recovery_codes WHERE user_id = $1", vec![p(user.to_string())]);
        if !codes.is_empty() {
            let hashes: Vec<Vec<u8>> = codes.iter().map(|c| c.to_vec()).collect();
            self.push(
                "INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])",
                vec![p(user.to_string()), p(hashes)],
            );
        }
    }

    fn conversation(
        &mut self,
        id: ConversationId,
        kind: ConversationKind,
        name: Option<&str>,
        members: &[(UserId, Role)],
        at: Millis,
        rec: &RecordedEvent,
    ) {
        let conv = id.to_string();
        self.push(
            "INSERT INTO conversations
                 (conversation_id, kind, name, created_at_ms, last_seq, last_position, last_activity_ms, changed_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $4, $5)",
            vec![
                p(conv.clone()),
                p(kind_to_str(kind)),
                p(name.map(str::to_owned)),
                p(at.0 as i64),
                p(rec.version as i64),
                p(rec.position as i64),
            ],
        );
        for (i, (user, role)) in members.iter().enumerate() {
            self.push(INSERT_MEMBER, vec![p(conv.clone()), p(user.to_string()), p(i as i64), p(role_to_str(*role))]);
        }
    }

    /// The read-model statements for one event (the same rules as the embedded
    /// store's `project`; the conformance suite holds the two to the same
    /// answers). Returns where its audience comes from.
    fn project(&mut self, rec: &RecordedEvent) -> (Option<usize>, Option<UserId>) {
        let version = rec.version as i64;
        let mut extra = None;
        match &rec.event {
            Event::UserRegistered(u) => {
                self.push(
                    "INSERT INTO users (user_id, email, display_name, password_hash, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        p(u.user_id.to_string()),
                        p(u.email.as_str().to_owned()),
                        p(u.display_name.clone()),
                        p(u.password_hash.clone()),
                        p(u.at.0 as i64),
                    ],
                );
                return (None, None);
            }
            Event::EmailClaimed { .. } => return (None, None),
            Event::MediaUploaded(m) => {
                self.push(
                    "INSERT INTO media (media_id, uploader_user_id, conversation_id, sha256, size, mime_type, file_name,
                                        width, height, uploaded_at_ms, preview_media_id, preview_of, duration_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                    vec![
                        p(m.media_id.to_string()),
                        p(m.uploader.to_string()),
                        p(m.conversation_id.to_string()),
                        p(m.sha256.to_vec()),
                        p(m.size as i64),
                        p(m.mime_type.clone()),
                        p(m.file_name.clone()),
                        p(m.width as i32),
                        p(m.height as i32),
                        p(m.at.0 as i64),
                        p(m.preview.map(|id| id.to_string())),
                        p(m.preview_of.map(|id| id.to_string())),
                        p(m.duration_ms as i64),
                    ],
                );
                return (None, None);
            }
            Event::MediaDiscarded { media_id, .. } => {
                self.push("DELETE FROM media WHERE media_id = $1", vec![p(media_id.to_string())]);
                return (None, None);
            }
            Event::BlobCollected { .. } | Event::BlobErased { .. } => return (None, None),
            Event::AccountOpened(a) => {
                self.push(
                    "INSERT INTO users (user_id, email, display_name, created_at_ms, email_verified_at_ms)
                     VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        p(a.user_id.to_string()),
                        p(a.email.as_ref().map(|e| e.as_str().to_owned())),
                        p(a.display_name.clone()),
                        p(a.at.0 as i64),
                        p(a.email_verified.then_some(a.at.0 as i64)),
                    ],
                );
                return (None, None);
            }
            Event::IdentityClaimed { .. } | Event::IdentityReleased { .. } | Event::PhoneReleased { .. } => {
                return (None, None)
            }
            Event::PhoneRemoved { user_id, phone, .. } => {
                self.push(
                    "UPDATE users SET phone = NULL WHERE user_id = $1 AND phone = $2",
                    vec![p(user_id.to_string()), p(phone.as_str().to_owned())],
                );
                return (None, None);
            }
            Event::IdentityLinked { user_id, identity, at } => {
                self.push(
                    "INSERT INTO identities (provider, subject, user_id, email, linked_at_ms) VALUES ($1, $2, $3, $4, $5)",
                    vec![
                        p(identity.provider.as_str()),
                        p(identity.subject.clone()),
                        p(user_id.to_string()),
                        p(identity.email.as_ref().map(|e| e.as_str().to_owned())),
                        p(at.0 as i64),
                    ],
                );
                return (None, None);
            }
            Event::IdentityUnlinked { user_id, provider, subject, .. } => {
                self.push(
                    "DELETE FROM identities WHERE provider = $1 AND subject = $2 AND user_id = $3",
                    vec![p(provider.as_str()), p(subject.clone()), p(user_id.to_string())],
                );
                return (None, None);
            }
            Event::SessionStarted(s) => {
                self.push(
                    "INSERT INTO sessions (token_hash, user_id, device_id, device_name, created_at_ms, method)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    vec![
                        p(s.token_hash.0.to_vec()),
                        p(s.user_id.to_string()),
                        p(s.device_id.to_string()),
                        p(s.device_name.clone()),
                        p(s.at.0 as i64),
                        p(s.method.as_str().to_owned()),
                    ],
                );
                return (None, None);
            }
            Event::PasswordChanged { user_id, password_hash, .. } => {
                self.push(
                    "UPDATE users SET password_hash = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(password_hash.clone())],
                );
                return (None, None);
            }
            Event::PhoneClaimed { .. } => return (None, None),
            Event::PhoneAdded { user_id, phone, .. } => {
                self.push(
                    "UPDATE users SET phone = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(phone.as_str().to_owned())],
                );
                return (None, None);
            }
            Event::EmailVerified { user_id, at, .. } => {
                self.push(
                    "UPDATE users SET email_verified_at_ms = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(at.0 as i64)],
                );
                return (None, None);
            }
            Event::TotpEnabled { user_id, sealed_secret, recovery_codes, at } => {
                self.push(
                    "UPDATE users SET totp_sealed_secret = $2, totp_enabled_at_ms = $3 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(sealed_secret.clone()), p(at.0 as i64)],
                );
                self.recovery_codes(*user_id, recovery_codes);
                return (None, None);
            }
            Event::RecoveryCodesIssued { user_id, recovery_codes, .. } => {
                self.recovery_codes(*user_id, recovery_codes);
                return (None, None);
            }
            Event::AdminGranted { user_id, .. } | Event::AdminRevoked { user_id, .. } => {
                let admin = matches!(rec.event, Event::AdminGranted { .. });
                self.push("UPDATE users SET admin = $2 WHERE user_id = $1", vec![p(user_id.to_string()), p(admin)]);
                return (None, None);
            }
            Event::AccountDisabled { user_id, at, .. } => {
                self.push(
                    "UPDATE users SET disabled_at_ms = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(at.0 as i64)],
                );
                return (None, None);
            }
            Event::AccountEnabled { user_id, .. } => {
                self.push("UPDATE users SET disabled_at_ms = NULL WHERE user_id = $1", vec![p(user_id.to_string())]);
                return (None, None);
            }
            // Read from its stream: no read model.
            Event::AdminActed(_) | Event::Redacted { .. } => return (None, None),
            Event::AccountErased { user_id, registered_at, at, .. } => {
                let id = user_id.to_string();
                self.push(
                    "INSERT INTO users (user_id, display_name, created_at_ms, hide_last_seen, push_show_text,
                                        disabled_at_ms, erased_at_ms)
                     VALUES ($1, '', $2, TRUE, FALSE, $3, $3)
                     ON CONFLICT (user_id) DO UPDATE SET email = NULL, display_name = '', password_hash = NULL,
                         phone = NULL, email_verified_at_ms = NULL, totp_sealed_secret = NULL,
                         totp_enabled_at_ms = NULL, admin = FALSE, hide_last_seen = TRUE, push_show_text = FALSE,
                         disabled_at_ms = excluded.disabled_at_ms, erased_at_ms = excluded.erased_at_ms",
                    vec![p(id.clone()), p(registered_at.0 as i64), p(at.0 as i64)],
                );
                for sql in crate::store::erasure::ERASED_ROWS_PG {
                    self.push(sql, vec![p(id.clone())]);
                }
                let feed = self.push(
                    "INSERT INTO feed (user_id, position)
                     SELECT DISTINCT o.user_id, $2::bigint FROM members m JOIN members o ON o.conversation_id = m.conversation_id
                     WHERE m.user_id = $1 AND o.user_id <> $1 AND o.left_seq IS NULL
                     ON CONFLICT DO NOTHING RETURNING user_id, position",
                    vec![p(id), p(rec.position as i64)],
                );
                return (Some(feed), None);
            }
            Event::TotpDisabled { user_id, .. } => {
                self.push(
                    "UPDATE users SET totp_sealed_secret = NULL, totp_enabled_at_ms = NULL WHERE user_id = $1",
                    vec![p(user_id.to_string())],
                );
                self.recovery_codes(*user_id, &[]);
                return (None, None);
            }
            Event::RecoveryCodeUsed { user_id, code_hash, at } => {
                self.push(
                    "UPDATE recovery_codes SET used_at_ms = $3
                     WHERE user_id = $1 AND code_hash = $2 AND used_at_ms IS NULL",
                    vec![p(user_id.to_string()), p(code_hash.to_vec()), p(at.0 as i64)],
                );
                return (None, None);
            }
            Event::SessionRevoked { token_hash, at, .. } => {
                self.push(
                    "UPDATE sessions SET revoked_at_ms = $2 WHERE token_hash = $1 AND revoked_at_ms IS NULL",
                    vec![p(token_hash.0.to_vec()), p(at.0 as i64)],
                );
                // Signing out removes the device's push subscription.
                self.push(
                    "DELETE FROM push_subscriptions
                     WHERE device_id IN (SELECT device_id FROM sessions WHERE token_hash = $1)",
                    vec![p(token_hash.0.to_vec())],
                );
                // And its MLS signature key.
                self.push(
                    "DELETE FROM device_keys WHERE device_id IN (SELECT device_id FROM sessions WHERE token_hash = $1)",
                    vec![p(token_hash.0.to_vec())],
                );
                return (None, None);
            }
            Event::ConversationEncrypted { conversation_id, .. } => {
                let conv = conversation_id.to_string();
                self.push("UPDATE conversations SET e2ee = TRUE WHERE conversation_id = $1", vec![p(conv.clone())]);
                self.touch(&conv, rec);
                return (None, None);
            }
            // Only the `mls:` stream's version counts (one commit per epoch).
            Event::MlsEpochClosed { .. } => return (None, None),
            Event::DeviceKeyRegistered { user_id, device_id, signature_key, at } => {
                self.push(
                    "INSERT INTO device_keys (device_id, user_id, signature_key, registered_at_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id,
                         signature_key = excluded.signature_key, registered_at_ms = excluded.registered_at_ms",
                    vec![p(device_id.to_string()), p(user_id.to_string()), p(signature_key.clone()), p(at.0 as i64)],
                );
                return (None, None);
            }
            Event::PushSubscribed(sub) => {
                self.push(
                    "INSERT INTO push_subscriptions (device_id, user_id, endpoint, p256dh, auth, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id, endpoint = excluded.endpoint,
                         p256dh = excluded.p256dh, auth = excluded.auth, created_at_ms = excluded.created_at_ms",
                    vec![
                        p(sub.device_id.to_string()),
                        p(sub.user_id.to_string()),
                        p(sub.endpoint.clone()),
                        p(sub.p256dh.clone()),
                        p(sub.auth.clone()),
                        p(sub.at.0 as i64),
                    ],
                );
                return (None, None);
            }
            Event::PushUnsubscribed { device_id, endpoint, .. } => {
                self.push(
                    "DELETE FROM push_subscriptions WHERE device_id = $1 AND endpoint = $2",
                    vec![p(device_id.to_string()), p(endpoint.clone())],
                );
                return (None, None);
            }
            Event::PushPreviewsSet { user_id, show_text, .. } => {
                self.push(
                    "UPDATE users SET push_show_text = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(*show_text)],
                );
                return (None, None);
            }
            Event::ConversationMuted { user_id, conversation_id, until, .. } => {
                self.push(
                    "INSERT INTO push_mutes (user_id, conversation_id, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, conversation_id) DO UPDATE SET until_ms = excluded.until_ms",
                    vec![p(user_id.to_string()), p(conversation_id.to_string()), p(until.map(|u| u.0 as i64))],
                );
                return (None, None);
            }
            Event::ConversationUnmuted { user_id, conversation_id, .. } => {
                self.push(
                    "DELETE FROM push_mutes WHERE user_id = $1 AND conversation_id = $2",
                    vec![p(user_id.to_string()), p(conversation_id.to_string())],
                );
                return (None, None);
            }
            Event::PrivacyChanged { user_id, hide_last_seen, .. } => {
                self.push(
                    "UPDATE users SET hide_last_seen = $2 WHERE user_id = $1",
                    vec![p(user_id.to_string()), p(*hide_last_seen)],
                );
                return (None, None);
            }
            Event::DirectConversationStarted { conversation_id, members, at } => {
                let all: Vec<_> = members.iter().map(|m| (*m, Role::Member)).collect();
                self.conversation(*conversation_id, ConversationKind::Direct, None, &all, *at, rec);
            }
            Event::GroupCreated { conversation_id, name, members, at, .. } => {
                self.conversation(*conversation_id, ConversationKind::Group, Some(name), members, *at, rec);
            }
            Event::MembersAdded { conversation_id, members, .. } => {
                let conv = conversation_id.to_string();
                for (user, role) in members {
                    self.push(
                        "INSERT INTO members (conversation_id, user_id, ordinal, role, left_seq)
                         VALUES ($1, $2, (SELECT COALESCE(MAX(ordinal), -1) + 1 FROM members WHERE conversation_id = $1),
                                 $3, NULL)
                         ON CONFLICT (conversation_id, user_id) DO UPDATE
                         SET role = excluded.role, left_seq = NULL, ordinal = excluded.ordinal",
                        vec![p(conv.clone()), p(user.to_string()), p(role_to_str(*role))],
                    );
                }
                self.touch(&conv, rec);
            }
            Event::MemberRemoved { conversation_id, user, .. } | Event::MemberLeft { conversation_id, user, .. } => {
                let conv = conversation_id.to_string();
                self.push(
                    "UPDATE members SET left_seq = $3 WHERE conversation_id = $1 AND user_id = $2",
                    vec![p(conv.clone()), p(user.to_string()), p(version)],
                );
                self.touch(&conv, rec);
                // The person who left (or was removed) learns of it too.
                extra = Some(*user);
            }
            Event::RoleChanged { conversation_id, user, role, .. } => {
                let conv = conversation_id.to_string();
                self.push(
                    "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
                    vec![p(conv.clone()), p(user.to_string()), p(role_to_str(*role))],
                );
                self.touch(&conv, rec);
            }
            Event::GroupRenamed { conversation_id, name, .. } => {
                let conv = conversation_id.to_string();
                self.push(
                    "UPDATE conversations SET name = $2 WHERE conversation_id = $1",
                    vec![p(conv.clone()), p(name.clone())],
                );
                self.touch(&conv, rec);
            }
            Event::MessageSent(_) => unreachable!("messages are planned in runs (`Plan::event`)"),
            Event::GroupDeleted { conversation_id, .. } => {
                let conv = conversation_id.to_string();
                self.touch(&conv, rec);
                // Its members learn of it, then are members no more.
                let feed = self.push(
                    "INSERT INTO feed (user_id, position)
                     SELECT user_id, $2 FROM members WHERE conversation_id = $1 AND left_seq IS NULL
                     ON CONFLICT DO NOTHING RETURNING user_id, position",
                    vec![p(conv.clone()), p(rec.position as i64)],
                );
                self.push(
                    "UPDATE members SET left_seq = $2 WHERE conversation_id = $1 AND left_seq IS NULL",
                    vec![p(conv), p(version)],
                );
                return (Some(feed), None);
            }
            Event::RetentionSet { conversation_id, max_age_secs, .. } => {
                self.push(
                    "UPDATE conversations SET retention_secs = $2 WHERE conversation_id = $1",
                    vec![p(conversation_id.to_string()), p(*max_age_secs as i64)],
                );
            }
            Event::MessagesExpired { conversation_id, .. } => {
                for sql in crate::store::erasure::EXPIRED_MEDIA_PG {
                    self.push(sql, vec![p(conversation_id.to_string())]);
                }
            }
            Event::DeliveredUpTo { conversation_id, user, device, seq, .. } => {
                let (conv, user, seq) = (conversation_id.to_string(), user.to_string(), seq.0 as i64);
                self.push(
                    "INSERT INTO device_receipts (conversation_id, device_id, user_id, delivered_seq)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (conversation_id, device_id) DO UPDATE
                     SET delivered_seq = GREATEST(device_receipts.delivered_seq, excluded.delivered_seq)",
                    vec![p(conv.clone()), p(device.to_string()), p(user.clone()), p(seq)],
                );
                self.push(
                    "INSERT INTO receipts (conversation_id, user_id, delivered_seq) VALUES ($1, $2, $3)
                     ON CONFLICT (conversation_id, user_id) DO UPDATE
                     SET delivered_seq = GREATEST(receipts.delivered_seq, excluded.delivered_seq)",
                    vec![p(conv), p(user), p(seq)],
                );
            }
            Event::ReadUpTo { conversation_id, user, seq, .. } => {
                self.push(
                    "INSERT INTO receipts (conversation_id, user_id, read_seq) VALUES ($1, $2, $3)
                     ON CONFLICT (conversation_id, user_id) DO UPDATE
                     SET read_seq = GREATEST(receipts.read_seq, excluded.read_seq)",
                    vec![p(conversation_id.to_string()), p(user.to_string()), p(seq.0 as i64)],
                );
            }
        }
        let conv = rec.event.conversation_id().expect("every other event belongs to a conversation").to_string();
        let position = rec.position as i64;
        // Into the feed of every current member (the audience)…
        let feed = self.push(
            "INSERT INTO feed (user_id, position)
             SELECT user_id, $2 FROM members WHERE conversation_id = $1 AND left_seq IS NULL
             ON CONFLICT DO NOTHING RETURNING user_id, position",
            vec![p(conv), p(position)],
        );
        // …and of whoever just left.
        if let Some(user) = extra {
            self.push(
                "INSERT INTO feed (user_id, position) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                vec![p(user.to_string()), p(position)],
            );
        }
        (Some(feed), extra)
    }

    /// Sends every statement in order without waiting in between, then
    /// collects the answers; returns the planned events with their audiences.
    async fn run(self, client: &Conn) -> Result<Vec<CommittedEvent>, StoreError> {
        self.run_then(client, false).await.map_err(Failure::error)
    }

    /// [`Plan::run`], with the transaction's COMMIT sent right behind the
    /// statements when `commit` (one round trip for both). A statement that
    /// failed aborted the transaction, so the COMMIT then rolls it back:
    /// `BeforeCommit`. A failed COMMIT leaves the outcome unknown: `AtCommit`.
    async fn run_then(mut self, client: &Conn, commit: bool) -> Result<Vec<CommittedEvent>, Failure> {
        let before = Failure::BeforeCommit;
        self.flush_messages();
        if !self.versions.is_empty() {
            let (streams, versions): (Vec<String>, Vec<i64>) =
                std::mem::take(&mut self.versions).into_iter().map(|(s, v)| (s, v as i64)).unzip();
            self.stmts.push(Stmt { sql: SET_STREAM_VERSIONS, params: vec![p(streams), p(versions)] });
        }
        let mut prepared = HashMap::new();
        for stmt in &self.stmts {
            if !prepared.contains_key(stmt.sql) {
                prepared.insert(stmt.sql, client.prepare_cached(stmt.sql).await.map_err(|e| before(e.into()))?);
            }
        }
        type Pending<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;
        let mut answers: Vec<Option<Result<Vec<Row>, tokio_postgres::Error>>> =
            (0..self.stmts.len()).map(|_| None).collect();
        let mut waiting: Vec<(usize, Pending<'_>)> = Vec::with_capacity(self.stmts.len());
        for (i, stmt) in self.stmts.iter().enumerate() {
            let statement = &prepared[stmt.sql];
            let mut fut: Pending<'_> = Box::pin(async move {
                let params: Vec<&(dyn ToSql + Sync)> = stmt.params.iter().map(|b| &**b as _).collect();
                client.query(statement, &params).await
            });
            // The first poll hands the request to the connection: polling in
            // order is what keeps the server's order equal to this plan's.
            match futures::poll!(fut.as_mut()) {
                Poll::Ready(answer) => answers[i] = Some(answer),
                Poll::Pending => waiting.push((i, fut)),
            }
        }
        let commit_sent = async {
            if commit {
                client.batch_execute("COMMIT").await
            } else {
                Ok(())
            }
        };
        let (answered, committed) = futures::join!(
            futures::future::join_all(waiting.into_iter().map(|(i, f)| async move { (i, f.await) })),
            commit_sent
        );
        for (i, answer) in answered {
            answers[i] = Some(answer);
        }
        committed.map_err(|e| Failure::AtCommit(e.into()))?;
        let mut rows = Vec::with_capacity(answers.len());
        for answer in answers {
            rows.push(answer.expect("every statement answered").map_err(|e| before(e.into()))?);
        }
        // Feed rows (user, position) by position: one statement may carry many events' rows.
        let mut feeds: HashMap<i64, Vec<UserId>> = HashMap::new();
        let feed_stmts: HashSet<usize> = self.events.iter().filter_map(|e| e.feed).collect();
        // (Past a successful COMMIT a failure no longer means "nothing stored".)
        let late = |e| if commit { Failure::AtCommit(e) } else { Failure::BeforeCommit(e) };
        for row in feed_stmts.into_iter().flat_map(|i| &rows[i]) {
            feeds.entry(row.get(1)).or_default().push(UserId(parse_uuid(row.get(0)).map_err(late)?));
        }
        self.events
            .into_iter()
            .map(|planned| {
                let mut audience = match planned.feed {
                    Some(_) => feeds.remove(&(planned.event.position as i64)).unwrap_or_default(),
                    None => Vec::new(),
                };
                if let Some(u) = planned.extra.filter(|u| !audience.contains(u)) {
                    audience.push(u);
                }
                Ok(CommittedEvent { event: planned.event, audience })
            })
            .collect()
    }
}

/// What a wave's reads answered, for all its appends at once.
#[derive(Default)]
struct WaveChecks {
    /// Events already in the log, by id.
    existing: HashMap<Uuid, RecordedEvent>,
    /// Stored stream versions (absent: no stream).
    versions: HashMap<String, u64>,
    /// (conversation, user) pairs that are current members.
    active: HashSet<(String, String)>,
    /// Conversations' last changes of shape (`changed_seq`).
    changed: HashMap<String, u64>,
}

/// Reads every check of the wave's appends: three queries, sent together.
async fn check_wave(client: &Conn, wave: &[WriteJob]) -> Result<WaveChecks, StoreError> {
    let appends: Vec<&StreamAppend> = wave
        .iter()
        .filter_map(|j| match &j.work {
            Work::Append(a) | Work::Rewrite(_, a) => Some(a.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let ids: Vec<&[u8]> = appends.iter().flat_map(|a| a.events.iter()).map(|e| e.id.as_bytes().as_slice()).collect();
    let streams: Vec<&str> = appends.iter().map(|a| a.stream.as_str()).collect();
    let (mut conversations, mut users, mut shaped) = (Vec::new(), Vec::new(), Vec::new());
    for pre in appends.iter().filter_map(|a| a.precondition) {
        match pre {
            Precondition::ActiveMember { conversation, user } => {
                conversations.push(conversation.to_string());
                users.push(user.to_string());
            }
            Precondition::GroupUnchanged { conversation, .. } => shaped.push(conversation.to_string()),
        }
    }
    // Unnamed statements, planned for these very arrays each time: a generic
    // plan cached while the log was small would scan `events` and compare
    // every row with every id (measured: 80 % of the writer's server time).
    let by_id = format!("{SELECT_EVENT} WHERE event_id = ANY($1)");
    type Typed<'a> = [(&'a (dyn ToSql + Sync), Type)];
    let id_params: &Typed = &[(&ids, Type::BYTEA_ARRAY)];
    let stream_params: &Typed = &[(&streams, Type::TEXT_ARRAY)];
    let member_params: &Typed = &[(&conversations, Type::TEXT_ARRAY), (&users, Type::TEXT_ARRAY)];
    let (existing, versions, active, changed) = futures::try_join!(
        client.query_typed(&by_id, id_params),
        client.query_typed("SELECT stream, version FROM streams WHERE stream = ANY($1)", stream_params),
        client.query_typed(
            "SELECT m.conversation_id, m.user_id FROM members m
             JOIN unnest($1::text[], $2::text[]) AS q(conversation_id, user_id)
               ON m.conversation_id = q.conversation_id AND m.user_id = q.user_id
             WHERE m.left_seq IS NULL",
            member_params,
        ),
        async {
            if shaped.is_empty() {
                return Ok(Vec::new());
            }
            client
                .query_typed(
                    "SELECT conversation_id, changed_seq FROM conversations WHERE conversation_id = ANY($1)",
                    &[(&shaped, Type::TEXT_ARRAY)],
                )
                .await
        }
    )?;
    let mut checks = WaveChecks::default();
    for row in &existing {
        let rec = row_to_event(row)?;
        checks.existing.insert(rec.id, rec);
    }
    for row in &versions {
        checks.versions.insert(row.get(0), row.get::<_, i64>(1) as u64);
    }
    for row in &active {
        checks.active.insert((row.get(0), row.get(1)));
    }
    for row in &changed {
        checks.changed.insert(row.get(0), row.get::<_, i64>(1) as u64);
    }
    Ok(checks)
}

/// What the earlier appends of a wave wrote, which the wave's reads cannot see.
#[derive(Default)]
struct Overlay {
    versions: HashMap<String, u64>,
    events: HashMap<Uuid, RecordedEvent>,
    /// Conversations whose shape changed: a precondition on them is re-read.
    reshaped: HashSet<ConversationId>,
}

/// Decides one append job against the wave's checks and the overlay; plans its rows.
fn decide(
    appends: &[StreamAppend],
    checks: &WaveChecks,
    overlay: &mut Overlay,
    plan: &mut Plan,
    recorded_at: Millis,
    next: &mut Position,
) -> Result<AppendOutcome, AppendError> {
    let mut existing: Vec<RecordedEvent> = appends
        .iter()
        .flat_map(|a| a.events.iter())
        .filter_map(|e| checks.existing.get(&e.id).or_else(|| overlay.events.get(&e.id)).cloned())
        .collect();
    if !existing.is_empty() {
        existing.sort_by_key(|e| e.position);
        return Ok(AppendOutcome::AlreadyStored(existing));
    }
    check_distinct_streams(appends)?;
    let mut currents = Vec::with_capacity(appends.len());
    for append in appends {
        if let Some(pre) = append.precondition {
            let holds = match pre {
                Precondition::ActiveMember { conversation, user } => {
                    checks.active.contains(&(conversation.to_string(), user.to_string()))
                }
                Precondition::GroupUnchanged { conversation, since } => {
                    checks.changed.get(&conversation.to_string()) == Some(&since.0)
                }
            };
            if !holds {
                return Err(AppendError::PreconditionFailed(pre));
            }
        }
        let stream = append.stream.as_str();
        let current = overlay.versions.get(stream).or_else(|| checks.versions.get(stream)).copied().unwrap_or(0);
        append.check_version(current)?;
        currents.push(current);
    }
    let mut recorded = Vec::new();
    for (append, current) in appends.iter().zip(currents) {
        let mut version = current;
        for new in &append.events {
            version += 1;
            *next += 1;
            let rec = RecordedEvent {
                position: *next,
                stream: append.stream.clone(),
                version,
                id: new.id,
                recorded_at,
                event: new.event.clone(),
            };
            if rec.event.changes_group() {
                overlay.reshaped.extend(rec.event.conversation_id());
            }
            overlay.events.insert(rec.id, rec.clone());
            plan.event(rec.clone(), true);
            recorded.push(rec);
        }
        plan.stream_version(append.stream.as_str(), version);
        overlay.versions.insert(append.stream.as_str().to_owned(), version);
    }
    Ok(AppendOutcome::Appended(recorded))
}

/// Whether an append's precondition may have been changed by the wave so far.
fn stale_precondition(appends: &[StreamAppend], overlay: &Overlay) -> bool {
    appends.iter().any(|a| match a.precondition {
        Some(Precondition::ActiveMember { conversation, .. } | Precondition::GroupUnchanged { conversation, .. }) => {
            overlay.reshaped.contains(&conversation)
        }
        None => false,
    })
}

/// A group commit's result: each job's answer, everything the batch committed
/// (in position order), and how long the round trip carrying COMMIT took.
pub(super) struct Written {
    pub results: Vec<Result<AppendOutcome, AppendError>>,
    pub committed: Vec<CommittedEvent>,
    pub commit_took: Duration,
}

/// The wave starting at job `i` (appends and last-seen updates up to the next
/// import or rebuild), if job `i` begins one.
fn wave_at(jobs: &[WriteJob], i: usize) -> Option<std::ops::Range<usize>> {
    let alone = |j: &WriteJob| matches!(j.work, Work::Import(_) | Work::Rebuild | Work::Rewrite(..));
    if alone(jobs.get(i)?) {
        return None;
    }
    let end = jobs[i..].iter().position(alone).map_or(jobs.len(), |k| i + k);
    Some(i..end)
}

/// Writes a batch of jobs in one transaction on `client`, and commits it. A
/// refused job has written nothing; a storage failure fails it all.
///
/// Round trips: the first carries BEGIN, the log lock with the head
/// (`natter_begin_write`) and the first wave's checks (the server runs them in
/// that order, so the checks see everything committed before the lock was
/// granted); the last carries the last wave's writes and COMMIT. A batch of
/// appends is two round trips.
pub(super) async fn write_batch(client: &Conn, jobs: &[WriteJob], recorded_at: Millis) -> Result<Written, Failure> {
    let before = |e: StoreError| Failure::BeforeCommit(e);
    let pg = |e: tokio_postgres::Error| Failure::BeforeCommit(e.into());
    let begin_write = client.prepare_cached("SELECT natter_begin_write($1)").await.map_err(pg)?;
    let first = wave_at(jobs, 0);
    let (began, head, first_checks) =
        futures::join!(client.batch_execute("BEGIN"), client.query_one(&begin_write, &[&LOG_LOCK]), async {
            match &first {
                Some(wave) => check_wave(client, &jobs[wave.clone()]).await.map(Some),
                None => Ok(None),
            }
        });
    began.map_err(pg)?;
    let mut next = head.map_err(pg)?.get::<_, i64>(0) as u64;
    let mut first_checks = first_checks.map_err(before)?;

    let mut results: Vec<Option<Result<AppendOutcome, AppendError>>> = (0..jobs.len()).map(|_| None).collect();
    let mut committed = Vec::new();
    let mut commit_took = None;
    let done = || Some(Ok(AppendOutcome::Appended(Vec::new())));
    let mut i = 0;
    while i < jobs.len() {
        let Some(wave) = wave_at(jobs, i) else {
            match &jobs[i].work {
                Work::Import(events) => committed.extend(import(client, events, &mut next).await.map_err(before)?),
                Work::Rebuild => rebuild(client).await.map_err(before)?,
                Work::Rewrite(rewrite, appends) => {
                    let (outcome, events) =
                        rewrite_then_append(client, &jobs[i], rewrite, appends, recorded_at, &mut next).await?;
                    committed.extend(events);
                    results[i] = Some(outcome);
                    i += 1;
                    continue;
                }
                Work::Append(_) | Work::LastSeen(..) => unreachable!("these make waves"),
            }
            results[i] = done();
            i += 1;
            continue;
        };
        let checks = match first_checks.take() {
            Some(checks) => checks,
            None => check_wave(client, &jobs[wave.clone()]).await.map_err(before)?,
        };
        let mut plan = Plan::default();
        let mut overlay = Overlay::default();
        let mut decided = i;
        for (k, job) in jobs[wave].iter().enumerate() {
            match &job.work {
                Work::LastSeen(user, at) => {
                    plan.push(
                        // Not for an erased account (its last connection may close after).
                        "INSERT INTO last_seen (user_id, last_seen_ms)
                         SELECT $1::text, $2::bigint WHERE NOT EXISTS
                             (SELECT 1 FROM users WHERE user_id = $1 AND erased_at_ms IS NOT NULL)
                         ON CONFLICT (user_id) DO UPDATE
                         SET last_seen_ms = GREATEST(last_seen.last_seen_ms, excluded.last_seen_ms)",
                        vec![p(user.to_string()), p(at.0 as i64)],
                    );
                    results[i + k] = done();
                }
                Work::Append(appends) => {
                    if stale_precondition(appends, &overlay) {
                        break;
                    }
                    let outcome = decide(appends, &checks, &mut overlay, &mut plan, recorded_at, &mut next);
                    if let Err(AppendError::Store(e)) = outcome {
                        return Err(before(e));
                    }
                    results[i + k] = Some(outcome);
                }
                Work::Import(_) | Work::Rebuild | Work::Rewrite(..) => unreachable!("a wave ends before these"),
            }
            decided = i + k + 1;
        }
        let last = decided == jobs.len();
        let sent = Instant::now();
        committed.extend(plan.run_then(client, last).await?);
        if last {
            commit_took = Some(sent.elapsed());
        }
        i = decided;
    }
    let commit_took = match commit_took {
        Some(took) => took,
        None => {
            // The batch ended with an import or a rebuild: COMMIT on its own.
            let sent = Instant::now();
            client.batch_execute("COMMIT").await.map_err(|e| Failure::AtCommit(e.into()))?;
            sent.elapsed()
        }
    };
    let results = results.into_iter().map(|r| r.expect("every job decided")).collect();
    Ok(Written { results, committed, commit_took })
}

/// An erasure's job: the log rewritten in place, then its appends (checked
/// as a wave of one). Refused appends undo the rewrite (a savepoint), so the
/// rest of the batch commits without either.
async fn rewrite_then_append(
    client: &Conn,
    job: &WriteJob,
    rewrite: &LogRewrite,
    appends: &[StreamAppend],
    recorded_at: Millis,
    next: &mut Position,
) -> Result<(Result<AppendOutcome, AppendError>, Vec<CommittedEvent>), Failure> {
    let before = |e: StoreError| Failure::BeforeCommit(e);
    client.batch_execute("SAVEPOINT natter_rewrite").await.map_err(|e| before(e.into()))?;
    for (from, to) in &rewrite.renames {
        query(client, "UPDATE events SET stream = $2 WHERE stream = $1", &[&from.as_str(), &to.as_str()])
            .await
            .map_err(|e| before(e.into()))?;
        query(client, "UPDATE streams SET stream = $2 WHERE stream = $1", &[&from.as_str(), &to.as_str()])
            .await
            .map_err(|e| before(e.into()))?;
    }
    let update = client
        .prepare_cached(
            "UPDATE events SET event_type = $2, schema_version = $3, payload = $4 WHERE position = $1 RETURNING position",
        )
        .await
        .map_err(|e| before(e.into()))?;
    for (position, event) in &rewrite.events {
        let (ty, schema, payload) = codec::encode(event);
        let rows = client
            .query(&update, &[&(*position as i64), &ty, &(schema as i32), &payload])
            .await
            .map_err(|e| before(e.into()))?;
        if rows.len() != 1 {
            return Err(before(StoreError::Database(format!("no event at position {position} to rewrite"))));
        }
        if crate::store::erasure::erases_message(event) {
            query(client, crate::store::erasure::ERASE_MESSAGE_ROW_PG, &[&(*position as i64)])
                .await
                .map_err(|e| before(e.into()))?;
        }
    }
    let checks = check_wave(client, std::slice::from_ref(job)).await.map_err(before)?;
    let (mut plan, mut overlay, start) = (Plan::default(), Overlay::default(), *next);
    let outcome = decide(appends, &checks, &mut overlay, &mut plan, recorded_at, next);
    match outcome {
        Ok(outcome) => Ok((Ok(outcome), plan.run(client).await.map_err(before)?)),
        Err(AppendError::Store(e)) => Err(before(e)),
        Err(refused) => {
            *next = start;
            client.batch_execute("ROLLBACK TO SAVEPOINT natter_rewrite").await.map_err(|e| before(e.into()))?;
            Ok((Err(refused), Vec::new()))
        }
    }
}

/// Writes another log's events as they are (positions, versions, ids, times)
/// and projects them.
async fn import(
    client: &Conn,
    events: &[RecordedEvent],
    next: &mut Position,
) -> Result<Vec<CommittedEvent>, StoreError> {
    let mut plan = Plan::default();
    for rec in events {
        if rec.position <= *next {
            return Err(StoreError::Database(format!(
                "imported position {} does not follow this log's {next}",
                rec.position
            )));
        }
        *next = rec.position;
        plan.event(rec.clone(), true);
        plan.stream_version(rec.stream.as_str(), rec.version);
    }
    plan.run(client).await
}

async fn rebuild(client: &Conn) -> Result<(), StoreError> {
    for table in crate::store::READ_MODELS {
        client.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    let mut after = 0i64;
    loop {
        let rows =
            query(client, &format!("{SELECT_EVENT} WHERE position > $1 ORDER BY position LIMIT 1000"), &[&after])
                .await?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        let mut plan = Plan::default();
        for row in &rows {
            plan.event(row_to_event(row)?, false);
        }
        plan.run(client).await?;
    }
    Ok(())
}
