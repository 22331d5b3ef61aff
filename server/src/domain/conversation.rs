//! Conversation rules: direct conversations, groups and their membership,
//! sending, and receipt watermarks.
//!
//! `ConversationState` is folded from the conversation's stream with [`apply`];
//! `decide_*` functions check a command against it and return the events to
//! append, or a `Rejection`.

use super::{ClientMsgId, Content, ConversationId, DeviceId, Event, MessageSent, Millis, Rejection, Role, Seq, UserId};
use natter_proto::limits::{MAX_GROUP_NAME_BYTES, MAX_TEXT_BYTES};

/// What kind of conversation this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
    Group,
}

/// A current member and their role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberState {
    pub user: UserId,
    pub role: Role,
}

/// The state of one conversation, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationState {
    pub id: ConversationId,
    pub kind: ConversationKind,
    /// Groups only.
    pub name: Option<String>,
    /// Current members, oldest first (join order).
    pub members: Vec<MemberState>,
    pub created_at: Millis,
    /// Seq of the last event applied (the stream's version).
    pub version: Seq,
    /// Seq of the last event that changed the members, their roles or the
    /// name ([`Event::changes_group`]): what a group change was decided on.
    pub changed: Seq,
    /// End-to-end encrypted (`ConversationEncrypted`): MLS content only.
    pub e2ee: bool,
}

impl ConversationState {
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.iter().any(|m| m.user == user)
    }

    pub fn role_of(&self, user: UserId) -> Option<Role> {
        self.members.iter().find(|m| m.user == user).map(|m| m.role)
    }

    pub fn member_ids(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members.iter().map(|m| m.user)
    }
}

/// Folds one event of the conversation's stream into its state.
pub fn apply(state: Option<ConversationState>, event: &Event) -> Option<ConversationState> {
    let created = |id: ConversationId, kind, name, members: Vec<MemberState>, at| ConversationState {
        id,
        kind,
        name,
        members,
        created_at: at,
        version: Seq(1),
        changed: Seq(1),
        e2ee: false,
    };
    match event {
        Event::DirectConversationStarted { conversation_id, members, at } => Some(created(
            *conversation_id,
            ConversationKind::Direct,
            None,
            members.iter().map(|&user| MemberState { user, role: Role::Member }).collect(),
            *at,
        )),
        Event::GroupCreated { conversation_id, name, members, at, .. } => Some(created(
            *conversation_id,
            ConversationKind::Group,
            Some(name.clone()),
            members.iter().map(|&(user, role)| MemberState { user, role }).collect(),
            *at,
        )),
        _ => {
            let mut s = state?;
            s.version = Seq(s.version.0 + 1);
            if event.changes_group() {
                s.changed = s.version;
            }
            match event {
                Event::MembersAdded { members, .. } => {
                    for &(user, role) in members {
                        if !s.is_member(user) {
                            s.members.push(MemberState { user, role });
                        }
                    }
                }
                Event::MemberRemoved { user, .. } | Event::MemberLeft { user, .. } => {
                    s.members.retain(|m| m.user != *user);
                }
                Event::RoleChanged { user, role, .. } => {
                    if let Some(m) = s.members.iter_mut().find(|m| m.user == *user) {
                        m.role = *role;
                    }
                }
                Event::GroupRenamed { name, .. } => s.name = Some(name.clone()),
                Event::ConversationEncrypted { .. } => s.e2ee = true,
                Event::GroupDeleted { .. } => s.members.clear(),
                _ => {}
            }
            Some(s)
        }
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

fn check_group_name(name: &str) -> Result<String, Rejection> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Rejection::InvalidArgument { field: "name", reason: "must not be empty" });
    }
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(Rejection::InvalidArgument { field: "name", reason: "longer than 128 bytes" });
    }
    if name.chars().any(char::is_control) {
        return Err(Rejection::InvalidArgument { field: "name", reason: "contains control characters" });
    }
    Ok(name.to_owned())
}

/// Creating a group: the creator is its owner, the others (deduplicated, the
/// creator left out) members.
///
/// # Errors
/// Bad name, or more members than `max_members`.
pub fn decide_create_group(
    id: ConversationId,
    creator: UserId,
    name: &str,
    others: &[UserId],
    max_members: usize,
    at: Millis,
) -> Result<Event, Rejection> {
    let name = check_group_name(name)?;
    let mut members = vec![(creator, Role::Owner)];
    for &u in others {
        if !members.iter().any(|(m, _)| *m == u) {
            members.push((u, Role::Member));
        }
    }
    if members.len() > max_members {
        return Err(Rejection::GroupFull { would_have: members.len(), max: max_members });
    }
    Ok(Event::GroupCreated { conversation_id: id, name, creator, members, at })
}

fn group_actor(state: &ConversationState, actor: UserId) -> Result<Role, Rejection> {
    if state.kind != ConversationKind::Group {
        return Err(Rejection::NotAGroup);
    }
    state.role_of(actor).ok_or(Rejection::NotAMember)
}

/// Adding members: owners and admins may; people already in the group are
/// skipped; `None` when nobody is new.
///
/// # Errors
/// `NotAGroup`, `NotAMember`, `Forbidden`, `GroupFull`.
pub fn decide_add_members(
    state: &ConversationState,
    actor: UserId,
    users: &[UserId],
    max_members: usize,
    at: Millis,
) -> Result<Option<Event>, Rejection> {
    if group_actor(state, actor)? < Role::Admin {
        return Err(Rejection::Forbidden("only owners and admins add members"));
    }
    let mut new: Vec<(UserId, Role)> = Vec::new();
    for &u in users {
        if !state.is_member(u) && !new.iter().any(|(n, _)| *n == u) {
            new.push((u, Role::Member));
        }
    }
    if new.is_empty() {
        return Ok(None);
    }
    let would_have = state.members.len() + new.len();
    if would_have > max_members {
        return Err(Rejection::GroupFull { would_have, max: max_members });
    }
    Ok(Some(Event::MembersAdded { conversation_id: state.id, actor, members: new, at }))
}

/// Removing someone else: the actor's role must be above the target's (owners
/// remove admins and members, admins remove members).
///
/// # Errors
/// `NotAGroup`, `NotAMember`, `Forbidden`, `InvalidArgument` (target not a member
/// or the actor themself).
pub fn decide_remove_member(
    state: &ConversationState,
    actor: UserId,
    target: UserId,
    at: Millis,
) -> Result<Event, Rejection> {
    let actor_role = group_actor(state, actor)?;
    if actor == target {
        return Err(Rejection::InvalidArgument { field: "user_id", reason: "use leave to remove yourself" });
    }
    let target_role = state
        .role_of(target)
        .ok_or(Rejection::InvalidArgument { field: "user_id", reason: "not a member of this group" })?;
    if actor_role <= target_role || actor_role < Role::Admin {
        return Err(Rejection::Forbidden("you can only remove members whose role is below yours"));
    }
    Ok(Event::MemberRemoved { conversation_id: state.id, actor, user: target, at })
}

/// Leaving. When the last owner leaves, ownership goes to the oldest admin, or
/// else the oldest member.
///
/// # Errors
/// `NotAGroup`, `NotAMember`.
pub fn decide_leave(state: &ConversationState, user: UserId, at: Millis) -> Result<Vec<Event>, Rejection> {
    let role = group_actor(state, user)?;
    let mut events = vec![Event::MemberLeft { conversation_id: state.id, user, at }];
    let other_owner = state.members.iter().any(|m| m.user != user && m.role == Role::Owner);
    if role == Role::Owner && !other_owner {
        let remaining = || state.members.iter().filter(|m| m.user != user);
        let heir = remaining().find(|m| m.role == Role::Admin).or_else(|| remaining().next());
        if let Some(heir) = heir {
            events.push(Event::RoleChanged {
                conversation_id: state.id,
                actor: None,
                user: heir.user,
                role: Role::Owner,
                at,
            });
        }
    }
    Ok(events)
}

/// Changing a role: the actor must rank above the target's current role and at
/// least as high as the new one (so owners may appoint owners, admins may
/// promote members to admin, nobody changes their own role or an equal's).
///
/// # Errors
/// `NotAGroup`, `NotAMember`, `Forbidden`, `InvalidArgument`.
pub fn decide_set_role(
    state: &ConversationState,
    actor: UserId,
    target: UserId,
    role: Role,
    at: Millis,
) -> Result<Option<Event>, Rejection> {
    let actor_role = group_actor(state, actor)?;
    let target_role = state
        .role_of(target)
        .ok_or(Rejection::InvalidArgument { field: "user_id", reason: "not a member of this group" })?;
    if actor == target {
        return Err(Rejection::Forbidden("you cannot change your own role"));
    }
    if actor_role <= target_role || actor_role < role || actor_role < Role::Admin {
        return Err(Rejection::Forbidden("your role does not allow this change"));
    }
    if target_role == role {
        return Ok(None);
    }
    Ok(Some(Event::RoleChanged { conversation_id: state.id, actor: Some(actor), user: target, role, at }))
}

/// Renaming: owners and admins.
///
/// # Errors
/// `NotAGroup`, `NotAMember`, `Forbidden`, bad name.
pub fn decide_rename(
    state: &ConversationState,
    actor: UserId,
    name: &str,
    at: Millis,
) -> Result<Option<Event>, Rejection> {
    if group_actor(state, actor)? < Role::Admin {
        return Err(Rejection::Forbidden("only owners and admins rename the group"));
    }
    let name = check_group_name(name)?;
    if state.name.as_deref() == Some(name.as_str()) {
        return Ok(None);
    }
    Ok(Some(Event::GroupRenamed { conversation_id: state.id, actor, name, at }))
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
    let mls = matches!(cmd.content, Content::Mls { .. } | Content::MlsCommit { .. });
    if mls != state.e2ee {
        return Err(Rejection::EncryptionMismatch { e2ee: state.e2ee });
    }
    match &cmd.content {
        Content::Mls { message, .. } | Content::MlsCommit { commit: message, .. } => {
            if message.is_empty() {
                return Err(Rejection::EmptyMessage);
            }
        }
        Content::Text(text) => {
            if text.trim().is_empty() {
                return Err(Rejection::EmptyMessage);
            }
            if text.len() > MAX_TEXT_BYTES {
                return Err(Rejection::TextTooLong { len: text.len(), max: MAX_TEXT_BYTES });
            }
        }
        Content::Media(media) => {
            if media.caption.len() > MAX_TEXT_BYTES {
                return Err(Rejection::TextTooLong { len: media.caption.len(), max: MAX_TEXT_BYTES });
            }
        }
        // Only an erasure writes it.
        Content::Erased => return Err(Rejection::EmptyMessage),
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

/// Moving the read watermark: forward only (a lower or equal value is ignored,
/// not an error), and never past the conversation's last seq.
pub fn decide_read(
    conversation_id: ConversationId,
    user: UserId,
    current: Seq,
    requested: Seq,
    last: Seq,
    at: Millis,
) -> Option<Event> {
    let seq = requested.min(last);
    (seq > current).then_some(Event::ReadUpTo { conversation_id, user, seq, at })
}

/// Moving a device's delivered watermark: forward only.
pub fn decide_delivered(
    conversation_id: ConversationId,
    user: UserId,
    device: DeviceId,
    current: Seq,
    received: Seq,
    at: Millis,
) -> Option<Event> {
    (received > current).then_some(Event::DeliveredUpTo { conversation_id, user, device, seq: received, at })
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

    const GID: ConversationId = ConversationId(Uuid::from_u128(0x6000));

    /// Owner 1; members 2, 3 (in that order).
    fn group() -> Vec<Event> {
        vec![decide_create_group(GID, user(1), "team", &[user(2), user(3), user(2), user(1)], 10, Millis(0)).unwrap()]
    }

    fn then(mut events: Vec<Event>, more: impl IntoIterator<Item = Event>) -> Vec<Event> {
        events.extend(more);
        events
    }

    #[test]
    fn when_opening_a_new_direct_then_it_starts_with_both_members() {
        let state = given(&[started(user(1), user(2))]);
        assert_eq!(state.member_ids().collect::<Vec<_>>(), vec![user(1), user(2)]);
        assert_eq!(state.id, ConversationId::direct(user(2), user(1)));
        assert_eq!(state.version, Seq(1));
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
        match decide_send(&state, send(user(2), "hi"), Millis(10)).unwrap() {
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

    #[test]
    fn when_creating_a_group_then_creator_owns_it_and_duplicates_are_dropped() {
        let s = given(&group());
        assert_eq!(s.kind, ConversationKind::Group);
        assert_eq!(s.name.as_deref(), Some("team"));
        assert_eq!(
            s.members,
            vec![
                MemberState { user: user(1), role: Role::Owner },
                MemberState { user: user(2), role: Role::Member },
                MemberState { user: user(3), role: Role::Member },
            ]
        );
    }

    #[test]
    fn group_size_limit_on_create_and_add() {
        let others: Vec<UserId> = (2..=5).map(user).collect();
        assert_eq!(
            decide_create_group(GID, user(1), "g", &others, 4, Millis(0)),
            Err(Rejection::GroupFull { would_have: 5, max: 4 })
        );
        let s = given(&group());
        assert_eq!(
            decide_add_members(&s, user(1), &[user(4), user(5)], 4, Millis(0)),
            Err(Rejection::GroupFull { would_have: 5, max: 4 })
        );
        assert!(decide_add_members(&s, user(1), &[user(4)], 4, Millis(0)).unwrap().is_some());
    }

    #[test]
    fn bad_group_names_are_rejected() {
        for bad in ["", "   ", "a\u{0}b"] {
            assert!(decide_create_group(GID, user(1), bad, &[], 10, Millis(0)).is_err(), "{bad:?}");
        }
        assert!(decide_create_group(GID, user(1), &"n".repeat(129), &[], 10, Millis(0)).is_err());
    }

    #[test]
    fn only_owners_and_admins_add_and_existing_members_are_skipped() {
        let s = given(&group());
        assert_eq!(
            decide_add_members(&s, user(2), &[user(4)], 10, Millis(0)),
            Err(Rejection::Forbidden("only owners and admins add members"))
        );
        assert_eq!(decide_add_members(&s, user(1), &[user(2), user(3)], 10, Millis(0)), Ok(None));
        match decide_add_members(&s, user(1), &[user(2), user(4), user(4)], 10, Millis(5)).unwrap().unwrap() {
            Event::MembersAdded { members, .. } => assert_eq!(members, vec![(user(4), Role::Member)]),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(decide_add_members(&s, user(9), &[user(4)], 10, Millis(0)), Err(Rejection::NotAMember));
    }

    #[test]
    fn given_an_admin_when_a_member_removes_them_then_forbidden() {
        let events = group();
        let promote = decide_set_role(&given(&events), user(1), user(2), Role::Admin, Millis(1)).unwrap().unwrap();
        let s = given(&then(events, [promote]));
        assert_eq!(s.role_of(user(2)), Some(Role::Admin));
        // A member cannot remove an admin (nor anyone).
        assert!(matches!(decide_remove_member(&s, user(3), user(2), Millis(2)), Err(Rejection::Forbidden(_))));
        // An admin removes a member but not the owner.
        assert!(decide_remove_member(&s, user(2), user(3), Millis(2)).is_ok());
        assert!(matches!(decide_remove_member(&s, user(2), user(1), Millis(2)), Err(Rejection::Forbidden(_))));
        // The owner removes the admin.
        assert!(decide_remove_member(&s, user(1), user(2), Millis(2)).is_ok());
        // Removing yourself or a stranger is an argument error.
        assert!(matches!(
            decide_remove_member(&s, user(1), user(1), Millis(2)),
            Err(Rejection::InvalidArgument { .. })
        ));
        assert!(matches!(
            decide_remove_member(&s, user(1), user(8), Millis(2)),
            Err(Rejection::InvalidArgument { .. })
        ));
    }

    #[test]
    fn when_a_member_is_removed_then_they_can_no_longer_send() {
        let events = group();
        let removed = decide_remove_member(&given(&events), user(1), user(3), Millis(1)).unwrap();
        let s = given(&then(events, [removed]));
        assert!(!s.is_member(user(3)));
        assert_eq!(s.version, Seq(2));
        assert_eq!(decide_send(&s, send(user(3), "hi"), Millis(2)), Err(Rejection::NotAMember));
    }

    #[test]
    fn role_changes_follow_rank() {
        let s = given(&group());
        // Members change no roles.
        assert!(decide_set_role(&s, user(2), user(3), Role::Admin, Millis(0)).is_err());
        // Nobody changes their own role.
        assert!(decide_set_role(&s, user(1), user(1), Role::Member, Millis(0)).is_err());
        // Owners appoint owners; setting the same role is a no-op.
        assert!(decide_set_role(&s, user(1), user(2), Role::Owner, Millis(0)).unwrap().is_some());
        assert_eq!(decide_set_role(&s, user(1), user(2), Role::Member, Millis(0)), Ok(None));
        // Admins promote members to admin, not to owner, and cannot touch admins.
        let promote = decide_set_role(&s, user(1), user(2), Role::Admin, Millis(0)).unwrap().unwrap();
        let s = given(&then(group(), [promote]));
        assert!(decide_set_role(&s, user(2), user(3), Role::Admin, Millis(0)).unwrap().is_some());
        assert!(decide_set_role(&s, user(2), user(3), Role::Owner, Millis(0)).is_err());
    }

    #[test]
    fn when_the_last_owner_leaves_then_the_oldest_admin_owns_the_group() {
        let events = group();
        let s = given(&events);
        let p3 = decide_set_role(&s, user(1), user(3), Role::Admin, Millis(1)).unwrap().unwrap();
        let events = then(events, [p3]);
        let leave = decide_leave(&given(&events), user(1), Millis(2)).unwrap();
        assert_eq!(leave.len(), 2);
        assert!(matches!(leave[1], Event::RoleChanged { actor: None, user: u, role: Role::Owner, .. } if u == user(3)));
        let s = given(&then(events, leave));
        assert_eq!(s.role_of(user(3)), Some(Role::Owner));
        assert!(!s.is_member(user(1)));
    }

    #[test]
    fn when_the_last_owner_leaves_without_admins_then_the_oldest_member_owns_it() {
        let leave = decide_leave(&given(&group()), user(1), Millis(2)).unwrap();
        assert!(matches!(leave[1], Event::RoleChanged { user: u, role: Role::Owner, .. } if u == user(2)));
    }

    #[test]
    fn when_a_member_or_one_of_two_owners_leaves_then_no_handover() {
        assert_eq!(decide_leave(&given(&group()), user(2), Millis(2)).unwrap().len(), 1);
        let events = group();
        let co = decide_set_role(&given(&events), user(1), user(2), Role::Owner, Millis(1)).unwrap().unwrap();
        assert_eq!(decide_leave(&given(&then(events, [co])), user(1), Millis(2)).unwrap().len(), 1);
        assert_eq!(decide_leave(&given(&group()), user(7), Millis(2)), Err(Rejection::NotAMember));
    }

    #[test]
    fn the_last_member_leaving_leaves_an_empty_group() {
        let events = group();
        let l2 = decide_leave(&given(&events), user(2), Millis(1)).unwrap();
        let events = then(events, l2);
        let l3 = decide_leave(&given(&events), user(3), Millis(1)).unwrap();
        let events = then(events, l3);
        let l1 = decide_leave(&given(&events), user(1), Millis(1)).unwrap();
        assert_eq!(l1.len(), 1, "no heir");
        assert!(given(&then(events, l1)).members.is_empty());
    }

    #[test]
    fn rename_rules() {
        let s = given(&group());
        assert!(matches!(decide_rename(&s, user(2), "x", Millis(0)), Err(Rejection::Forbidden(_))));
        assert_eq!(decide_rename(&s, user(1), " team ", Millis(0)), Ok(None));
        let ev = decide_rename(&s, user(1), "renamed", Millis(0)).unwrap().unwrap();
        assert_eq!(given(&then(group(), [ev])).name.as_deref(), Some("renamed"));
    }

    #[test]
    fn group_operations_on_a_direct_conversation_are_rejected() {
        let s = given(&[started(user(1), user(2))]);
        assert_eq!(decide_leave(&s, user(1), Millis(0)), Err(Rejection::NotAGroup));
        assert_eq!(decide_add_members(&s, user(1), &[user(3)], 10, Millis(0)), Err(Rejection::NotAGroup));
    }

    #[test]
    fn watermarks_only_move_forward_and_stop_at_the_last_seq() {
        let (c, u, d) = (GID, user(1), DeviceId(Uuid::from_u128(5)));
        assert_eq!(decide_read(c, u, Seq(5), Seq(3), Seq(9), Millis(0)), None);
        assert_eq!(decide_read(c, u, Seq(5), Seq(5), Seq(9), Millis(0)), None);
        assert_eq!(
            decide_read(c, u, Seq(5), Seq(50), Seq(9), Millis(0)),
            Some(Event::ReadUpTo { conversation_id: c, user: u, seq: Seq(9), at: Millis(0) })
        );
        assert_eq!(decide_delivered(c, u, d, Seq(4), Seq(4), Millis(0)), None);
        assert!(decide_delivered(c, u, d, Seq(4), Seq(6), Millis(0)).is_some());
    }
}
