//! Erasing an account: how the log forgets.
//!
//! natter erases by an audited rewrite of the log, in one transaction with the
//! `AccountErased` event that records it (not by crypto-shredding: the search
//! index and the read models hold plaintext anyway, and a rewrite leaves no
//! key to lose). [`plan`] reads the whole log and decides, event by event:
//!
//! - every event of the user's own stream (`user:<id>`: profile, credentials,
//!   sessions, push subscriptions, keys) becomes `Redacted`;
//! - in the streams of the emails, phone numbers and external identities the
//!   user ever held, the user's claims and releases become `Redacted`, and a
//!   stream the user holds last is renamed `erased:<random uuid>` (the name is
//!   the address; the address is free again);
//! - the user's messages keep their place (conversation, seq, sender id,
//!   time) with `Content::Erased` instead of the text, file or ciphertext
//!   (MLS commits stay: the group's other members need them to follow the
//!   epochs);
//! - the user's uploads (`MediaUploaded`) become `Redacted`, and their blobs
//!   are collected when nothing else refers to the same bytes;
//! - the free-text detail of admin actions on the user is cleared.
//!
//! Positions, stream versions and every other user's events stay as they
//! were, so cursors, seqs and `natter-admin rebuild` keep working: replaying
//! the rewritten log ends in the same tombstone `AccountErased` leaves.
//! After the commit the backend makes the old bytes unrecoverable as far as
//! it can (SQLite: `secure_delete` zeroes freed space, and a truncating WAL
//! checkpoint; PostgreSQL: see ARCHITECTURE.md, dead tuples wait for VACUUM).

use std::collections::HashSet;

use uuid::Uuid;

use super::{
    AppendError, ExpectedVersion, NewEvent, Position, RecordedEvent, Store, StoreError, StreamAppend, StreamName,
};
use crate::domain::{Content, Event, MessageSent, Millis, TokenHash, UserId};

/// Read-model rows an erased account leaves nothing of (`?1`: the user id).
pub(crate) const ERASED_ROWS: &[&str] = &[
    "DELETE FROM sessions WHERE user_id = ?1",
    "DELETE FROM recovery_codes WHERE user_id = ?1",
    "DELETE FROM identities WHERE user_id = ?1",
    "DELETE FROM push_subscriptions WHERE user_id = ?1",
    "DELETE FROM push_mutes WHERE user_id = ?1",
    "DELETE FROM device_keys WHERE user_id = ?1",
    "DELETE FROM last_seen WHERE user_id = ?1",
    "DELETE FROM feed WHERE user_id = ?1",
    "DELETE FROM media WHERE uploader_user_id = ?1",
];

/// [`ERASED_ROWS`] for PostgreSQL (`$1`).
pub(crate) const ERASED_ROWS_PG: &[&str] = &[
    "DELETE FROM sessions WHERE user_id = $1",
    "DELETE FROM recovery_codes WHERE user_id = $1",
    "DELETE FROM identities WHERE user_id = $1",
    "DELETE FROM push_subscriptions WHERE user_id = $1",
    "DELETE FROM push_mutes WHERE user_id = $1",
    "DELETE FROM device_keys WHERE user_id = $1",
    "DELETE FROM last_seen WHERE user_id = $1",
    "DELETE FROM feed WHERE user_id = $1",
    "DELETE FROM media WHERE uploader_user_id = $1",
];

/// A message's read-model row, when its event was rewritten to erased
/// content (`?1`: the event's position).
pub(crate) const ERASE_MESSAGE_ROW: &str =
    "UPDATE messages SET content_kind = 'erased', text = NULL, content_pb = NULL WHERE position = ?1";
pub(crate) const ERASE_MESSAGE_ROW_PG: &str =
    "UPDATE messages SET content_kind = 'erased', text = NULL, content_pb = NULL WHERE position = $1";

/// Whether a rewritten event erases a message's content (its row follows).
pub(crate) fn erases_message(event: &Event) -> bool {
    matches!(event, Event::MessageSent(m) if m.content == Content::Erased)
}

/// `MessagesExpired`: the media of the conversation's erased messages, their
/// previews first (`?1`: the conversation).
pub(crate) const EXPIRED_MEDIA: &[&str] = &[
    "DELETE FROM media WHERE preview_of IN (SELECT media_id FROM media WHERE conversation_id = ?1
         AND first_seq IN (SELECT seq FROM messages WHERE conversation_id = ?1 AND content_kind = 'erased'))",
    "DELETE FROM media WHERE conversation_id = ?1
         AND first_seq IN (SELECT seq FROM messages WHERE conversation_id = ?1 AND content_kind = 'erased')",
];
pub(crate) const EXPIRED_MEDIA_PG: &[&str] = &[
    "DELETE FROM media WHERE preview_of IN (SELECT media_id FROM media WHERE conversation_id = $1
         AND first_seq IN (SELECT seq FROM messages WHERE conversation_id = $1 AND content_kind = 'erased'))",
    "DELETE FROM media WHERE conversation_id = $1
         AND first_seq IN (SELECT seq FROM messages WHERE conversation_id = $1 AND content_kind = 'erased')",
];

/// The audit action of an erasure (its detail says how much went, and stays).
pub const ERASE_ACTION: &str = "delete";

/// Who shares a conversation with `?1` now: told of the erasure.
pub(crate) const SELECT_CONTACTS: &str = "SELECT DISTINCT o.user_id FROM members m
     JOIN members o ON o.conversation_id = m.conversation_id
     WHERE m.user_id = ?1 AND o.user_id <> ?1 AND o.left_seq IS NULL";

/// Events rewritten in place and streams renamed, in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRewrite {
    /// `(from, to)`: every event of `from` moves to `to`, its versions kept.
    pub renames: Vec<(StreamName, StreamName)>,
    /// The new payload of the event at each position (its stream, version,
    /// id and time stay).
    pub events: Vec<(Position, Event)>,
}

impl LogRewrite {
    pub fn is_empty(&self) -> bool {
        self.renames.is_empty() && self.events.is_empty()
    }
}

/// What erasing one account rewrites, read from the log up to `through`.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub rewrite: LogRewrite,
    /// The user stream's version when it was read: the erasure appends there.
    pub user_version: u64,
    /// The blobs of the user's uploads (collected afterwards when unreferenced).
    pub blobs: Vec<[u8; 32]>,
    /// Messages whose content goes.
    pub messages: u64,
    pub through: Position,
    /// Every session the account ever had, and the emails and numbers it
    /// held: what state beside the log is keyed by.
    pub tokens: Vec<TokenHash>,
    pub subjects: Vec<String>,
}

/// Events read at a time.
const PAGE: u32 = 2000;

/// Reads the log after `after` and plans the erasure of `user`'s data in it
/// (the whole log: `after` 0; a second pass after the erasure catches what
/// was in flight).
///
/// # Errors
/// The store cannot be read.
pub async fn plan(store: &dyn Store, user: UserId, after: Position, now: Millis) -> Result<Plan, StoreError> {
    let own = StreamName::user(user);
    let mut plan = Plan::default();
    // The addresses and identities the user ever held: their streams.
    let mut held: HashSet<String> = HashSet::new();
    let mut read = 0;
    loop {
        let page = store.read_stream(&own, read, PAGE).await?;
        let Some(last) = page.last() else { break };
        read = last.version;
        for rec in &page {
            let mut email = |email: &crate::domain::Email| {
                held.insert(StreamName::email(email).as_str().to_owned());
                plan.subjects.push(email.as_str().to_owned());
            };
            match &rec.event {
                Event::UserRegistered(u) => email(&u.email),
                Event::AccountOpened(a) => a.email.iter().for_each(email),
                Event::EmailVerified { email: e, .. } => email(e),
                Event::SessionStarted(s) => plan.tokens.push(s.token_hash),
                Event::PhoneAdded { phone, .. } | Event::PhoneRemoved { phone, .. } => {
                    held.insert(StreamName::phone(phone).as_str().to_owned());
                    plan.subjects.push(phone.as_str().to_owned());
                }
                Event::IdentityLinked { identity, .. } => {
                    held.insert(StreamName::identity(identity.provider, &identity.subject).as_str().to_owned());
                }
                Event::IdentityUnlinked { provider, subject, .. } => {
                    held.insert(StreamName::identity(*provider, subject).as_str().to_owned());
                }
                _ => {}
            }
        }
    }
    plan.user_version = read;
    let mut at = after;
    loop {
        let page = store.read_all(at, PAGE).await?;
        let Some(last) = page.last() else { break };
        at = last.position;
        for rec in &page {
            if let Some(event) = redaction(rec, user, &own, &held, now) {
                if matches!(event, Event::MessageSent(_)) {
                    plan.messages += 1;
                }
                if let Event::MediaUploaded(m) = &rec.event {
                    plan.blobs.push(m.sha256);
                }
                plan.rewrite.events.push((rec.position, event));
            }
        }
    }
    plan.through = at;
    if after == 0 {
        for name in held {
            let stream = StreamName::from_stored(name);
            let holder = store.last_in_stream(&stream).await?.and_then(|e| claimant(&e.event));
            if holder == Some(user) {
                let to = StreamName::from_stored(format!("erased:{}", Uuid::new_v4()));
                plan.rewrite.renames.push((stream, to));
            }
        }
    }
    plan.blobs.sort_unstable();
    plan.blobs.dedup();
    plan.subjects.sort_unstable();
    plan.subjects.dedup();
    Ok(plan)
}

/// Who claimed or released an address or identity (the events of their streams).
fn claimant(event: &Event) -> Option<UserId> {
    match event {
        Event::EmailClaimed { user_id, .. }
        | Event::PhoneClaimed { user_id, .. }
        | Event::PhoneReleased { user_id, .. }
        | Event::IdentityClaimed { user_id, .. }
        | Event::IdentityReleased { user_id, .. } => Some(*user_id),
        _ => None,
    }
}

/// What `rec` becomes when `user` is erased, if it changes.
fn redaction(
    rec: &RecordedEvent,
    user: UserId,
    own: &StreamName,
    held: &HashSet<String>,
    now: Millis,
) -> Option<Event> {
    let redacted = || Some(Event::Redacted { was: rec.event.type_name().to_owned(), at: now });
    match &rec.event {
        // A revocation holds the hash of a dead token only.
        Event::Redacted { .. } | Event::AccountErased { .. } | Event::SessionRevoked { .. } => None,
        _ if rec.stream == *own => redacted(),
        e if held.contains(rec.stream.as_str()) && claimant(e) == Some(user) => redacted(),
        Event::MessageSent(m) if m.sender_user_id == user => match m.content {
            Content::Erased | Content::MlsCommit { .. } => None,
            _ => Some(Event::MessageSent(MessageSent { content: Content::Erased, ..m.clone() })),
        },
        Event::MediaUploaded(m) if m.uploader == user => redacted(),
        Event::AdminActed(a) if a.target == user && !a.detail.is_empty() && a.action != ERASE_ACTION => {
            Some(Event::AdminActed(crate::domain::AdminAction { detail: String::new(), ..a.clone() }))
        }
        _ => None,
    }
}

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Events rewritten (both passes) and streams renamed.
    pub events: u64,
    pub streams: u64,
    pub messages: u64,
    /// The user's blobs, for the collector.
    pub blobs: Vec<[u8; 32]>,
    /// What state beside the log is keyed by (see [`Plan`]).
    pub tokens: Vec<TokenHash>,
    pub subjects: Vec<String>,
}

/// Erases `user`: plans, then rewrites the log and appends `appends` (their
/// `AccountErased` first among them, in the user stream, with whatever goes
/// with it: session revocations, the audit entry) in one transaction; a
/// second pass then erases what was in flight meanwhile. Retried when the
/// user stream moved between planning and writing.
///
/// # Errors
/// The store fails, or the user stream keeps moving.
pub async fn erase(
    store: &dyn Store,
    user: UserId,
    now: Millis,
    appends: impl Fn(&Plan) -> Vec<StreamAppend>,
) -> Result<Erased, AppendError> {
    for _ in 0..5 {
        let plan = plan(store, user, 0, now).await?;
        match store.rewrite(plan.rewrite.clone(), appends(&plan)).await {
            Ok(_) => {}
            Err(AppendError::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(e),
        }
        let mut done = Erased {
            events: plan.rewrite.events.len() as u64,
            streams: plan.rewrite.renames.len() as u64,
            messages: plan.messages,
            blobs: plan.blobs,
            tokens: plan.tokens,
            subjects: plan.subjects,
        };
        // Requests that passed their session check before the revocations
        // may have appended since: erased the same way, with the tombstone
        // projected again (idempotent) so the read models drop them too.
        let late = self::plan(store, user, plan.through, now).await?;
        if !late.rewrite.is_empty() {
            let again = StreamAppend::new(
                StreamName::user(user),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(Event::AccountErased {
                    user_id: user,
                    by: None,
                    registered_at: Millis(0),
                    at: now,
                })],
            );
            store.rewrite(late.rewrite.clone(), vec![again]).await?;
            done.events += late.rewrite.events.len() as u64;
            done.messages += late.messages;
            done.blobs.extend(late.blobs);
        }
        return Ok(done);
    }
    Err(AppendError::Store(StoreError::Database("the account kept changing while it was erased; try again".into())))
}
