//! Domain and store records → wire messages, by hand (the edge).

use natter_proto::wire;

use super::{Identity, UserInfo};
use crate::domain::{
    conversation::ConversationKind, conversation::ConversationState, Content, MessageSent, Role, UserId,
};
use crate::store::MessageRecord;

/// An email for the wire: empty for an account without one.
pub fn email_text(email: &Option<crate::domain::Email>) -> String {
    email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_default()
}

pub fn identity(id: &Identity) -> wire::Identity {
    wire::Identity {
        user_id: id.user_id.to_string(),
        device_id: id.device_id.to_string(),
        email: email_text(&id.email),
        display_name: id.display_name.clone(),
    }
}

pub fn role(role: Role) -> wire::Role {
    match role {
        Role::Member => wire::Role::Member,
        Role::Admin => wire::Role::Admin,
        Role::Owner => wire::Role::Owner,
    }
}

/// A member as shown to clients; `role` only for groups.
pub fn member(user: UserId, r: Option<Role>, info: &UserInfo) -> wire::Member {
    wire::Member {
        user_id: user.to_string(),
        email: email_text(&info.email),
        display_name: info.display_name.clone(),
        role: r.map_or(wire::Role::Unspecified, role) as i32,
    }
}

pub fn content(c: &Content) -> wire::Content {
    match c {
        Content::Text(body) => {
            wire::Content { body: Some(wire::content::Body::Text(wire::Text { body: body.clone() })) }
        }
        Content::Media(m) => wire::Content { body: Some(wire::content::Body::Media(media(m))) },
        Content::Mls { message, media } => wire::Content {
            body: Some(wire::content::Body::Mls(wire::MlsMessage {
                message: message.clone(),
                media_id: media.map(|m| m.to_string()).unwrap_or_default(),
            })),
        },
        Content::MlsCommit { commit, welcome, group_info, epoch } => wire::Content {
            body: Some(wire::content::Body::MlsCommit(wire::MlsCommit {
                commit: commit.clone(),
                welcome: welcome.clone(),
                group_info: group_info.clone(),
                epoch: *epoch,
            })),
        },
        Content::Erased => wire::Content { body: Some(wire::content::Body::Erased(wire::Erased {})) },
    }
}

pub fn media(m: &crate::domain::MediaRef) -> wire::Media {
    wire::Media {
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
    }
}

/// An upload as the uploader learns of it (no caption yet).
pub fn media_record(r: &crate::store::MediaRecord) -> wire::Media {
    wire::Media {
        media_id: r.media_id.to_string(),
        file_name: r.file_name.clone(),
        mime_type: r.mime_type.clone(),
        size: r.size,
        sha256: r.sha256.to_vec(),
        width: r.width,
        height: r.height,
        preview_media_id: r.preview.map(|p| p.to_string()).unwrap_or_default(),
        duration_ms: r.duration_ms,
        ..wire::Media::default()
    }
}

pub fn message_record(m: &MessageRecord, sender: &UserInfo) -> wire::Message {
    wire::Message {
        conversation_id: m.conversation_id.to_string(),
        seq: m.seq.0,
        sender_user_id: m.sender_user_id.to_string(),
        sender_device_id: m.sender_device_id.to_string(),
        client_msg_id: m.client_msg_id.as_str().to_owned(),
        content: Some(content(&m.content)),
        sent_at_ms: m.at.0,
        sender_email: email_text(&sender.email),
        sender_name: sender.display_name.clone(),
    }
}

pub fn message_event(m: &MessageSent, seq: u64, sender: &UserInfo) -> wire::Message {
    wire::Message {
        conversation_id: m.conversation_id.to_string(),
        seq,
        sender_user_id: m.sender_user_id.to_string(),
        sender_device_id: m.sender_device_id.to_string(),
        client_msg_id: m.client_msg_id.as_str().to_owned(),
        content: Some(content(&m.content)),
        sent_at_ms: m.at.0,
        sender_email: email_text(&sender.email),
        sender_name: sender.display_name.clone(),
    }
}

pub fn conversation(
    state: &ConversationState,
    members: Vec<wire::Member>,
    last_message: Option<wire::Message>,
) -> wire::Conversation {
    wire::Conversation {
        conversation_id: state.id.to_string(),
        kind: match state.kind {
            ConversationKind::Direct => wire::ConversationKind::Direct as i32,
            ConversationKind::Group => wire::ConversationKind::Group as i32,
        },
        members,
        last_message,
        created_at_ms: state.created_at.0,
        name: state.name.clone().unwrap_or_default(),
        unread: 0,
        last_seq: state.version.0,
        activity: 0,
        read_up_to: 0,
        active: true,
        e2ee: state.e2ee,
    }
}
