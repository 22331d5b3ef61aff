//! Conversation rules: opening a direct conversation, sending a message.
//!
//! `ConversationState` is folded from the conversation's stream with [`apply`];
//! `decide_*` functions check a command against it.

use super::{ClientMsgId, Content, ConversationId, DeviceId, Event, MessageSent, Millis, Rejection, UserId};
use natter_proto::limits::MAX_TEXT_BYTES;

/// What kind of conversation this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
}

/// The state of one conversation, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationState {
    pub id: ConversationId,
    pub kind: ConversationKind,
    pub members: Vec<UserId>,
    pub created_at: Millis,
}

impl ConversationState {
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.contains(&user)
    }
}

/// Folds one event of the conversation's stream into its state.
pub fn apply(state: Option<ConversationState>, event: &Event) -> Option<ConversationState> {
    match event {
        Event::DirectConversationStarted { conversation_id, members, at } => Some(ConversationState {
            id: *conversation_id,
            kind: ConversationKind::Direct,
            members: members.to_vec(),
            created_at: *at,
        }),
        _ => state,
    }
}

/// Opening the direct conversation between `me` and `peer`. Returns `None` when
/// it already exists (opening is idempotent), else the event that starts it.
///
/// # Errors
/// `DirectWithSelf`.
pub fn decide_open_direct(
    existing: Option<&ConversationState>,
    me: UserId,
    peer: UserId,
    at: Millis,
) -> Result<Option<Event>, Rejection> {
    if me == peer {
        return Err(Rejection::DirectWithSelf);
    }
    if existing.is_some() {
        return Ok(None);
    }
    Ok(Some(Event::DirectConversationStarted {
        conversation_id: ConversationId::direct(me, peer),
        members: [me, peer],
        at,
    }))
}

/// A send, as the sender asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCommand {
    pub sender: UserId,
    pub device: DeviceId,
    pub client_msg_id: ClientMsgId,
    pub content: Content,
}

/// Sending a message: only members may send, text must be non-empty and within
/// `MAX_TEXT_BYTES`.
///
/// # Errors
/// `NotAMember`, `EmptyMessage`, `TextTooLong`.
pub fn decide_send(state: &ConversationState, cmd: SendCommand, at: Millis) -> Result<Event, Rejection> {
    if !state.is_member(cmd.sender) {
        return Err(Rejection::NotAMember);
    }
    match &cmd.content {
        Content::Text(text) => {
            if text.trim().is_empty() {
                return Err(Rejection::EmptyMessage);
            }
            if text.len() > MAX_TEXT_BYTES {
                return Err(Rejection::TextTooLong { len: text.len(), max: MAX_TEXT_BYTES });
            }
        }
    }
    Ok(Event::MessageSent(MessageSent {
        conversation_id: state.id,
        sender_user_id: cmd.sender,
        sender_device_id: cmd.device,
        client_msg_id: cmd.client_msg_id,
        content: cmd.content,
        at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn user(n: u128) -> UserId {
        UserId(Uuid::from_u128(n))
    }

    fn given(events: &[Event]) -> ConversationState {
        events.iter().fold(None, apply).expect("conversation exists")
    }

    fn started(a: UserId, b: UserId) -> Event {
        decide_open_direct(None, a, b, Millis(1)).unwrap().unwrap()
    }

    fn send(sender: UserId, text: &str) -> SendCommand {
        SendCommand {
            sender,
            device: DeviceId(Uuid::from_u128(99)),
            client_msg_id: ClientMsgId::parse("c1").unwrap(),
            content: Content::Text(text.into()),
        }
    }

    #[test]
    fn when_opening_a_new_direct_then_it_starts_with_both_members() {
        let ev = started(user(1), user(2));
        let state = given(&[ev]);
        assert_eq!(state.members, vec![user(1), user(2)]);
        assert_eq!(state.id, ConversationId::direct(user(2), user(1)));
    }

    #[test]
    fn given_an_existing_direct_when_opening_again_then_nothing_new() {
        let state = given(&[started(user(1), user(2))]);
        assert_eq!(decide_open_direct(Some(&state), user(2), user(1), Millis(3)), Ok(None));
    }

    #[test]
    fn direct_with_self_is_rejected() {
        assert_eq!(decide_open_direct(None, user(1), user(1), Millis(0)), Err(Rejection::DirectWithSelf));
    }

    #[test]
    fn given_a_direct_when_a_member_sends_then_message_sent() {
        let state = given(&[started(user(1), user(2))]);
        let ev = decide_send(&state, send(user(2), "hi"), Millis(10)).unwrap();
        match ev {
            Event::MessageSent(m) => {
                assert_eq!(m.sender_user_id, user(2));
                assert_eq!(m.content, Content::Text("hi".into()));
                assert_eq!(m.at, Millis(10));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn given_a_direct_when_a_stranger_sends_then_not_a_member() {
        let state = given(&[started(user(1), user(2))]);
        assert_eq!(decide_send(&state, send(user(3), "hi"), Millis(0)), Err(Rejection::NotAMember));
    }

    #[test]
    fn empty_and_oversized_text_are_rejected() {
        let state = given(&[started(user(1), user(2))]);
        assert_eq!(decide_send(&state, send(user(1), "  \n"), Millis(0)), Err(Rejection::EmptyMessage));
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            decide_send(&state, send(user(1), &big), Millis(0)),
            Err(Rejection::TextTooLong { len: MAX_TEXT_BYTES + 1, max: MAX_TEXT_BYTES })
        );
        assert!(decide_send(&state, send(user(1), &"x".repeat(MAX_TEXT_BYTES)), Millis(0)).is_ok());
    }
}
