//! The pure core: identifiers, events, and the rules that turn a command into
//! events (`decide`) or a rejection.
//!
//! Never does IO and never reads the clock: time arrives as an argument, so every
//! rule is tested with plain `#[test]`s and no runtime. Types here are plain Rust
//! and not `Serialize`; conversion to protobuf happens in `store::codec` and
//! `session` (the edges).

pub mod account;
pub mod conversation;
mod ids;

pub use ids::*;

/// Milliseconds since the Unix epoch, as passed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// The wall clock, read at the edge (workers, the session layer) and
    /// passed into the domain.
    pub fn now() -> Self {
        Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
    }
}

/// Something the user did wrong; shown to the client as a typed error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid email address: {0}")]
    InvalidEmail(&'static str),
    #[error("invalid phone number: {0}")]
    InvalidPhone(&'static str),
    #[error("password rejected: {0}")]
    WeakPassword(&'static str),
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: &'static str },
    #[error("message text is {len} bytes; the maximum is {max}")]
    TextTooLong { len: usize, max: usize },
    #[error("message has no content")]
    EmptyMessage,
    #[error("not a member of this conversation")]
    NotAMember,
    #[error("cannot open a direct conversation with yourself")]
    DirectWithSelf,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the group would have {would_have} members; the limit is {max}")]
    GroupFull { would_have: usize, max: usize },
    #[error("this is not a group")]
    NotAGroup,
    #[error("{}", if *e2ee { "this conversation is end-to-end encrypted: only MLS content goes in it" } else { "this conversation is not end-to-end encrypted: MLS content does not go in it" })]
    EncryptionMismatch { e2ee: bool },
}

/// Everything that can be recorded in the log, as the domain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    UserRegistered(UserRegistered),
    EmailClaimed {
        user_id: UserId,
        at: Millis,
    },
    SessionStarted(SessionStarted),
    SessionRevoked {
        user_id: UserId,
        token_hash: TokenHash,
        at: Millis,
    },
    DirectConversationStarted {
        conversation_id: ConversationId,
        members: [UserId; 2],
        at: Millis,
    },
    MessageSent(MessageSent),
    GroupCreated {
        conversation_id: ConversationId,
        name: String,
        creator: UserId,
        members: Vec<(UserId, Role)>,
        at: Millis,
    },
    MembersAdded {
        conversation_id: ConversationId,
        actor: UserId,
        members: Vec<(UserId, Role)>,
        at: Millis,
    },
    MemberRemoved {
        conversation_id: ConversationId,
        actor: UserId,
        user: UserId,
        at: Millis,
    },
    MemberLeft {
        conversation_id: ConversationId,
        user: UserId,
        at: Millis,
    },
    /// `actor: None` when the server handed ownership over (last owner left).
    RoleChanged {
        conversation_id: ConversationId,
        actor: Option<UserId>,
        user: UserId,
        role: Role,
        at: Millis,
    },
    GroupRenamed {
        conversation_id: ConversationId,
        actor: UserId,
        name: String,
        at: Millis,
    },
    DeliveredUpTo {
        conversation_id: ConversationId,
        user: UserId,
        device: DeviceId,
        seq: Seq,
        at: Millis,
    },
    ReadUpTo {
        conversation_id: ConversationId,
        user: UserId,
        seq: Seq,
        at: Millis,
    },
    PrivacyChanged {
        user_id: UserId,
        hide_last_seen: bool,
        at: Millis,
    },
    PushSubscribed(PushSubscription),
    /// Right after a conversation's first event: it is end-to-end encrypted.
    ConversationEncrypted {
        conversation_id: ConversationId,
        at: Millis,
    },
    /// Stream `mls:<id>`: the commit of `epoch` was accepted (appended with it,
    /// at version `epoch`, so that each epoch has one), and the GroupInfo of
    /// the epoch it starts (what the next commit is checked against).
    MlsEpochClosed {
        conversation_id: ConversationId,
        epoch: u64,
        group_info: Vec<u8>,
        at: Millis,
    },
    /// The device's MLS signature public key (Ed25519), registered by the
    /// device with proof of possession; a newer one replaces it.
    DeviceKeyRegistered {
        user_id: UserId,
        device_id: DeviceId,
        signature_key: Vec<u8>,
        at: Millis,
    },
    PushUnsubscribed {
        user_id: UserId,
        device_id: DeviceId,
        endpoint: String,
        reason: Unsubscribed,
        at: Millis,
    },
    PushPreviewsSet {
        user_id: UserId,
        show_text: bool,
        at: Millis,
    },
    /// `until: None` mutes until unmuted.
    ConversationMuted {
        user_id: UserId,
        conversation_id: ConversationId,
        until: Option<Millis>,
        at: Millis,
    },
    ConversationUnmuted {
        user_id: UserId,
        conversation_id: ConversationId,
        at: Millis,
    },
    PasswordChanged {
        user_id: UserId,
        password_hash: String,
        at: Millis,
    },
    EmailVerified {
        user_id: UserId,
        email: Email,
        at: Millis,
    },
    /// `sealed_secret` is the TOTP secret sealed with the server key.
    TotpEnabled {
        user_id: UserId,
        sealed_secret: Vec<u8>,
        recovery_codes: Vec<[u8; 32]>,
        at: Millis,
    },
    TotpDisabled {
        user_id: UserId,
        at: Millis,
    },
    /// The admin role granted; `by` is `None` when `natter-admin` granted it
    /// on the store (offline).
    AdminGranted {
        user_id: UserId,
        by: Option<UserId>,
        at: Millis,
    },
    AdminRevoked {
        user_id: UserId,
        by: Option<UserId>,
        at: Millis,
    },
    /// No sign-in until `AccountEnabled`; appended with a `SessionRevoked`
    /// for each of the account's sessions.
    AccountDisabled {
        user_id: UserId,
        by: Option<UserId>,
        at: Millis,
    },
    AccountEnabled {
        user_id: UserId,
        by: Option<UserId>,
        at: Millis,
    },
    /// One admin action, in the `audit` stream, appended with what it did.
    AdminActed(AdminAction),
    RecoveryCodesIssued {
        user_id: UserId,
        recovery_codes: Vec<[u8; 32]>,
        at: Millis,
    },
    RecoveryCodeUsed {
        user_id: UserId,
        code_hash: [u8; 32],
        at: Millis,
    },
    /// In the `phone:<E.164>` stream, appended with "no stream": a number
    /// belongs to one account.
    PhoneClaimed {
        user_id: UserId,
        at: Millis,
    },
    /// The user proved they receive texts at `phone` (a code): they may sign
    /// in with it.
    PhoneAdded {
        user_id: UserId,
        phone: Phone,
        at: Millis,
    },
    /// In the `phone:` stream: the holder took the number off their account.
    PhoneReleased {
        user_id: UserId,
        at: Millis,
    },
    /// The number no longer signs in to the account.
    PhoneRemoved {
        user_id: UserId,
        phone: Phone,
        at: Millis,
    },
    MediaUploaded(MediaUploaded),
    /// In the `blob:` stream: an upload never sent in time (or the preview of
    /// one) is gone from the read models.
    MediaDiscarded {
        media_id: MediaId,
        sha256: [u8; 32],
        at: Millis,
    },
    /// In the `blob:` stream: nothing refers to the blob; its bytes are being
    /// deleted.
    BlobCollected {
        sha256: [u8; 32],
        at: Millis,
    },
    /// In the `blob:` stream: the collected blob's bytes are deleted.
    BlobErased {
        sha256: [u8; 32],
        at: Millis,
    },
    /// The first event of an account made without a password: by a texted
    /// code (no email) or by Google or GitHub (their verified email).
    AccountOpened(AccountOpened),
    /// In the `identity:<provider>:<subject>` stream: an identity belongs to
    /// one account at a time (claimed with "no stream", or at the exact
    /// version after a release).
    IdentityClaimed {
        user_id: UserId,
        at: Millis,
    },
    IdentityReleased {
        user_id: UserId,
        at: Millis,
    },
    /// The user may sign in with this Google or GitHub identity.
    IdentityLinked {
        user_id: UserId,
        identity: ExternalIdentity,
        at: Millis,
    },
    IdentityUnlinked {
        user_id: UserId,
        provider: IdentityProvider,
        subject: String,
        at: Millis,
    },
    /// An event whose personal data an erasure took out of the log: `was` is
    /// its type name. Projects nothing.
    Redacted {
        was: String,
        at: Millis,
    },
    /// An admin deleted the group: no one is a member any more (its
    /// messages' content is erased right after: `MessagesExpired`).
    GroupDeleted {
        conversation_id: ConversationId,
        by: Option<UserId>,
        at: Millis,
    },
    /// Stream `retention:<id>`: the conversation's own limit on message age
    /// (0: the deployment's).
    RetentionSet {
        conversation_id: ConversationId,
        actor: UserId,
        max_age_secs: u64,
        at: Millis,
    },
    /// Stream `retention:<id>`: the content of every message sent before
    /// `before` is erased (the log rewritten with it), and their media.
    MessagesExpired {
        conversation_id: ConversationId,
        before: Millis,
        at: Millis,
    },
    /// The account is erased (see `store::erasure`): the read models keep a
    /// tombstone. `by: None` when the user asked, or natter-admin on the store.
    AccountErased {
        user_id: UserId,
        by: Option<UserId>,
        registered_at: Millis,
        at: Millis,
    },
}

/// A device's Web Push subscription (RFC 8030; keys as RFC 8291 names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub endpoint: String,
    /// P-256, uncompressed (65 bytes).
    pub p256dh: Vec<u8>,
    /// 16 bytes.
    pub auth: Vec<u8>,
    pub at: Millis,
}

/// Why a push subscription went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The device asked.
    Unregistered,
    /// The push service answered 404 or 410: the subscription expired or the
    /// user agent dropped it.
    Gone,
}

impl Unsubscribed {
    pub fn as_str(self) -> &'static str {
        match self {
            Unsubscribed::Unregistered => "unregistered",
            Unsubscribed::Gone => "gone",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unregistered" => Some(Unsubscribed::Unregistered),
            "gone" => Some(Unsubscribed::Gone),
            _ => None,
        }
    }
}

/// A new account without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountOpened {
    pub user_id: UserId,
    pub display_name: String,
    pub email: Option<Email>,
    /// The provider verified the address.
    pub email_verified: bool,
    pub at: Millis,
}

/// A provider of external identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityProvider {
    Google,
    GitHub,
}

impl IdentityProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityProvider::Google => "google",
            IdentityProvider::GitHub => "github",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "google" => Some(IdentityProvider::Google),
            "github" => Some(IdentityProvider::GitHub),
            _ => None,
        }
    }

    /// For people: "Google", "GitHub".
    pub fn title(self) -> &'static str {
        match self {
            IdentityProvider::Google => "Google",
            IdentityProvider::GitHub => "GitHub",
        }
    }

    pub fn sign_in_method(self) -> SignInMethod {
        match self {
            IdentityProvider::Google => SignInMethod::Google,
            IdentityProvider::GitHub => SignInMethod::GitHub,
        }
    }
}

/// Who a provider says the person is: its stable subject (OIDC `sub`,
/// GitHub's numeric id) and their verified email, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIdentity {
    pub provider: IdentityProvider,
    pub subject: String,
    pub email: Option<Email>,
}

/// How a session was signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignInMethod {
    Password,
    Phone,
    Google,
    GitHub,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInMethod::Password => "password",
            SignInMethod::Phone => "phone",
            SignInMethod::Google => "google",
            SignInMethod::GitHub => "github",
        }
    }

    /// The stored name; empty (events from before methods were recorded) is a password.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "password" => Some(SignInMethod::Password),
            "phone" => Some(SignInMethod::Phone),
            "google" => Some(SignInMethod::Google),
            "github" => Some(SignInMethod::GitHub),
            _ => None,
        }
    }
}

/// A member's role in a group, in increasing power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: Email,
    pub display_name: String,
    /// PHC string produced by `auth`; the domain never sees a plain password
    /// after validation.
    pub password_hash: String,
    pub at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStarted {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub device_name: String,
    pub token_hash: TokenHash,
    pub method: SignInMethod,
    pub at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSent {
    pub conversation_id: ConversationId,
    pub sender_user_id: UserId,
    pub sender_device_id: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub content: Content,
    pub at: Millis,
}

/// Message content. A closed set that grows (MLS ciphertext, edits…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Media(MediaRef),
    /// An MLS application message (an MLSMessage holding a PrivateMessage,
    /// TLS-serialized): ciphertext natterd cannot read, and the encrypted
    /// upload it carries, if any.
    Mls {
        message: Vec<u8>,
        media: Option<MediaId>,
    },
    /// An MLS commit (a PublicMessage MLSMessage) made in `epoch`, the Welcome
    /// for the members it adds (empty when none) and the GroupInfo after it.
    MlsCommit {
        commit: Vec<u8>,
        welcome: Vec<u8>,
        group_info: Vec<u8>,
        epoch: u64,
    },
    /// The sender's account was erased: the content is gone from the log.
    Erased,
}

/// A file in a message: what natterd knew of the upload when it was sent,
/// and the sender's caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub media_id: MediaId,
    pub file_name: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: [u8; 32],
    pub width: u32,
    pub height: u32,
    pub duration_ms: u64,
    pub caption: String,
    pub preview: Option<MediaId>,
}

/// A file received whole and checked, in its blob's `blob:` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUploaded {
    pub media_id: MediaId,
    pub uploader: UserId,
    pub conversation_id: ConversationId,
    pub sha256: [u8; 32],
    pub size: u64,
    pub mime_type: String,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub at: Millis,
    /// On a preview natterd made: the media it shows.
    pub preview_of: Option<MediaId>,
    /// On media that has a preview: the preview.
    pub preview: Option<MediaId>,
    /// A video's or audio's length, from its container; 0 when unknown.
    pub duration_ms: u64,
}

/// What an admin did, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAction {
    /// `None`: `natter-admin` on the store (offline).
    pub actor: Option<UserId>,
    /// e.g. `disable`, `reset_mfa` (spec section 5.30 lists them).
    pub action: String,
    pub target: UserId,
    /// The reason given, or what was acted on.
    pub detail: String,
    /// The admin's address, or `offline`.
    pub from: String,
    pub at: Millis,
}

impl Event {
    /// The stable type name stored beside the payload in the log.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::UserRegistered(_) => "UserRegistered",
            Event::EmailClaimed { .. } => "EmailClaimed",
            Event::SessionStarted(_) => "SessionStarted",
            Event::SessionRevoked { .. } => "SessionRevoked",
            Event::DirectConversationStarted { .. } => "DirectConversationStarted",
            Event::MessageSent(_) => "MessageSent",
            Event::GroupCreated { .. } => "GroupCreated",
            Event::MembersAdded { .. } => "MembersAdded",
            Event::MemberRemoved { .. } => "MemberRemoved",
            Event::MemberLeft { .. } => "MemberLeft",
            Event::RoleChanged { .. } => "RoleChanged",
            Event::GroupRenamed { .. } => "GroupRenamed",
            Event::DeliveredUpTo { .. } => "DeliveredUpTo",
            Event::ReadUpTo { .. } => "ReadUpTo",
            Event::PrivacyChanged { .. } => "PrivacyChanged",
            Event::PushSubscribed(_) => "PushSubscribed",
            Event::DeviceKeyRegistered { .. } => "DeviceKeyRegistered",
            Event::ConversationEncrypted { .. } => "ConversationEncrypted",
            Event::MlsEpochClosed { .. } => "MlsEpochClosed",
            Event::PushUnsubscribed { .. } => "PushUnsubscribed",
            Event::PushPreviewsSet { .. } => "PushPreviewsSet",
            Event::ConversationMuted { .. } => "ConversationMuted",
            Event::ConversationUnmuted { .. } => "ConversationUnmuted",
            Event::PasswordChanged { .. } => "PasswordChanged",
            Event::EmailVerified { .. } => "EmailVerified",
            Event::TotpEnabled { .. } => "TotpEnabled",
            Event::TotpDisabled { .. } => "TotpDisabled",
            Event::AdminGranted { .. } => "AdminGranted",
            Event::AdminRevoked { .. } => "AdminRevoked",
            Event::AccountDisabled { .. } => "AccountDisabled",
            Event::AccountEnabled { .. } => "AccountEnabled",
            Event::Redacted { .. } => "Redacted",
            Event::AccountErased { .. } => "AccountErased",
            Event::RetentionSet { .. } => "RetentionSet",
            Event::GroupDeleted { .. } => "GroupDeleted",
            Event::MessagesExpired { .. } => "MessagesExpired",
            Event::AdminActed(_) => "AdminActed",
            Event::RecoveryCodesIssued { .. } => "RecoveryCodesIssued",
            Event::RecoveryCodeUsed { .. } => "RecoveryCodeUsed",
            Event::PhoneClaimed { .. } => "PhoneClaimed",
            Event::PhoneAdded { .. } => "PhoneAdded",
            Event::PhoneReleased { .. } => "PhoneReleased",
            Event::PhoneRemoved { .. } => "PhoneRemoved",
            Event::AccountOpened(_) => "AccountOpened",
            Event::MediaUploaded(_) => "MediaUploaded",
            Event::MediaDiscarded { .. } => "MediaDiscarded",
            Event::BlobCollected { .. } => "BlobCollected",
            Event::BlobErased { .. } => "BlobErased",
            Event::IdentityClaimed { .. } => "IdentityClaimed",
            Event::IdentityReleased { .. } => "IdentityReleased",
            Event::IdentityLinked { .. } => "IdentityLinked",
            Event::IdentityUnlinked { .. } => "IdentityUnlinked",
        }
    }

    /// Whether this event changes a conversation's shape (its members, their
    /// roles, its name) rather than only adding to it (messages, receipts).
    pub fn changes_group(&self) -> bool {
        matches!(
            self,
            Event::DirectConversationStarted { .. }
                | Event::GroupCreated { .. }
                | Event::MembersAdded { .. }
                | Event::MemberRemoved { .. }
                | Event::MemberLeft { .. }
                | Event::RoleChanged { .. }
                | Event::GroupRenamed { .. }
                | Event::GroupDeleted { .. }
        )
    }

    /// The conversation this event belongs to, if any.
    pub fn conversation_id(&self) -> Option<ConversationId> {
        match self {
            Event::DirectConversationStarted { conversation_id, .. }
            | Event::GroupCreated { conversation_id, .. }
            | Event::MembersAdded { conversation_id, .. }
            | Event::MemberRemoved { conversation_id, .. }
            | Event::MemberLeft { conversation_id, .. }
            | Event::RoleChanged { conversation_id, .. }
            | Event::GroupRenamed { conversation_id, .. }
            | Event::GroupDeleted { conversation_id, .. }
            | Event::DeliveredUpTo { conversation_id, .. }
            | Event::ConversationEncrypted { conversation_id, .. }
            | Event::RetentionSet { conversation_id, .. }
            | Event::MessagesExpired { conversation_id, .. }
            | Event::ReadUpTo { conversation_id, .. } => Some(*conversation_id),
            Event::MessageSent(m) => Some(m.conversation_id),
            Event::UserRegistered(_)
            | Event::EmailClaimed { .. }
            | Event::SessionStarted(_)
            | Event::SessionRevoked { .. }
            | Event::PrivacyChanged { .. }
            | Event::PasswordChanged { .. }
            | Event::EmailVerified { .. }
            | Event::TotpEnabled { .. }
            | Event::TotpDisabled { .. }
            | Event::AdminGranted { .. }
            | Event::AdminRevoked { .. }
            | Event::AccountDisabled { .. }
            | Event::AccountEnabled { .. }
            | Event::AdminActed(_)
            | Event::RecoveryCodesIssued { .. }
            | Event::RecoveryCodeUsed { .. }
            | Event::PhoneClaimed { .. }
            | Event::PhoneAdded { .. }
            | Event::PhoneReleased { .. }
            | Event::PhoneRemoved { .. }
            | Event::AccountOpened(_)
            | Event::MediaUploaded(_)
            | Event::MediaDiscarded { .. }
            | Event::BlobCollected { .. }
            | Event::BlobErased { .. }
            | Event::IdentityClaimed { .. }
            | Event::IdentityReleased { .. }
            | Event::IdentityLinked { .. }
            | Event::IdentityUnlinked { .. }
            | Event::PushSubscribed(_)
            | Event::DeviceKeyRegistered { .. }
            // In its own stream (`mls:`), outside the conversation's order.
            | Event::MlsEpochClosed { .. }
            | Event::PushUnsubscribed { .. }
            | Event::PushPreviewsSet { .. }
            | Event::ConversationMuted { .. }
            | Event::ConversationUnmuted { .. }
            | Event::Redacted { .. }
            | Event::AccountErased { .. } => None,
        }
    }
}
