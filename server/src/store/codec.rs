//! Domain events ↔ the stored event schema (`natter.events.v1`), by hand.
//!
//! Every stored row carries the event's type name and schema version; `decode`
//! matches on both and upcasts older versions to today's domain event. A new
//! schema version adds an arm here; old rows are never rewritten.

use prost::Message;
use uuid::Uuid;

use crate::domain::{
    AccountOpened, ClientMsgId, Content, ConversationId, DeviceId, Email, Event, ExternalIdentity, IdentityProvider,
    MediaId, MediaRef, MediaUploaded, MessageSent, Millis, Phone, PushSubscription, Role, Seq, SessionStarted,
    SignInMethod, TokenHash, Unsubscribed, UserId, UserRegistered,
};
use natter_proto::events as pb;

/// Schema version written for every event type today.
pub const CURRENT_SCHEMA_VERSION: u32 = 1;

/// Encodes an event for storage: `(type name, schema version, payload)`.
pub fn encode(event: &Event) -> (&'static str, u32, Vec<u8>) {
    let payload = match event {
        Event::UserRegistered(e) => pb::UserRegistered {
            user_id: e.user_id.to_string(),
            email: e.email.as_str().to_owned(),
            display_name: e.display_name.clone(),
            password_hash: e.password_hash.clone(),
            at_ms: e.at.0,
        }
        .encode_to_vec(),
        Event::EmailClaimed { user_id, at } => {
            pb::EmailClaimed { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::SessionStarted(e) => pb::SessionStarted {
            user_id: e.user_id.to_string(),
            device_id: e.device_id.to_string(),
            device_name: e.device_name.clone(),
            token_hash: e.token_hash.0.to_vec(),
            at_ms: e.at.0,
            method: e.method.as_str().to_owned(),
        }
        .encode_to_vec(),
        Event::SessionRevoked { user_id, token_hash, at } => {
            pb::SessionRevoked { user_id: user_id.to_string(), token_hash: token_hash.0.to_vec(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::DirectConversationStarted { conversation_id, members, at } => pb::DirectConversationStarted {
            conversation_id: conversation_id.to_string(),
            member_user_ids: members.iter().map(ToString::to_string).collect(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::MessageSent(m) => pb::MessageSent {
            conversation_id: m.conversation_id.to_string(),
            sender_user_id: m.sender_user_id.to_string(),
            sender_device_id: m.sender_device_id.to_string(),
            client_msg_id: m.client_msg_id.as_str().to_owned(),
            content: Some(encode_content(&m.content)),
            at_ms: m.at.0,
        }
        .encode_to_vec(),
        Event::GroupCreated { conversation_id, name, creator, members, at } => pb::GroupCreated {
            conversation_id: conversation_id.to_string(),
            name: name.clone(),
            creator_user_id: creator.to_string(),
            members: group_members(members),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::MembersAdded { conversation_id, actor, members, at } => pb::MembersAdded {
            conversation_id: conversation_id.to_string(),
            actor_user_id: actor.to_string(),
            members: group_members(members),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::MemberRemoved { conversation_id, actor, user, at } => pb::MemberRemoved {
            conversation_id: conversation_id.to_string(),
            actor_user_id: actor.to_string(),
            user_id: user.to_string(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::MemberLeft { conversation_id, user, at } => {
            pb::MemberLeft { conversation_id: conversation_id.to_string(), user_id: user.to_string(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::RoleChanged { conversation_id, actor, user, role, at } => pb::RoleChanged {
            conversation_id: conversation_id.to_string(),
            actor_user_id: actor.map(|a| a.to_string()).unwrap_or_default(),
            user_id: user.to_string(),
            role: role_to_pb(*role) as i32,
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::GroupRenamed { conversation_id, actor, name, at } => pb::GroupRenamed {
            conversation_id: conversation_id.to_string(),
            actor_user_id: actor.to_string(),
            name: name.clone(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::DeliveredUpTo { conversation_id, user, device, seq, at } => pb::DeliveredUpTo {
            conversation_id: conversation_id.to_string(),
            user_id: user.to_string(),
            device_id: device.to_string(),
            seq: seq.0,
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::PasswordChanged { user_id, password_hash, at } => {
            pb::PasswordChanged { user_id: user_id.to_string(), password_hash: password_hash.clone(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::EmailVerified { user_id, email, at } => {
            pb::EmailVerified { user_id: user_id.to_string(), email: email.as_str().to_owned(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::TotpEnabled { user_id, sealed_secret, recovery_codes, at } => pb::TotpEnabled {
            user_id: user_id.to_string(),
            sealed_secret: sealed_secret.clone(),
            recovery_code_hashes: recovery_codes.iter().map(|h| h.to_vec()).collect(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::TotpDisabled { user_id, at } => {
            pb::TotpDisabled { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::AdminGranted { user_id, by, at } => {
            pb::AdminGranted { user_id: user_id.to_string(), by_user_id: optional_id(*by), at_ms: at.0 }.encode_to_vec()
        }
        Event::AdminRevoked { user_id, by, at } => {
            pb::AdminRevoked { user_id: user_id.to_string(), by_user_id: optional_id(*by), at_ms: at.0 }.encode_to_vec()
        }
        Event::AccountDisabled { user_id, by, at } => {
            pb::AccountDisabled { user_id: user_id.to_string(), by_user_id: optional_id(*by), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::AccountEnabled { user_id, by, at } => {
            pb::AccountEnabled { user_id: user_id.to_string(), by_user_id: optional_id(*by), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::GroupDeleted { conversation_id, by, at } => {
            pb::GroupDeleted { conversation_id: conversation_id.to_string(), by_user_id: optional_id(*by), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::RetentionSet { conversation_id, actor, max_age_secs, at } => pb::RetentionSet {
            conversation_id: conversation_id.to_string(),
            actor_user_id: actor.to_string(),
            max_age_secs: *max_age_secs,
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::MessagesExpired { conversation_id, before, at } => {
            pb::MessagesExpired { conversation_id: conversation_id.to_string(), before_ms: before.0, at_ms: at.0 }
                .encode_to_vec()
        }
        Event::Redacted { was, at } => pb::Redacted { was: was.clone(), at_ms: at.0 }.encode_to_vec(),
        Event::AccountErased { user_id, by, registered_at, at } => pb::AccountErased {
            user_id: user_id.to_string(),
            by_user_id: optional_id(*by),
            registered_at_ms: registered_at.0,
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::AdminActed(a) => pb::AdminActed {
            actor_user_id: optional_id(a.actor),
            action: a.action.clone(),
            target_user_id: a.target.to_string(),
            detail: a.detail.clone(),
            from: a.from.clone(),
            at_ms: a.at.0,
        }
        .encode_to_vec(),
        Event::RecoveryCodesIssued { user_id, recovery_codes, at } => pb::RecoveryCodesIssued {
            user_id: user_id.to_string(),
            recovery_code_hashes: recovery_codes.iter().map(|h| h.to_vec()).collect(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::RecoveryCodeUsed { user_id, code_hash, at } => {
            pb::RecoveryCodeUsed { user_id: user_id.to_string(), code_hash: code_hash.to_vec(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::PhoneClaimed { user_id, at } => {
            pb::PhoneClaimed { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::PhoneAdded { user_id, phone, at } => {
            pb::PhoneAdded { user_id: user_id.to_string(), phone: phone.as_str().to_owned(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::PhoneReleased { user_id, at } => {
            pb::PhoneReleased { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::PhoneRemoved { user_id, phone, at } => {
            pb::PhoneRemoved { user_id: user_id.to_string(), phone: phone.as_str().to_owned(), at_ms: at.0 }
                .encode_to_vec()
        }
        Event::MediaUploaded(m) => pb::MediaUploaded {
            media_id: m.media_id.to_string(),
            uploader_user_id: m.uploader.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sha256: m.sha256.to_vec(),
            size: m.size,
            mime_type: m.mime_type.clone(),
            file_name: m.file_name.clone(),
            width: m.width,
            height: m.height,
            at_ms: m.at.0,
            preview_of: m.preview_of.map(|p| p.to_string()).unwrap_or_default(),
            preview_media_id: m.preview.map(|p| p.to_string()).unwrap_or_default(),
            duration_ms: m.duration_ms,
        }
        .encode_to_vec(),
        Event::MediaDiscarded { media_id, sha256, at } => {
            pb::MediaDiscarded { media_id: media_id.to_string(), sha256: sha256.to_vec(), at_ms: at.0 }.encode_to_vec()
        }
        Event::BlobCollected { sha256, at } => {
            pb::BlobCollected { sha256: sha256.to_vec(), at_ms: at.0 }.encode_to_vec()
        }
        Event::BlobErased { sha256, at } => pb::BlobErased { sha256: sha256.to_vec(), at_ms: at.0 }.encode_to_vec(),
        Event::AccountOpened(a) => pb::AccountOpened {
            user_id: a.user_id.to_string(),
            display_name: a.display_name.clone(),
            email: a.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
            email_verified: a.email_verified,
            at_ms: a.at.0,
        }
        .encode_to_vec(),
        Event::IdentityClaimed { user_id, at } => {
            pb::IdentityClaimed { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::IdentityReleased { user_id, at } => {
            pb::IdentityReleased { user_id: user_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::IdentityLinked { user_id, identity, at } => pb::IdentityLinked {
            user_id: user_id.to_string(),
            provider: identity.provider.as_str().to_owned(),
            subject: identity.subject.clone(),
            email: identity.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::IdentityUnlinked { user_id, provider, subject, at } => pb::IdentityUnlinked {
            user_id: user_id.to_string(),
            provider: provider.as_str().to_owned(),
            subject: subject.clone(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::PrivacyChanged { user_id, hide_last_seen, at } => {
            pb::PrivacyChanged { user_id: user_id.to_string(), hide_last_seen: *hide_last_seen, at_ms: at.0 }
                .encode_to_vec()
        }
        Event::PushSubscribed(p) => pb::PushSubscribed {
            user_id: p.user_id.to_string(),
            device_id: p.device_id.0.to_string(),
            endpoint: p.endpoint.clone(),
            p256dh: p.p256dh.clone(),
            auth: p.auth.clone(),
            at_ms: p.at.0,
        }
        .encode_to_vec(),
        Event::ConversationEncrypted { conversation_id, at } => {
            pb::ConversationEncrypted { conversation_id: conversation_id.to_string(), at_ms: at.0 }.encode_to_vec()
        }
        Event::MlsEpochClosed { conversation_id, epoch, group_info, at } => pb::MlsEpochClosed {
            conversation_id: conversation_id.to_string(),
            epoch: *epoch,
            at_ms: at.0,
            group_info: group_info.clone(),
        }
        .encode_to_vec(),
        Event::DeviceKeyRegistered { user_id, device_id, signature_key, at } => pb::DeviceKeyRegistered {
            user_id: user_id.to_string(),
            device_id: device_id.0.to_string(),
            signature_key: signature_key.clone(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::PushUnsubscribed { user_id, device_id, endpoint, reason, at } => pb::PushUnsubscribed {
            user_id: user_id.to_string(),
            device_id: device_id.0.to_string(),
            endpoint: endpoint.clone(),
            reason: reason.as_str().to_owned(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::PushPreviewsSet { user_id, show_text, at } => {
            pb::PushPreviewsSet { user_id: user_id.to_string(), show_text: *show_text, at_ms: at.0 }.encode_to_vec()
        }
        Event::ConversationMuted { user_id, conversation_id, until, at } => pb::ConversationMuted {
            user_id: user_id.to_string(),
            conversation_id: conversation_id.to_string(),
            until_ms: until.map_or(0, |u| u.0),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::ConversationUnmuted { user_id, conversation_id, at } => pb::ConversationUnmuted {
            user_id: user_id.to_string(),
            conversation_id: conversation_id.to_string(),
            at_ms: at.0,
        }
        .encode_to_vec(),
        Event::ReadUpTo { conversation_id, user, seq, at } => pb::ReadUpTo {
            conversation_id: conversation_id.to_string(),
            user_id: user.to_string(),
            seq: seq.0,
            at_ms: at.0,
        }
        .encode_to_vec(),
    };
    (event.type_name(), CURRENT_SCHEMA_VERSION, payload)
}

fn role_to_pb(role: Role) -> pb::GroupRole {
    match role {
        Role::Member => pb::GroupRole::Member,
        Role::Admin => pb::GroupRole::Admin,
        Role::Owner => pb::GroupRole::Owner,
    }
}

fn role_from_pb(raw: i32) -> Result<Role, String> {
    match pb::GroupRole::try_from(raw) {
        Ok(pb::GroupRole::Member) => Ok(Role::Member),
        Ok(pb::GroupRole::Admin) => Ok(Role::Admin),
        Ok(pb::GroupRole::Owner) => Ok(Role::Owner),
        _ => Err(format!("unknown group role {raw}")),
    }
}

fn group_members(members: &[(UserId, Role)]) -> Vec<pb::GroupMember> {
    members.iter().map(|(u, r)| pb::GroupMember { user_id: u.to_string(), role: role_to_pb(*r) as i32 }).collect()
}

fn group_members_from(members: Vec<pb::GroupMember>) -> Result<Vec<(UserId, Role)>, String> {
    members.into_iter().map(|m| Ok((UserId(uuid(&m.user_id)?), role_from_pb(m.role)?))).collect()
}

/// Message content as the log stores it (the read models keep it too, for
/// content other than text).
pub fn encode_content(content: &Content) -> pb::MessageContent {
    let body = match content {
        Content::Text(body) => pb::message_content::Body::Text(pb::TextContent { body: body.clone() }),
        Content::Media(m) => pb::message_content::Body::Media(pb::MediaContent {
            media_id: m.media_id.to_string(),
            file_name: m.file_name.clone(),
            mime_type: m.mime_type.clone(),
            size: m.size,
            sha256: m.sha256.to_vec(),
            width: m.width,
            height: m.height,
            duration_ms: m.duration_ms,
            caption: m.caption.clone(),
            preview_media_id: m.preview.map(|p| p.to_string()).unwrap_or_default(),
        }),
        Content::Mls { message, media } => pb::message_content::Body::Mls(pb::MlsContent {
            message: message.clone(),
            media_id: media.map(|m| m.to_string()).unwrap_or_default(),
        }),
        Content::MlsCommit { commit, welcome, group_info, epoch } => {
            pb::message_content::Body::MlsCommit(pb::MlsCommitContent {
                commit: commit.clone(),
                welcome: welcome.clone(),
                group_info: group_info.clone(),
                epoch: *epoch,
            })
        }
        Content::Erased => pb::message_content::Body::Erased(pb::ErasedContent {}),
    };
    pb::MessageContent { body: Some(body) }
}

/// The inverse of [`encode_content`].
///
/// # Errors
/// No content, or a malformed media reference.
pub fn decode_content(content: Option<pb::MessageContent>) -> Result<Content, String> {
    Ok(match content.and_then(|c| c.body) {
        Some(pb::message_content::Body::Text(t)) => Content::Text(t.body),
        Some(pb::message_content::Body::Media(m)) => Content::Media(MediaRef {
            media_id: MediaId(uuid(&m.media_id)?),
            file_name: m.file_name,
            mime_type: m.mime_type,
            size: m.size,
            sha256: token_hash(&m.sha256).map_err(|_| "media sha256 is not 32 bytes".to_owned())?.0,
            width: m.width,
            height: m.height,
            duration_ms: m.duration_ms,
            caption: m.caption,
            preview: if m.preview_media_id.is_empty() { None } else { Some(MediaId(uuid(&m.preview_media_id)?)) },
        }),
        Some(pb::message_content::Body::Mls(m)) => Content::Mls {
            message: m.message,
            media: if m.media_id.is_empty() { None } else { Some(MediaId(uuid(&m.media_id)?)) },
        },
        Some(pb::message_content::Body::MlsCommit(c)) => {
            Content::MlsCommit { commit: c.commit, welcome: c.welcome, group_info: c.group_info, epoch: c.epoch }
        }
        Some(pb::message_content::Body::Erased(_)) => Content::Erased,
        None => return Err("message without content".into()),
    })
}

/// Decodes (and, for older schema versions, upcasts) a stored event.
///
/// # Errors
/// A description of what is wrong: unknown type or version, undecodable payload,
/// invalid identifiers. The caller turns it into `StoreError::Corrupt`.
pub fn decode(type_name: &str, schema_version: u32, payload: &[u8]) -> Result<Event, String> {
    if schema_version != CURRENT_SCHEMA_VERSION {
        return Err(format!("{type_name} has unknown schema version {schema_version}"));
    }
    let bad = |e: prost::DecodeError| format!("{type_name}: {e}");
    Ok(match type_name {
        "UserRegistered" => {
            let e = pb::UserRegistered::decode(payload).map_err(bad)?;
            Event::UserRegistered(UserRegistered {
                user_id: UserId(uuid(&e.user_id)?),
                email: Email::from_normalized(e.email),
                display_name: e.display_name,
                password_hash: e.password_hash,
                at: Millis(e.at_ms),
            })
        }
        "EmailClaimed" => {
            let e = pb::EmailClaimed::decode(payload).map_err(bad)?;
            Event::EmailClaimed { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "SessionStarted" => {
            let e = pb::SessionStarted::decode(payload).map_err(bad)?;
            Event::SessionStarted(SessionStarted {
                user_id: UserId(uuid(&e.user_id)?),
                device_id: DeviceId(uuid(&e.device_id)?),
                device_name: e.device_name,
                token_hash: token_hash(&e.token_hash)?,
                method: SignInMethod::parse(&e.method)
                    .ok_or_else(|| format!("unknown sign-in method {:?}", e.method))?,
                at: Millis(e.at_ms),
            })
        }
        "SessionRevoked" => {
            let e = pb::SessionRevoked::decode(payload).map_err(bad)?;
            Event::SessionRevoked {
                user_id: UserId(uuid(&e.user_id)?),
                token_hash: token_hash(&e.token_hash)?,
                at: Millis(e.at_ms),
            }
        }
        "DirectConversationStarted" => {
            let e = pb::DirectConversationStarted::decode(payload).map_err(bad)?;
            let [a, b] = e.member_user_ids.as_slice() else {
                return Err("DirectConversationStarted needs exactly two members".into());
            };
            Event::DirectConversationStarted {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                members: [UserId(uuid(a)?), UserId(uuid(b)?)],
                at: Millis(e.at_ms),
            }
        }
        "MessageSent" => {
            let e = pb::MessageSent::decode(payload).map_err(bad)?;
            let content = decode_content(e.content)?;
            Event::MessageSent(MessageSent {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                sender_user_id: UserId(uuid(&e.sender_user_id)?),
                sender_device_id: DeviceId(uuid(&e.sender_device_id)?),
                client_msg_id: ClientMsgId::parse(&e.client_msg_id).map_err(|r| r.to_string())?,
                content,
                at: Millis(e.at_ms),
            })
        }
        "GroupCreated" => {
            let e = pb::GroupCreated::decode(payload).map_err(bad)?;
            Event::GroupCreated {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                name: e.name,
                creator: UserId(uuid(&e.creator_user_id)?),
                members: group_members_from(e.members)?,
                at: Millis(e.at_ms),
            }
        }
        "MembersAdded" => {
            let e = pb::MembersAdded::decode(payload).map_err(bad)?;
            Event::MembersAdded {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                actor: UserId(uuid(&e.actor_user_id)?),
                members: group_members_from(e.members)?,
                at: Millis(e.at_ms),
            }
        }
        "MemberRemoved" => {
            let e = pb::MemberRemoved::decode(payload).map_err(bad)?;
            Event::MemberRemoved {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                actor: UserId(uuid(&e.actor_user_id)?),
                user: UserId(uuid(&e.user_id)?),
                at: Millis(e.at_ms),
            }
        }
        "MemberLeft" => {
            let e = pb::MemberLeft::decode(payload).map_err(bad)?;
            Event::MemberLeft {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                user: UserId(uuid(&e.user_id)?),
                at: Millis(e.at_ms),
            }
        }
        "RoleChanged" => {
            let e = pb::RoleChanged::decode(payload).map_err(bad)?;
            Event::RoleChanged {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                actor: if e.actor_user_id.is_empty() { None } else { Some(UserId(uuid(&e.actor_user_id)?)) },
                user: UserId(uuid(&e.user_id)?),
                role: role_from_pb(e.role)?,
                at: Millis(e.at_ms),
            }
        }
        "GroupRenamed" => {
            let e = pb::GroupRenamed::decode(payload).map_err(bad)?;
            Event::GroupRenamed {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                actor: UserId(uuid(&e.actor_user_id)?),
                name: e.name,
                at: Millis(e.at_ms),
            }
        }
        "DeliveredUpTo" => {
            let e = pb::DeliveredUpTo::decode(payload).map_err(bad)?;
            Event::DeliveredUpTo {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                user: UserId(uuid(&e.user_id)?),
                device: DeviceId(uuid(&e.device_id)?),
                seq: Seq(e.seq),
                at: Millis(e.at_ms),
            }
        }
        "ReadUpTo" => {
            let e = pb::ReadUpTo::decode(payload).map_err(bad)?;
            Event::ReadUpTo {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                user: UserId(uuid(&e.user_id)?),
                seq: Seq(e.seq),
                at: Millis(e.at_ms),
            }
        }
        "PasswordChanged" => {
            let e = pb::PasswordChanged::decode(payload).map_err(bad)?;
            Event::PasswordChanged {
                user_id: UserId(uuid(&e.user_id)?),
                password_hash: e.password_hash,
                at: Millis(e.at_ms),
            }
        }
        "EmailVerified" => {
            let e = pb::EmailVerified::decode(payload).map_err(bad)?;
            Event::EmailVerified {
                user_id: UserId(uuid(&e.user_id)?),
                email: Email::parse(&e.email).map_err(|r| r.to_string())?,
                at: Millis(e.at_ms),
            }
        }
        "TotpEnabled" => {
            let e = pb::TotpEnabled::decode(payload).map_err(bad)?;
            Event::TotpEnabled {
                user_id: UserId(uuid(&e.user_id)?),
                sealed_secret: e.sealed_secret,
                recovery_codes: hashes(&e.recovery_code_hashes)?,
                at: Millis(e.at_ms),
            }
        }
        "TotpDisabled" => {
            let e = pb::TotpDisabled::decode(payload).map_err(bad)?;
            Event::TotpDisabled { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "AdminGranted" => {
            let e = pb::AdminGranted::decode(payload).map_err(bad)?;
            Event::AdminGranted {
                user_id: UserId(uuid(&e.user_id)?),
                by: optional_user(&e.by_user_id)?,
                at: Millis(e.at_ms),
            }
        }
        "AdminRevoked" => {
            let e = pb::AdminRevoked::decode(payload).map_err(bad)?;
            Event::AdminRevoked {
                user_id: UserId(uuid(&e.user_id)?),
                by: optional_user(&e.by_user_id)?,
                at: Millis(e.at_ms),
            }
        }
        "AccountDisabled" => {
            let e = pb::AccountDisabled::decode(payload).map_err(bad)?;
            Event::AccountDisabled {
                user_id: UserId(uuid(&e.user_id)?),
                by: optional_user(&e.by_user_id)?,
                at: Millis(e.at_ms),
            }
        }
        "AccountEnabled" => {
            let e = pb::AccountEnabled::decode(payload).map_err(bad)?;
            Event::AccountEnabled {
                user_id: UserId(uuid(&e.user_id)?),
                by: optional_user(&e.by_user_id)?,
                at: Millis(e.at_ms),
            }
        }
        "GroupDeleted" => {
            let e = pb::GroupDeleted::decode(payload).map_err(bad)?;
            Event::GroupDeleted {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                by: optional_user(&e.by_user_id)?,
                at: Millis(e.at_ms),
            }
        }
        "RetentionSet" => {
            let e = pb::RetentionSet::decode(payload).map_err(bad)?;
            Event::RetentionSet {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                actor: UserId(uuid(&e.actor_user_id)?),
                max_age_secs: e.max_age_secs,
                at: Millis(e.at_ms),
            }
        }
        "MessagesExpired" => {
            let e = pb::MessagesExpired::decode(payload).map_err(bad)?;
            Event::MessagesExpired {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                before: Millis(e.before_ms),
                at: Millis(e.at_ms),
            }
        }
        "Redacted" => {
            let e = pb::Redacted::decode(payload).map_err(bad)?;
            Event::Redacted { was: e.was, at: Millis(e.at_ms) }
        }
        "AccountErased" => {
            let e = pb::AccountErased::decode(payload).map_err(bad)?;
            Event::AccountErased {
                user_id: UserId(uuid(&e.user_id)?),
                by: optional_user(&e.by_user_id)?,
                registered_at: Millis(e.registered_at_ms),
                at: Millis(e.at_ms),
            }
        }
        "AdminActed" => {
            let e = pb::AdminActed::decode(payload).map_err(bad)?;
            Event::AdminActed(crate::domain::AdminAction {
                actor: optional_user(&e.actor_user_id)?,
                action: e.action,
                target: UserId(uuid(&e.target_user_id)?),
                detail: e.detail,
                from: e.from,
                at: Millis(e.at_ms),
            })
        }
        "RecoveryCodesIssued" => {
            let e = pb::RecoveryCodesIssued::decode(payload).map_err(bad)?;
            Event::RecoveryCodesIssued {
                user_id: UserId(uuid(&e.user_id)?),
                recovery_codes: hashes(&e.recovery_code_hashes)?,
                at: Millis(e.at_ms),
            }
        }
        "RecoveryCodeUsed" => {
            let e = pb::RecoveryCodeUsed::decode(payload).map_err(bad)?;
            Event::RecoveryCodeUsed {
                user_id: UserId(uuid(&e.user_id)?),
                code_hash: token_hash(&e.code_hash)?.0,
                at: Millis(e.at_ms),
            }
        }
        "PhoneClaimed" => {
            let e = pb::PhoneClaimed::decode(payload).map_err(bad)?;
            Event::PhoneClaimed { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "PhoneAdded" => {
            let e = pb::PhoneAdded::decode(payload).map_err(bad)?;
            Event::PhoneAdded {
                user_id: UserId(uuid(&e.user_id)?),
                phone: Phone::from_normalized(e.phone),
                at: Millis(e.at_ms),
            }
        }
        "PhoneReleased" => {
            let e = pb::PhoneReleased::decode(payload).map_err(bad)?;
            Event::PhoneReleased { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "PhoneRemoved" => {
            let e = pb::PhoneRemoved::decode(payload).map_err(bad)?;
            Event::PhoneRemoved {
                user_id: UserId(uuid(&e.user_id)?),
                phone: Phone::from_normalized(e.phone),
                at: Millis(e.at_ms),
            }
        }
        "MediaUploaded" => {
            let e = pb::MediaUploaded::decode(payload).map_err(bad)?;
            Event::MediaUploaded(MediaUploaded {
                media_id: MediaId(uuid(&e.media_id)?),
                uploader: UserId(uuid(&e.uploader_user_id)?),
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                sha256: sha256(&e.sha256)?,
                size: e.size,
                mime_type: e.mime_type,
                file_name: e.file_name,
                width: e.width,
                height: e.height,
                at: Millis(e.at_ms),
                preview_of: optional_media(&e.preview_of)?,
                preview: optional_media(&e.preview_media_id)?,
                duration_ms: e.duration_ms,
            })
        }
        "MediaDiscarded" => {
            let e = pb::MediaDiscarded::decode(payload).map_err(bad)?;
            Event::MediaDiscarded {
                media_id: MediaId(uuid(&e.media_id)?),
                sha256: sha256(&e.sha256)?,
                at: Millis(e.at_ms),
            }
        }
        "BlobCollected" => {
            let e = pb::BlobCollected::decode(payload).map_err(bad)?;
            Event::BlobCollected { sha256: sha256(&e.sha256)?, at: Millis(e.at_ms) }
        }
        "BlobErased" => {
            let e = pb::BlobErased::decode(payload).map_err(bad)?;
            Event::BlobErased { sha256: sha256(&e.sha256)?, at: Millis(e.at_ms) }
        }
        "AccountOpened" => {
            let e = pb::AccountOpened::decode(payload).map_err(bad)?;
            Event::AccountOpened(AccountOpened {
                user_id: UserId(uuid(&e.user_id)?),
                display_name: e.display_name,
                email: optional_email(e.email),
                email_verified: e.email_verified,
                at: Millis(e.at_ms),
            })
        }
        "IdentityClaimed" => {
            let e = pb::IdentityClaimed::decode(payload).map_err(bad)?;
            Event::IdentityClaimed { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "IdentityReleased" => {
            let e = pb::IdentityReleased::decode(payload).map_err(bad)?;
            Event::IdentityReleased { user_id: UserId(uuid(&e.user_id)?), at: Millis(e.at_ms) }
        }
        "IdentityLinked" => {
            let e = pb::IdentityLinked::decode(payload).map_err(bad)?;
            Event::IdentityLinked {
                user_id: UserId(uuid(&e.user_id)?),
                identity: ExternalIdentity {
                    provider: provider(&e.provider)?,
                    subject: e.subject,
                    email: optional_email(e.email),
                },
                at: Millis(e.at_ms),
            }
        }
        "IdentityUnlinked" => {
            let e = pb::IdentityUnlinked::decode(payload).map_err(bad)?;
            Event::IdentityUnlinked {
                user_id: UserId(uuid(&e.user_id)?),
                provider: provider(&e.provider)?,
                subject: e.subject,
                at: Millis(e.at_ms),
            }
        }
        "PrivacyChanged" => {
            let e = pb::PrivacyChanged::decode(payload).map_err(bad)?;
            Event::PrivacyChanged {
                user_id: UserId(uuid(&e.user_id)?),
                hide_last_seen: e.hide_last_seen,
                at: Millis(e.at_ms),
            }
        }
        "PushSubscribed" => {
            let e = pb::PushSubscribed::decode(payload).map_err(bad)?;
            Event::PushSubscribed(PushSubscription {
                user_id: UserId(uuid(&e.user_id)?),
                device_id: DeviceId(uuid(&e.device_id)?),
                endpoint: e.endpoint,
                p256dh: e.p256dh,
                auth: e.auth,
                at: Millis(e.at_ms),
            })
        }
        "ConversationEncrypted" => {
            let e = pb::ConversationEncrypted::decode(payload).map_err(bad)?;
            Event::ConversationEncrypted {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                at: Millis(e.at_ms),
            }
        }
        "MlsEpochClosed" => {
            let e = pb::MlsEpochClosed::decode(payload).map_err(bad)?;
            Event::MlsEpochClosed {
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                epoch: e.epoch,
                group_info: e.group_info,
                at: Millis(e.at_ms),
            }
        }
        "DeviceKeyRegistered" => {
            let e = pb::DeviceKeyRegistered::decode(payload).map_err(bad)?;
            Event::DeviceKeyRegistered {
                user_id: UserId(uuid(&e.user_id)?),
                device_id: DeviceId(uuid(&e.device_id)?),
                signature_key: e.signature_key,
                at: Millis(e.at_ms),
            }
        }
        "PushUnsubscribed" => {
            let e = pb::PushUnsubscribed::decode(payload).map_err(bad)?;
            Event::PushUnsubscribed {
                user_id: UserId(uuid(&e.user_id)?),
                device_id: DeviceId(uuid(&e.device_id)?),
                endpoint: e.endpoint,
                reason: Unsubscribed::parse(&e.reason).ok_or_else(|| format!("unknown reason {:?}", e.reason))?,
                at: Millis(e.at_ms),
            }
        }
        "PushPreviewsSet" => {
            let e = pb::PushPreviewsSet::decode(payload).map_err(bad)?;
            Event::PushPreviewsSet { user_id: UserId(uuid(&e.user_id)?), show_text: e.show_text, at: Millis(e.at_ms) }
        }
        "ConversationMuted" => {
            let e = pb::ConversationMuted::decode(payload).map_err(bad)?;
            Event::ConversationMuted {
                user_id: UserId(uuid(&e.user_id)?),
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                until: (e.until_ms != 0).then_some(Millis(e.until_ms)),
                at: Millis(e.at_ms),
            }
        }
        "ConversationUnmuted" => {
            let e = pb::ConversationUnmuted::decode(payload).map_err(bad)?;
            Event::ConversationUnmuted {
                user_id: UserId(uuid(&e.user_id)?),
                conversation_id: ConversationId(uuid(&e.conversation_id)?),
                at: Millis(e.at_ms),
            }
        }
        other => return Err(format!("unknown event type {other:?}")),
    })
}

fn optional_id(user: Option<UserId>) -> String {
    user.map(|u| u.to_string()).unwrap_or_default()
}

fn optional_user(s: &str) -> Result<Option<UserId>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        uuid(s).map(|u| Some(UserId(u)))
    }
}

fn optional_email(s: String) -> Option<Email> {
    (!s.is_empty()).then(|| Email::from_normalized(s))
}

fn provider(s: &str) -> Result<IdentityProvider, String> {
    IdentityProvider::parse(s).ok_or_else(|| format!("unknown identity provider {s:?}"))
}

fn uuid(s: &str) -> Result<Uuid, String> {
    Uuid::try_parse(s).map_err(|e| format!("bad id {s:?}: {e}"))
}

fn sha256(bytes: &[u8]) -> Result<[u8; 32], String> {
    <[u8; 32]>::try_from(bytes).map_err(|_| "a blob's sha256 is not 32 bytes".to_owned())
}

fn optional_media(s: &str) -> Result<Option<MediaId>, String> {
    if s.is_empty() {
        Ok(None)
    } else {
        uuid(s).map(|u| Some(MediaId(u)))
    }
}

fn token_hash(bytes: &[u8]) -> Result<TokenHash, String> {
    <[u8; 32]>::try_from(bytes).map(TokenHash).map_err(|_| "token hash is not 32 bytes".to_owned())
}

fn hashes(list: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, String> {
    list.iter().map(|h| token_hash(h).map(|t| t.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        let u = UserId(Uuid::from_u128(1));
        let v = UserId(Uuid::from_u128(2));
        let conv = ConversationId::direct(u, v);
        vec![
            Event::UserRegistered(UserRegistered {
                user_id: u,
                email: Email::parse("a@example.org").unwrap(),
                display_name: "A".into(),
                password_hash: "$argon2id$v=19$…".into(),
                at: Millis(1),
            }),
            Event::EmailClaimed { user_id: u, at: Millis(2) },
            Event::SessionStarted(SessionStarted {
                user_id: u,
                device_id: DeviceId(Uuid::from_u128(3)),
                device_name: "laptop".into(),
                token_hash: TokenHash([7; 32]),
                method: SignInMethod::Google,
                at: Millis(3),
            }),
            Event::SessionRevoked { user_id: u, token_hash: TokenHash([7; 32]), at: Millis(4) },
            Event::DirectConversationStarted { conversation_id: conv, members: [u, v], at: Millis(5) },
            Event::MessageSent(MessageSent {
                conversation_id: conv,
                sender_user_id: v,
                sender_device_id: DeviceId(Uuid::from_u128(4)),
                client_msg_id: ClientMsgId::parse("m-1").unwrap(),
                content: Content::Text("héllo".into()),
                at: Millis(6),
            }),
            Event::GroupCreated {
                conversation_id: conv,
                name: "team".into(),
                creator: u,
                members: vec![(u, Role::Owner), (v, Role::Member)],
                at: Millis(7),
            },
            Event::MembersAdded { conversation_id: conv, actor: u, members: vec![(v, Role::Admin)], at: Millis(8) },
            Event::MemberRemoved { conversation_id: conv, actor: u, user: v, at: Millis(9) },
            Event::MemberLeft { conversation_id: conv, user: v, at: Millis(10) },
            Event::RoleChanged { conversation_id: conv, actor: None, user: v, role: Role::Owner, at: Millis(11) },
            Event::RoleChanged { conversation_id: conv, actor: Some(u), user: v, role: Role::Admin, at: Millis(12) },
            Event::GroupRenamed { conversation_id: conv, actor: u, name: "new".into(), at: Millis(13) },
            Event::DeliveredUpTo {
                conversation_id: conv,
                user: v,
                device: DeviceId(Uuid::from_u128(4)),
                seq: Seq(3),
                at: Millis(14),
            },
            Event::ReadUpTo { conversation_id: conv, user: v, seq: Seq(2), at: Millis(15) },
            Event::PrivacyChanged { user_id: v, hide_last_seen: true, at: Millis(16) },
            Event::PushSubscribed(PushSubscription {
                user_id: v,
                device_id: DeviceId(Uuid::from_u128(4)),
                endpoint: "https://push.example.net/s/abc".into(),
                p256dh: vec![4; 65],
                auth: vec![9; 16],
                at: Millis(40),
            }),
            Event::PushUnsubscribed {
                user_id: v,
                device_id: DeviceId(Uuid::from_u128(4)),
                endpoint: "https://push.example.net/s/abc".into(),
                reason: Unsubscribed::Gone,
                at: Millis(41),
            },
            Event::DeviceKeyRegistered {
                user_id: v,
                device_id: DeviceId(Uuid::from_u128(4)),
                signature_key: vec![7; 32],
                at: Millis(46),
            },
            Event::ConversationEncrypted { conversation_id: conv, at: Millis(47) },
            Event::MlsEpochClosed { conversation_id: conv, epoch: 3, group_info: vec![5, 6], at: Millis(48) },
            Event::MessageSent(MessageSent {
                conversation_id: conv,
                sender_user_id: u,
                sender_device_id: DeviceId(Uuid::from_u128(4)),
                client_msg_id: ClientMsgId::parse("m-mls").unwrap(),
                content: Content::Mls { message: vec![0, 1, 0, 2, 9], media: Some(MediaId(Uuid::from_u128(77))) },
                at: Millis(49),
            }),
            Event::MessageSent(MessageSent {
                conversation_id: conv,
                sender_user_id: u,
                sender_device_id: DeviceId(Uuid::from_u128(4)),
                client_msg_id: ClientMsgId::parse("m-commit").unwrap(),
                content: Content::MlsCommit { commit: vec![1], welcome: vec![2, 2], group_info: vec![3], epoch: 3 },
                at: Millis(50),
            }),
            Event::MessageSent(MessageSent {
                conversation_id: conv,
                sender_user_id: u,
                sender_device_id: DeviceId(Uuid::from_u128(4)),
                client_msg_id: ClientMsgId::parse("m-erased").unwrap(),
                content: Content::Erased,
                at: Millis(51),
            }),
            Event::PushPreviewsSet { user_id: v, show_text: false, at: Millis(42) },
            Event::ConversationMuted { user_id: v, conversation_id: conv, until: None, at: Millis(43) },
            Event::ConversationMuted { user_id: v, conversation_id: conv, until: Some(Millis(99)), at: Millis(44) },
            Event::ConversationUnmuted { user_id: v, conversation_id: conv, at: Millis(45) },
            Event::PasswordChanged { user_id: u, password_hash: "$argon2id$v=19$x".into(), at: Millis(17) },
            Event::EmailVerified { user_id: u, email: Email::parse("a@example.org").unwrap(), at: Millis(18) },
            Event::TotpEnabled {
                user_id: u,
                sealed_secret: vec![1, 2, 3],
                recovery_codes: vec![[5; 32], [6; 32]],
                at: Millis(19),
            },
            Event::RecoveryCodeUsed { user_id: u, code_hash: [5; 32], at: Millis(20) },
            Event::RecoveryCodesIssued { user_id: u, recovery_codes: vec![[8; 32]], at: Millis(21) },
            Event::TotpDisabled { user_id: u, at: Millis(22) },
            Event::AdminGranted { user_id: u, by: None, at: Millis(60) },
            Event::AdminGranted { user_id: v, by: Some(u), at: Millis(61) },
            Event::AdminRevoked { user_id: v, by: Some(u), at: Millis(62) },
            Event::AccountDisabled { user_id: v, by: Some(u), at: Millis(63) },
            Event::AccountEnabled { user_id: v, by: None, at: Millis(64) },
            Event::Redacted { was: "UserRegistered".into(), at: Millis(65) },
            Event::RetentionSet { conversation_id: conv, actor: u, max_age_secs: 86_400, at: Millis(67) },
            Event::GroupDeleted { conversation_id: conv, by: Some(u), at: Millis(69) },
            Event::GroupDeleted { conversation_id: conv, by: None, at: Millis(70) },
            Event::MessagesExpired { conversation_id: conv, before: Millis(60), at: Millis(68) },
            Event::AccountErased { user_id: v, by: Some(u), registered_at: Millis(1), at: Millis(66) },
            Event::AdminActed(crate::domain::AdminAction {
                actor: Some(u),
                action: "disable".into(),
                target: v,
                detail: "spam".into(),
                from: "192.0.2.7".into(),
                at: Millis(65),
            }),
            Event::AdminActed(crate::domain::AdminAction {
                actor: None,
                action: "grant_admin".into(),
                target: u,
                detail: String::new(),
                from: "offline".into(),
                at: Millis(66),
            }),
            Event::PhoneClaimed { user_id: u, at: Millis(23) },
            Event::PhoneAdded { user_id: u, phone: Phone::parse("+49 151 23456789").unwrap(), at: Millis(24) },
            Event::AccountOpened(AccountOpened {
                user_id: v,
                display_name: "Vee".into(),
                email: None,
                email_verified: false,
                at: Millis(25),
            }),
            Event::AccountOpened(AccountOpened {
                user_id: u,
                display_name: "You".into(),
                email: Some(Email::parse("u@example.org").unwrap()),
                email_verified: true,
                at: Millis(26),
            }),
            Event::PhoneReleased { user_id: u, at: Millis(32) },
            Event::MediaUploaded(MediaUploaded {
                media_id: MediaId(Uuid::from_u128(0x77)),
                uploader: u,
                conversation_id: conv,
                sha256: [0xab; 32],
                size: 123_456,
                mime_type: "image/png".into(),
                file_name: "cat.png".into(),
                width: 640,
                height: 480,
                at: Millis(34),
                preview_of: None,
                preview: Some(MediaId(Uuid::from_u128(0x78))),
                duration_ms: 0,
            }),
            Event::MediaUploaded(MediaUploaded {
                media_id: MediaId(Uuid::from_u128(0x78)),
                uploader: u,
                conversation_id: conv,
                sha256: [0xac; 32],
                size: 9_876,
                mime_type: "image/jpeg".into(),
                file_name: "cat.png".into(),
                width: 320,
                height: 240,
                at: Millis(34),
                preview_of: Some(MediaId(Uuid::from_u128(0x77))),
                preview: None,
                duration_ms: 0,
            }),
            Event::MediaUploaded(MediaUploaded {
                media_id: MediaId(Uuid::from_u128(0x7a)),
                uploader: u,
                conversation_id: conv,
                sha256: [0xae; 32],
                size: 40_000_000,
                mime_type: "video/mp4".into(),
                file_name: "clip.mp4".into(),
                width: 0,
                height: 0,
                at: Millis(34),
                preview_of: None,
                preview: None,
                duration_ms: 93_500,
            }),
            Event::MediaDiscarded { media_id: MediaId(Uuid::from_u128(0x79)), sha256: [0xad; 32], at: Millis(35) },
            Event::BlobCollected { sha256: [0xad; 32], at: Millis(36) },
            Event::BlobErased { sha256: [0xad; 32], at: Millis(37) },
            Event::MessageSent(MessageSent {
                conversation_id: conv,
                sender_user_id: u,
                sender_device_id: DeviceId(Uuid::from_u128(4)),
                client_msg_id: ClientMsgId::parse("m-media").unwrap(),
                content: Content::Media(MediaRef {
                    media_id: MediaId(Uuid::from_u128(0x77)),
                    file_name: "cat.png".into(),
                    mime_type: "image/png".into(),
                    size: 123_456,
                    sha256: [0xab; 32],
                    width: 640,
                    height: 480,
                    duration_ms: 0,
                    caption: "our cat".into(),
                    preview: Some(MediaId(Uuid::from_u128(0x78))),
                }),
                at: Millis(35),
            }),
            Event::PhoneRemoved { user_id: u, phone: Phone::parse("+49 151 23456789").unwrap(), at: Millis(33) },
            Event::IdentityClaimed { user_id: u, at: Millis(27) },
            Event::IdentityReleased { user_id: u, at: Millis(28) },
            Event::IdentityLinked {
                user_id: u,
                identity: ExternalIdentity {
                    provider: IdentityProvider::GitHub,
                    subject: "583231".into(),
                    email: Some(Email::parse("u@example.org").unwrap()),
                },
                at: Millis(29),
            },
            Event::IdentityLinked {
                user_id: v,
                identity: ExternalIdentity { provider: IdentityProvider::Google, subject: "1087".into(), email: None },
                at: Millis(30),
            },
            Event::IdentityUnlinked {
                user_id: u,
                provider: IdentityProvider::GitHub,
                subject: "583231".into(),
                at: Millis(31),
            },
        ]
    }

    #[test]
    fn a_session_from_before_sign_in_methods_is_a_password_session() {
        let old = pb::SessionStarted {
            user_id: Uuid::from_u128(1).to_string(),
            device_id: Uuid::from_u128(2).to_string(),
            device_name: "d".into(),
            token_hash: vec![1; 32],
            at_ms: 3,
            method: String::new(),
        };
        match decode("SessionStarted", 1, &old.encode_to_vec()).unwrap() {
            Event::SessionStarted(s) => assert_eq!(s.method, SignInMethod::Password),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_event_round_trips() {
        for ev in samples() {
            let (ty, ver, bytes) = encode(&ev);
            assert_eq!(decode(ty, ver, &bytes).unwrap(), ev);
        }
    }

    #[test]
    fn unknown_versions_and_types_are_errors_not_panics() {
        let (ty, _, bytes) = encode(&samples()[0]);
        assert!(decode(ty, 99, &bytes).unwrap_err().contains("unknown schema version"));
        assert!(decode("Nope", 1, &bytes).unwrap_err().contains("unknown event type"));
        assert!(decode("MessageSent", 1, &[0xff, 0xff]).is_err());
    }
}
