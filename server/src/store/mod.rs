//! The event log and the read models, behind traits; one module per backend.
//!
//! Only this module knows SQL. The log is the source of truth: streams with
//! expected-version appends, plus a global position that subscribers follow. Read
//! models are projections of the log, updated in the same transaction as the
//! append (so a query never sees an event without its projection) and rebuilt by
//! replaying the log.

pub mod auth_state;
pub mod codec;
pub mod erasure;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{
    conversation::{ConversationKind, ConversationState},
    ClientMsgId, Content, ConversationId, DeviceId, Email, Event, Millis, Role, Seq, TokenHash, UserId,
};

/// Global position of an event in the log: strictly increasing in commit order.
/// Clients see it as their (opaque) feed cursor.
pub type Position = u64;

/// The name of a stream: `user:<id>`, `email:<address>`, `conv:<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamName(String);

impl StreamName {
    pub fn user(id: UserId) -> Self {
        Self(format!("user:{id}"))
    }
    pub fn email(email: &Email) -> Self {
        Self(format!("email:{email}"))
    }
    pub fn phone(phone: &crate::domain::Phone) -> Self {
        Self(format!("phone:{phone}"))
    }
    /// Who holds a Google or GitHub identity.
    pub fn identity(provider: crate::domain::IdentityProvider, subject: &str) -> Self {
        Self(format!("identity:{}:{subject}", provider.as_str()))
    }
    /// Everything that refers to the blob with this SHA-256, and its collection.
    pub fn blob(sha256: &[u8; 32]) -> Self {
        Self(format!("blob:{}", hex::encode(sha256)))
    }
    pub fn conversation(id: ConversationId) -> Self {
        Self(format!("conv:{id}"))
    }
    /// An encrypted conversation's accepted MLS commits, one per epoch (its
    /// version is the group's epoch).
    pub fn mls(id: ConversationId) -> Self {
        Self(format!("mls:{id}"))
    }
    /// Receipt watermarks of a conversation, apart from its message order.
    pub fn receipts(id: ConversationId) -> Self {
        Self(format!("receipts:{id}"))
    }
    /// A conversation's retention: its limit, and the expiries done.
    pub fn retention(id: ConversationId) -> Self {
        Self(format!("retention:{id}"))
    }
    /// Every admin action (`AdminActed`), in the order they happened.
    pub fn audit() -> Self {
        Self("audit".to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether this is a `conv:` stream (whose versions are conversation seqs).
    pub fn is_conversation(&self) -> bool {
        self.0.starts_with("conv:")
    }
    /// Wraps a name read back from the log.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the writer expects the stream's version to be before the append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (number of events in it).
    Exact(u64),
}

/// One event to append, with its id. Ids make appends idempotent: appending an
/// event whose id is already in the log stores nothing and reports the original.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub event: Event,
}

impl NewEvent {
    /// An event with a fresh random id (no idempotency wanted or needed).
    pub fn fresh(event: Event) -> Self {
        Self { id: Uuid::new_v4(), event }
    }
}

/// Events for one stream, appended together.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Checked inside the append's transaction; the append fails if it does not hold.
    pub precondition: Option<Precondition>,
}

impl StreamAppend {
    pub fn new(stream: StreamName, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self { stream, expected, events, precondition: None }
    }

    /// Adds a precondition checked atomically with the append.
    pub fn with_precondition(mut self, precondition: Precondition) -> Self {
        self.precondition = Some(precondition);
        self
    }
}

impl StreamAppend {
    /// Checks the stream's current version against the expected one.
    ///
    /// # Errors
    /// `WrongExpectedVersion` with the actual version.
    pub(crate) fn check_version(&self, current: u64) -> Result<(), AppendError> {
        let ok = match self.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        };
        if ok {
            Ok(())
        } else {
            Err(AppendError::WrongExpectedVersion {
                stream: self.stream.clone(),
                expected: self.expected,
                actual: current,
            })
        }
    }
}

/// What a backend's writer does for one caller; every kind rides the same group commit.
pub(crate) enum Work {
    Append(Vec<StreamAppend>),
    LastSeen(UserId, Millis),
    Import(Vec<RecordedEvent>),
    Rebuild,
    Rewrite(erasure::LogRewrite, Vec<StreamAppend>),
}

/// One caller's work and where its answer goes once committed.
pub(crate) struct WriteJob {
    pub work: Work,
    pub reply: tokio::sync::oneshot::Sender<Result<AppendOutcome, AppendError>>,
}

/// Refuses an append naming one stream twice (its versions would be ambiguous).
///
/// # Errors
/// A `Store` error naming the stream.
pub(crate) fn check_distinct_streams(appends: &[StreamAppend]) -> Result<(), AppendError> {
    for (i, append) in appends.iter().enumerate() {
        if appends[..i].iter().any(|a| a.stream == append.stream) {
            return Err(AppendError::Store(StoreError::Database(format!(
                "stream {} appears twice in one append",
                append.stream
            ))));
        }
    }
    Ok(())
}

/// A condition on the read models that must hold when the append commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `user` is a current member of `conversation` (e.g. a send racing a removal).
    ActiveMember { conversation: ConversationId, user: UserId },
    /// `conversation`'s members, roles and name last changed at `since`
    /// ([`crate::domain::conversation::ConversationState::changed`]): a group
    /// change decided on that state still applies, however many messages
    /// arrived meanwhile.
    GroupUnchanged { conversation: ConversationId, since: Seq },
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: StreamName,
    /// 1-based version within the stream; for `conv:` streams this is the `Seq`.
    pub version: u64,
    pub id: Uuid,
    pub recorded_at: Millis,
    pub event: Event,
}

/// The result of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Every event was new and is now durable, in append order.
    Appended(Vec<RecordedEvent>),
    /// An event with one of these ids was already stored; nothing new was
    /// written. Carries the stored originals.
    AlreadyStored(Vec<RecordedEvent>),
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream}: expected version {expected:?}, found {actual}")]
    WrongExpectedVersion { stream: StreamName, expected: ExpectedVersion, actual: u64 },
    #[error("precondition failed: {0:?}")]
    PreconditionFailed(Precondition),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of the storage itself: not the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored event at position {position} cannot be decoded: {reason}")]
    Corrupt { position: Position, reason: String },
    #[error("the store is shut down")]
    Closed,
    /// The database went away mid-request (a restart, a cut connection):
    /// worth retrying on a fresh connection.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    /// The disk (or the database's quota) is full: nothing was written, and
    /// the same write succeeds once there is space again.
    #[error("out of storage space: {0}")]
    Full(String),
}

impl StoreError {
    /// The same failure for another caller (a group commit fails every job in
    /// it): same kind and message.
    pub fn for_another(&self) -> StoreError {
        match self {
            StoreError::Database(m) => StoreError::Database(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Corrupt { position, reason } => {
                StoreError::Corrupt { position: *position, reason: reason.clone() }
            }
            StoreError::Closed => StoreError::Closed,
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StoreError::Full(m) => StoreError::Full(m.clone()),
        }
    }
}

/// A registered account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: UserId,
    /// None for an account made by a texted code.
    pub email: Option<Email>,
    pub display_name: String,
    /// None for an account made without a password (phone, Google, GitHub)
    /// until a password reset sets one.
    pub password_hash: Option<String>,
    pub created_at: Millis,
    /// Set once the user proved they receive mail there (`EmailVerified`).
    pub email_verified: bool,
    /// The TOTP secret sealed with the server key, while TOTP is on.
    pub totp_sealed_secret: Option<Vec<u8>>,
    /// A number the user proved (`PhoneAdded`), for signing in by text.
    pub phone: Option<crate::domain::Phone>,
    /// Granted the admin role (`AdminGranted`; `[admin] bootstrap` is not in the log).
    pub admin: bool,
    /// Disabled by an admin (`AccountDisabled`).
    pub disabled: bool,
    /// Erased (`AccountErased`): a tombstone, shown as a deleted account.
    pub erased: bool,
}

/// A live node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: u32,
    /// Users with a connection to it.
    pub online_users: u64,
}

/// A group in the admin's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListEntry {
    pub conversation_id: ConversationId,
    pub name: String,
    pub e2ee: bool,
    pub created_at: Millis,
    pub last_activity: Millis,
    /// Its newest seq: how many messages and changes it has had.
    pub last_seq: Seq,
    /// Current members.
    pub members: u32,
}

/// The admin's page of groups: in the order they were made (then by id),
/// after `$2, $3` (a `(created_at_ms, conversation_id)`; `$2` NULL from the
/// start), those whose lower-cased name starts with `$1` (NULL: all), at most `$4`.
pub(crate) const SELECT_GROUPS_PAGE: &str =
    "SELECT c.conversation_id, COALESCE(c.name, ''), c.e2ee, c.created_at_ms, c.last_activity_ms, c.last_seq,
            (SELECT COUNT(*) FROM members m WHERE m.conversation_id = c.conversation_id AND m.left_seq IS NULL)
     FROM conversations c
     WHERE c.kind = 'group'
       AND (CAST($1 AS TEXT) IS NULL OR substr(lower(COALESCE(c.name, '')), 1, length(CAST($1 AS TEXT))) = CAST($1 AS TEXT))
       AND (CAST($2 AS BIGINT) IS NULL OR c.created_at_ms > $2 OR (c.created_at_ms = $2 AND c.conversation_id > CAST($3 AS TEXT)))
     ORDER BY c.created_at_ms, c.conversation_id LIMIT $4";

/// An account in the admin's list, with how many sessions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserListEntry {
    pub user: UserRecord,
    pub sessions: u32,
}

/// A message's content from its read-model columns: `text`, or the stored
/// `MessageContent` of other kinds.
pub(crate) fn stored_content(kind: &str, text: Option<String>, pb: Option<Vec<u8>>) -> Result<Content, StoreError> {
    use prost::Message as _;
    match (kind, text, pb) {
        ("text", Some(t), _) => Ok(Content::Text(t)),
        ("erased", _, _) => Ok(Content::Erased),
        ("media" | "mls", _, Some(pb)) => natter_proto::events::MessageContent::decode(pb.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|c| codec::decode_content(Some(c)))
            .map_err(|e| StoreError::Database(format!("stored {kind} content: {e}"))),
        (k, _, _) => Err(StoreError::Database(format!("unknown message content kind {k:?}"))),
    }
}

/// A stored upload (`MediaUploaded`), and the first message that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub media_id: crate::domain::MediaId,
    pub uploader: UserId,
    pub conversation_id: ConversationId,
    pub sha256: [u8; 32],
    pub size: u64,
    pub mime_type: String,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub uploaded_at: Millis,
    pub first_seq: Option<Seq>,
    /// The preview natterd made of it.
    pub preview: Option<crate::domain::MediaId>,
    /// What it previews, when it is a preview.
    pub preview_of: Option<crate::domain::MediaId>,
    /// 0 when unknown.
    pub duration_ms: u64,
}

impl From<crate::domain::MediaUploaded> for MediaRecord {
    /// The record an upload makes, before any message sent it.
    fn from(u: crate::domain::MediaUploaded) -> Self {
        Self {
            media_id: u.media_id,
            uploader: u.uploader,
            conversation_id: u.conversation_id,
            sha256: u.sha256,
            size: u.size,
            mime_type: u.mime_type,
            file_name: u.file_name,
            width: u.width,
            height: u.height,
            uploaded_at: u.at,
            first_seq: None,
            preview: u.preview,
            preview_of: u.preview_of,
            duration_ms: u.duration_ms,
        }
    }
}

/// The media table's columns, in [`MediaRow`]'s order.
macro_rules! media_columns {
    () => {
        "media_id, uploader_user_id, conversation_id, sha256, size, mime_type, file_name, width, height,
         uploaded_at_ms, first_seq, preview_media_id, preview_of, duration_ms FROM media"
    };
}

/// A stored upload by id (`$1`).
pub(crate) const SELECT_MEDIA: &str = concat!("SELECT ", media_columns!(), " WHERE media_id = $1");
/// Uploads no message sent, made before `$1` (ms), oldest first, at most `$2`
/// (previews go with their media).
pub(crate) const SELECT_MEDIA_UNSENT: &str = concat!(
    "SELECT ",
    media_columns!(),
    " WHERE first_seq IS NULL AND preview_of IS NULL AND uploaded_at_ms < $1 ORDER BY uploaded_at_ms LIMIT $2"
);
/// How many stored uploads have the bytes `$1` (SHA-256).
pub(crate) const SELECT_MEDIA_REFS: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM media WHERE sha256 = $1";
/// The distinct blobs stored media rows refer to, with their size, in SHA-256
/// order after `$1` (empty: from the start), at most `$2`.
pub(crate) const SELECT_MEDIA_BLOBS: &str =
    "SELECT sha256, CAST(MAX(size) AS BIGINT) FROM media WHERE sha256 > $1 GROUP BY sha256 ORDER BY sha256 LIMIT $2";
/// A stored SHA-256 column as the 32 bytes it must be.
pub(crate) fn stored_sha256(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| StoreError::Database("a stored sha256 is not 32 bytes".into()))
}

/// The bytes a user's uploads take (`$1`): their quota's use.
pub(crate) const SELECT_MEDIA_BYTES: &str =
    "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM media WHERE uploader_user_id = $1";

/// A media row as the database gives it.
pub(crate) struct MediaRow {
    pub id: String,
    pub uploader: String,
    pub conversation: String,
    pub sha256: Vec<u8>,
    pub size: i64,
    pub mime_type: String,
    pub file_name: String,
    pub width: i64,
    pub height: i64,
    pub uploaded_at: i64,
    pub first_seq: Option<i64>,
    pub preview: Option<String>,
    pub preview_of: Option<String>,
    pub duration_ms: i64,
}

impl MediaRow {
    pub(crate) fn into_record(self) -> Result<MediaRecord, StoreError> {
        let bad = |what: &str| StoreError::Database(format!("stored media: {what}"));
        let media_id = |s: &str, what: &str| Uuid::try_parse(s).map(crate::domain::MediaId).map_err(|_| bad(what));
        Ok(MediaRecord {
            media_id: media_id(&self.id, "id")?,
            uploader: UserId(Uuid::try_parse(&self.uploader).map_err(|_| bad("uploader"))?),
            conversation_id: ConversationId(Uuid::try_parse(&self.conversation).map_err(|_| bad("conversation"))?),
            sha256: self.sha256.as_slice().try_into().map_err(|_| bad("sha256"))?,
            size: self.size as u64,
            mime_type: self.mime_type,
            file_name: self.file_name,
            width: self.width as u32,
            height: self.height as u32,
            uploaded_at: Millis(self.uploaded_at as u64),
            first_seq: self.first_seq.map(|s| Seq(s as u64)),
            preview: self.preview.as_deref().map(|p| media_id(p, "preview")).transpose()?,
            preview_of: self.preview_of.as_deref().map(|p| media_id(p, "preview_of")).transpose()?,
            duration_ms: self.duration_ms as u64,
        })
    }
}

/// A Google or GitHub identity an account may sign in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub provider: crate::domain::IdentityProvider,
    pub subject: String,
    pub email: Option<Email>,
    pub linked_at: Millis,
}

/// The account holding an identity (`$1` provider, `$2` subject).
pub(crate) const SELECT_IDENTITY_OWNER: &str = "SELECT user_id FROM identities WHERE provider = $1 AND subject = $2";
/// A user's identities (`$1`), by provider.
pub(crate) const SELECT_IDENTITIES_OF: &str =
    "SELECT provider, subject, email, linked_at_ms FROM identities WHERE user_id = $1 ORDER BY provider, subject";

pub(crate) fn identity_record(
    provider: &str,
    subject: String,
    email: Option<String>,
    linked_at: i64,
) -> Result<IdentityRecord, StoreError> {
    Ok(IdentityRecord {
        provider: crate::domain::IdentityProvider::parse(provider)
            .ok_or_else(|| StoreError::Database(format!("stored identity provider {provider:?}")))?,
        subject,
        email: email.map(Email::from_normalized),
        linked_at: Millis(linked_at as u64),
    })
}

/// A session (one per device login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub device_name: String,
    pub revoked: bool,
    /// When it was signed in (its absolute lifetime counts from here).
    pub created_at: Millis,
}

/// A live session of a user, for their device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSessionRecord {
    pub token_hash: TokenHash,
    pub device_id: DeviceId,
    pub device_name: String,
    pub method: crate::domain::SignInMethod,
    pub created_at: Millis,
}

/// A stored message, as the messages read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub position: Position,
    pub sender_user_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub content: Content,
    pub at: Millis,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub state: ConversationState,
    /// The newest message the user may read.
    pub last_message: Option<MessageRecord>,
    pub last_activity: Millis,
    /// Position of the conversation's newest event: orders the list.
    pub activity: Position,
    /// Messages from others after the user's read watermark.
    pub unread: u64,
    pub read_up_to: Seq,
    /// `Some(seq)` when the user left (or was removed) at that seq.
    pub left_at: Option<Seq>,
}

/// A user's relation to a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Active(Role),
    /// Left or removed at this seq: history up to it stays readable.
    Former {
        left_at: Seq,
    },
}

/// What presence needs to know of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceRecord {
    pub user: UserId,
    pub last_seen: Option<Millis>,
    pub hide_last_seen: bool,
}

/// A device's push subscription as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscriptionRecord {
    pub user: UserId,
    pub device: DeviceId,
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
}

/// One subscription that may be told of a message, with its user's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub subscription: PushSubscriptionRecord,
    pub show_text: bool,
    /// `None`: not muted; `Some(None)`: until unmuted.
    pub muted_until: Option<Option<Millis>>,
}

/// A device's MLS signature public key (`DeviceKeyRegistered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeyRecord {
    pub device_id: DeviceId,
    pub signature_key: Vec<u8>,
    pub registered_at: Millis,
}

/// A user's device keys by device id (`$1` the user).
pub(crate) const SELECT_DEVICE_KEYS: &str =
    "SELECT device_id, signature_key, registered_at_ms FROM device_keys WHERE user_id = $1 ORDER BY device_id";

/// Whether `$1` and `$2` are both current members of some conversation.
pub(crate) const SELECT_SHARE_CONVERSATION: &str = "SELECT 1 FROM members me
    JOIN members other ON other.conversation_id = me.conversation_id
    WHERE me.user_id = $1 AND other.user_id = $2 AND me.left_seq IS NULL AND other.left_seq IS NULL LIMIT 1";

pub(crate) fn device_key(device: &str, signature_key: Vec<u8>, at: i64) -> Result<DeviceKeyRecord, StoreError> {
    Ok(DeviceKeyRecord {
        device_id: DeviceId(
            uuid::Uuid::parse_str(device).map_err(|_| StoreError::Database("stored device key: device id".into()))?,
        ),
        signature_key,
        registered_at: Millis(at as u64),
    })
}

/// A user's notification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    pub show_text: bool,
    /// Muted conversations, by id, and until when (`None`: until unmuted).
    pub muted: Vec<(ConversationId, Option<Millis>)>,
    /// The asking device's subscription.
    pub subscription: Option<PushSubscriptionRecord>,
}

/// The follower lease as one statement in both dialects (`$1` name, `$2`
/// holder, `$3` lease end, `$4` position to advance to or 0, `$5` now;
/// placeholders in order of appearance, as SQLite numbers them):
/// a row nobody holds, or whose lease ran out, or that `$2` holds, is taken;
/// the position only moves forward.
pub(crate) const FOLLOWER_LEASE: &str = "INSERT INTO followers (name, holder, lease_until_ms, position)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until_ms = excluded.lease_until_ms,
         position = CASE WHEN followers.position > excluded.position THEN followers.position ELSE excluded.position END
     WHERE followers.holder = excluded.holder OR followers.lease_until_ms < $5
     RETURNING position";

/// `$1` conversation, `$2` user: the user's subscriptions with their settings.
pub(crate) const SELECT_PUSH_TARGETS: &str =
    "SELECT s.device_id, s.endpoint, s.p256dh, s.auth, u.push_show_text, m.conversation_id, m.until_ms
     FROM push_subscriptions s JOIN users u ON u.user_id = s.user_id
     LEFT JOIN push_mutes m ON m.user_id = s.user_id AND m.conversation_id = $1
     WHERE s.user_id = $2 ORDER BY s.device_id";

/// A user's receipt watermarks in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptRecord {
    pub user: UserId,
    pub delivered: Seq,
    pub read: Seq,
}

/// Which page of history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest `limit` messages.
    Latest { limit: u32 },
    /// Up to `limit` messages with seq < `seq`, the closest ones.
    Before { seq: Seq, limit: u32 },
    /// Up to `limit` messages with seq > `seq`, the closest ones.
    After { seq: Seq, limit: u32 },
}

/// Which conversation-list entries a backend loads.
pub(crate) enum Summaries {
    Page { before: Option<Position>, limit: u32 },
    One(ConversationId),
}

/// The conversation-list rows of both backends (then filtered by user, page or id):
/// conversation, last activity, last position, the user's left seq, read seq.
/// A conversation someone may read, and how far (see
/// [`Store::readable_conversations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableConversation {
    pub conversation: ConversationId,
    pub name: Option<String>,
    pub left_at: Option<Seq>,
}

pub(crate) const SELECT_READABLE: &str = "SELECT m.conversation_id, c.name, m.left_seq
    FROM members m JOIN conversations c ON c.conversation_id = m.conversation_id";

pub(crate) const SELECT_SUMMARIES: &str = "SELECT c.conversation_id, c.last_activity_ms, c.last_position,
        m.left_seq, COALESCE(r.read_seq, 0)
    FROM members m
    JOIN conversations c ON c.conversation_id = m.conversation_id
    LEFT JOIN receipts r ON r.conversation_id = m.conversation_id AND r.user_id = m.user_id";

/// The read models, which `rebuild` empties and refills from the log (the
/// same tables in both backends; `auth_state` is not among them).
pub(crate) const READ_MODELS: &[&str] = &[
    "users",
    "sessions",
    "recovery_codes",
    "identities",
    "media",
    "conversations",
    "members",
    "messages",
    "feed",
    "receipts",
    "device_receipts",
    "push_subscriptions",
    "push_mutes",
    "device_keys",
];

/// A user's live sessions, oldest first (`$1` the user; both dialects accept
/// `$n` placeholders in order of appearance).
pub(crate) const SELECT_SESSIONS_OF: &str = "SELECT token_hash, device_id, device_name, method, created_at_ms
    FROM sessions WHERE user_id = $1 AND revoked_at_ms IS NULL ORDER BY created_at_ms, device_id";

/// One unused recovery code (`$1` the user, `$2` the code's hash).
pub(crate) const SELECT_RECOVERY_CODE: &str =
    "SELECT 1 FROM recovery_codes WHERE user_id = $1 AND code_hash = $2 AND used_at_ms IS NULL";

/// A [`DeviceSessionRecord`] from the columns of [`SELECT_SESSIONS_OF`].
pub(crate) fn device_session(
    hash: &[u8],
    device: &str,
    device_name: String,
    method: &str,
    created: i64,
) -> Result<DeviceSessionRecord, StoreError> {
    let bad = |what: &str| StoreError::Database(format!("stored session: {what}"));
    Ok(DeviceSessionRecord {
        token_hash: TokenHash(<[u8; 32]>::try_from(hash).map_err(|_| bad("token hash is not 32 bytes"))?),
        device_id: DeviceId(uuid::Uuid::parse_str(device).map_err(|_| bad("device id"))?),
        device_name,
        method: crate::domain::SignInMethod::parse(method).ok_or_else(|| bad("sign-in method"))?,
        created_at: Millis(created as u64),
    })
}

impl HistoryPage {
    /// The page's `WHERE … ORDER BY` over `messages`, with `mark` as the
    /// placeholder sign (`$` or `?`) for: 1 the conversation, 2 the bound, 3 the
    /// limit plus one, 4 the last visible seq. Returns it with the bound, the
    /// limit and whether rows come newest first.
    pub(crate) fn query(self, mark: char) -> (String, u64, u32, bool) {
        let (cmp, bound, limit, newest_first) = match self {
            HistoryPage::Latest { limit } => (">", 0, limit, true),
            HistoryPage::Before { seq, limit } => ("<", seq.0, limit, true),
            HistoryPage::After { seq, limit } => (">", seq.0, limit, false),
        };
        let order = if newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "WHERE conversation_id = {mark}1 AND seq {cmp} {mark}2 AND seq <= {mark}4 ORDER BY seq {order} LIMIT {mark}3"
        );
        (sql, bound, limit, newest_first)
    }

    /// Turns the rows of [`HistoryPage::query`] (up to limit + 1) into the page,
    /// oldest first, and whether there are more.
    pub(crate) fn finish(mut msgs: Vec<MessageRecord>, limit: u32, newest_first: bool) -> (Vec<MessageRecord>, bool) {
        let has_more = msgs.len() > limit as usize;
        msgs.truncate(limit as usize);
        if newest_first {
            msgs.reverse();
        }
        (msgs, has_more)
    }
}

/// Counts for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub events: u64,
    pub users: u64,
    pub conversations: u64,
    pub messages: u64,
    pub head: Position,
}

/// A committed event and the users whose feed it went into (its audience at the
/// moment it was committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEvent {
    pub event: RecordedEvent,
    pub audience: Vec<UserId>,
}

/// Committed events, in commit order, as the writer publishes them.
pub type CommittedBatch = Arc<[CommittedEvent]>;

/// What one group commit did, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct CommitStats {
    pub jobs: usize,
    pub events: usize,
    pub messages: usize,
    /// The transaction from begin to durable commit (fsync included).
    pub took: std::time::Duration,
    /// The COMMIT step alone: writing the log and the fsync.
    pub commit_took: std::time::Duration,
}

/// Called after every group commit (from the writer: keep it cheap).
pub type CommitHook = Arc<dyn Fn(CommitStats) + Send + Sync>;

/// What several natterd nodes on one database share besides the log: a channel
/// for ephemeral messages (typing, presence) and who is connected where. Only
/// backends that several nodes can share have one.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's id among the nodes.
    fn node_id(&self) -> &str;
    /// The live nodes (a heartbeat within the expiry), by id.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Sends an ephemeral message to every other node. Best effort: a message
    /// may be lost (a node that restarts misses what was sent meanwhile).
    async fn publish(&self, message: String) -> Result<(), StoreError>;
    /// Messages other nodes published, from now on.
    fn messages(&self) -> broadcast::Receiver<Arc<str>>;
    /// Records whether `user` has connections on this node.
    async fn set_online(&self, user: UserId, online: bool) -> Result<(), StoreError>;
    /// Those of `users` connected to some other live node.
    async fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<UserId>, StoreError>;
    /// Records when these users, connected to this node, last made a request
    /// (milliseconds since the epoch; an older time than recorded changes nothing).
    async fn record_activity(&self, active: &[(UserId, u64)]) -> Result<(), StoreError>;
    /// Those of `users` connected to some other live node that made a request
    /// there at `since_ms` or later (as recorded: up to a second behind).
    async fn active_elsewhere(&self, users: &[UserId], since_ms: u64) -> Result<Vec<UserId>, StoreError>;
    /// How much longer `email` is locked out of signing in, on any node.
    async fn account_locked_for(&self, email: &Email) -> Result<Option<std::time::Duration>, StoreError>;
    /// Records a wrong password for `email`; returns its consecutive failures.
    async fn login_failed(&self, email: &Email) -> Result<u32, StoreError>;
    /// Locks `email` out of signing in for `lock` from now (never shortening a lock).
    async fn lock_account(&self, email: &Email, lock: std::time::Duration) -> Result<(), StoreError>;
    /// A successful sign-in: `email`'s failures are forgotten.
    async fn login_succeeded(&self, email: &Email) -> Result<(), StoreError>;
}

/// The log and its read models. One implementation per backend; every
/// implementation passes the same conformance tests.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Appends to one or more streams atomically and durably: when this returns
    /// `Ok`, the events survive a crash. Appends from concurrent callers are
    /// group-committed.
    ///
    /// # Errors
    /// `WrongExpectedVersion` when a stream's version does not match (nothing is
    /// written); `Store` when the storage failed.
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError>;
    /// Rewrites events in place and renames streams (an erasure, see
    /// [`erasure`]), then appends `appends`, in one transaction; then makes
    /// the old bytes unrecoverable from the store's files as far as the
    /// backend can.
    async fn rewrite(
        &self,
        rewrite: erasure::LogRewrite,
        appends: Vec<StreamAppend>,
    ) -> Result<AppendOutcome, AppendError>;

    /// Events of the whole log with position > `after`, ascending, at most `limit`.
    async fn read_all(&self, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Events of one stream with version > `after`, ascending, at most `limit`.
    async fn read_stream(&self, stream: &StreamName, after: u64, limit: u32) -> Result<Vec<RecordedEvent>, StoreError>;

    /// A stream's newest event (`None`: no such stream).
    async fn last_in_stream(&self, stream: &StreamName) -> Result<Option<RecordedEvent>, StoreError>;

    /// The newest committed position (0 for an empty log).
    async fn head(&self) -> Result<Position, StoreError>;

    /// Committed batches from now on. A receiver that lags gets `Lagged` and must
    /// re-read from the log by position.
    fn subscribe(&self) -> broadcast::Receiver<CommittedBatch>;

    /// Events that concern `user` (their conversations' events) with position >
    /// `after`, ascending, at most `limit`.
    async fn feed(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError>;

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_id(&self, user: UserId) -> Result<Option<UserRecord>, StoreError>;
    async fn user_by_phone(&self, phone: &crate::domain::Phone) -> Result<Option<UserRecord>, StoreError>;
    /// Groups in the order they were made (then by id), after `after`, at
    /// most `limit`; with `prefix` (lower case) only those whose lower-cased
    /// name starts with it.
    async fn groups_page(
        &self,
        prefix: Option<String>,
        after: Option<(Millis, ConversationId)>,
        limit: u32,
    ) -> Result<Vec<GroupListEntry>, StoreError>;
    /// Accounts in the order they were made (then by id), after `after`
    /// (a `(created_at, user_id)` of the previous page), at most `limit`;
    /// with `prefix` (lower case) only those whose email or lower-cased
    /// display name starts with it.
    async fn users_page(
        &self,
        prefix: Option<String>,
        after: Option<(Millis, UserId)>,
        limit: u32,
    ) -> Result<Vec<UserListEntry>, StoreError>;
    async fn session_by_token(&self, token_hash: TokenHash) -> Result<Option<SessionRecord>, StoreError>;
    /// A user's sessions that are not revoked, oldest first.
    /// The account a Google or GitHub identity signs in to.
    async fn user_by_identity(
        &self,
        provider: crate::domain::IdentityProvider,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// The identities linked to an account.
    async fn identities_of(&self, user: UserId) -> Result<Vec<IdentityRecord>, StoreError>;
    /// A stored upload.
    async fn media(&self, id: crate::domain::MediaId) -> Result<Option<MediaRecord>, StoreError>;
    /// The bytes `user`'s uploads take.
    async fn media_bytes_of(&self, user: UserId) -> Result<u64, StoreError>;
    /// Uploads that no message sent, made before `before`, oldest first
    /// (previews are not listed: they go with their media).
    async fn media_unsent(&self, before: Millis, limit: u32) -> Result<Vec<MediaRecord>, StoreError>;
    /// The blobs stored uploads and previews refer to, each once with its
    /// size, in SHA-256 order after `after`, at most `limit` (what a backup copies).
    async fn media_blobs(&self, after: Option<[u8; 32]>, limit: u32) -> Result<Vec<([u8; 32], u64)>, StoreError>;
    /// How many stored uploads have these bytes.
    async fn media_refs(&self, sha256: [u8; 32]) -> Result<u64, StoreError>;
    async fn sessions_of(&self, user: UserId) -> Result<Vec<DeviceSessionRecord>, StoreError>;
    /// Whether `code_hash` is one of the user's recovery codes, not yet used.
    async fn recovery_code_unused(&self, user: UserId, code_hash: [u8; 32]) -> Result<bool, StoreError>;
    /// The conversation with its current members.
    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationState>, StoreError>;
    /// The user's relation to a conversation; `None` if never a member.
    async fn membership(&self, id: ConversationId, user: UserId) -> Result<Option<Membership>, StoreError>;
    /// The user's conversations (current and former), most recent activity first,
    /// only those with activity below `before` when given.
    async fn conversations_for_user(
        &self,
        user: UserId,
        before: Option<Position>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError>;
    /// Every conversation `user` is or was in, with its name (groups) and,
    /// for a former member, the seq they left at: what they may search.
    /// Unlike [`Store::conversations_for_user`], nothing per conversation is
    /// counted or loaded.
    async fn readable_conversations(&self, user: UserId) -> Result<Vec<ReadableConversation>, StoreError>;
    /// One conversation's list entry for `user` (current or former member).
    async fn conversation_summary(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<Option<ConversationSummary>, StoreError>;
    /// A page of messages with seq ≤ `visible_upto` (all when `None`), ascending
    /// by seq, and whether more exist beyond it.
    async fn messages(
        &self,
        id: ConversationId,
        page: HistoryPage,
        visible_upto: Option<Seq>,
    ) -> Result<(Vec<MessageRecord>, bool), StoreError>;
    /// One message.
    async fn message(&self, id: ConversationId, seq: Seq) -> Result<Option<MessageRecord>, StoreError>;
    /// A conversation's own retention limit (`RetentionSet`, seconds; 0: none).
    async fn retention_of(&self, id: ConversationId) -> Result<u64, StoreError>;
    /// The conversations whose messages may expire, with their own limits:
    /// those with one, or (`every`, when the deployment has a limit) all.
    async fn retention_limits(&self, every: bool) -> Result<Vec<(ConversationId, u64)>, StoreError>;
    /// Up to `limit` messages of `id` after `after` (by seq) sent before
    /// `before` whose content is not erased, oldest first.
    async fn expired_messages(
        &self,
        id: ConversationId,
        before: Millis,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError>;
    /// One user's watermarks in a conversation (zero when none).
    async fn receipt(&self, id: ConversationId, user: UserId) -> Result<ReceiptRecord, StoreError>;
    /// Every user's watermarks in a conversation (users without any are absent).
    async fn receipts(&self, id: ConversationId) -> Result<Vec<ReceiptRecord>, StoreError>;

    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Whether the store accepts writes (a durable empty write).
    async fn health(&self) -> Result<(), StoreError>;

    /// Records when a user was last connected (not part of the log: presence is
    /// ephemeral, only this survives a restart). Durable like an append.
    async fn set_last_seen(&self, user: UserId, at: Millis) -> Result<(), StoreError>;
    /// Last-seen time and privacy setting of each user (unknown users are absent).
    async fn presence_info(&self, users: Vec<UserId>) -> Result<Vec<PresenceRecord>, StoreError>;
    /// Everyone who shares a current conversation with `user` (not `user`).
    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>, StoreError>;
    /// Whether `a` and `b` are both current members of some conversation.
    async fn share_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError>;
    /// The MLS signature keys of `user`'s devices, by device id.
    async fn device_keys(&self, user: UserId) -> Result<Vec<DeviceKeyRecord>, StoreError>;

    /// Every stored last-seen time, by user (operator tools: copying a deployment).
    async fn last_seen_all(&self) -> Result<Vec<(UserId, Millis)>, StoreError>;

    /// The push subscriptions of `users` that could be told of a message in
    /// `conversation`, each with its user's settings (users without one are
    /// absent).
    async fn push_targets(&self, conversation: ConversationId, users: &[UserId])
        -> Result<Vec<PushTarget>, StoreError>;
    /// A user's notification settings and this device's subscription.
    async fn push_settings(&self, user: UserId, device: DeviceId) -> Result<PushSettings, StoreError>;

    /// Takes or renews the lease on the log follower `name` for `holder`
    /// until `now + ttl` (when it is free, expired or already `holder`'s),
    /// first moving its position forward to `advance` if given. Answers the
    /// follower's position when `holder` holds the lease, `None` when another
    /// holder does. Durable like an append.
    async fn follower_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: std::time::Duration,
        advance: Option<Position>,
    ) -> Result<Option<Position>, StoreError>;

    /// Writes events read from another log as they are (positions, versions,
    /// ids and times kept) and projects them, atomically. Moving a deployment
    /// between backends: the first position must be above this log's head.
    ///
    /// # Errors
    /// `Database` when the events do not continue this log; `Store` failures.
    async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError>;

    /// Drops every read model and rebuilds it by replaying the whole log, in
    /// one transaction (queries see the old models until it commits).
    async fn rebuild(&self) -> Result<(), StoreError>;

    /// The cluster channel, for backends that several nodes share.
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        None
    }

    /// Stops accepting appends, commits what is queued, and closes.
    async fn shutdown(&self);
}

/// Kind of a conversation as stored in the read model.
pub(crate) fn kind_to_str(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// Role as stored in the read model.
pub(crate) fn role_to_str(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

pub(crate) fn role_from_str(s: &str) -> Option<Role> {
    match s {
        "member" => Some(Role::Member),
        "admin" => Some(Role::Admin),
        "owner" => Some(Role::Owner),
        _ => None,
    }
}
