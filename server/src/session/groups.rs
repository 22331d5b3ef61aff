//! Group management: create, add, remove, leave, roles, rename. Every change
//! is appended to the conversation's stream on condition that the group's
//! shape (members, roles, name) is still the one it was decided on
//! (`Precondition::GroupUnchanged`), so concurrent changes cannot both win and
//! messages never make a change lose; a lost race is retried on fresh state.

use natter_proto::limits::MAX_EMAILS_PER_REQUEST;
use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;
use uuid::Uuid;

use super::{Identity, Service, WireError};
use crate::domain::{
    conversation::{self, ConversationState},
    ConversationId, Email, Event, Rejection, Role, UserId,
};
use crate::store::{AppendError, AppendOutcome, ExpectedVersion, NewEvent, Precondition, StreamAppend, StreamName};

/// Attempts at a group change that keeps losing races before `CONFLICT`.
const ATTEMPTS: usize = 5;

fn role_from_wire(raw: i32) -> Result<Role, WireError> {
    match wire::Role::try_from(raw) {
        Ok(wire::Role::Member) => Ok(Role::Member),
        Ok(wire::Role::Admin) => Ok(Role::Admin),
        Ok(wire::Role::Owner) => Ok(Role::Owner),
        _ => Err(Rejection::InvalidArgument { field: "role", reason: "must be MEMBER, ADMIN or OWNER" }.into()),
    }
}

impl Service {
    /// Resolves emails to users; an unknown one is `NOT_FOUND` naming it.
    async fn users_by_email(&self, emails: &[String]) -> Result<Vec<UserId>, WireError> {
        if emails.len() > MAX_EMAILS_PER_REQUEST {
            return Err(Rejection::InvalidArgument { field: "emails", reason: "more than 256 in one request" }.into());
        }
        let mut out = Vec::with_capacity(emails.len());
        for raw in emails {
            let email = Email::parse(raw)?;
            let user = self
                .store
                .user_by_email(&email)
                .await?
                .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, format!("no user with email {email}")))?;
            out.push(user.user_id);
        }
        Ok(out)
    }

    pub(super) async fn create_group(&self, me: &Identity, req: wire::CreateGroup) -> Result<Reply, WireError> {
        let others = self.users_by_email(&req.member_emails).await?;
        let id = ConversationId(Uuid::new_v4());
        let event = conversation::decide_create_group(
            id,
            me.user_id,
            &req.name,
            &others,
            self.config.max_group_members,
            self.now(),
        )?;
        let mut events = vec![NewEvent::fresh(event)];
        if req.e2ee {
            events.push(NewEvent::fresh(Event::ConversationEncrypted { conversation_id: id, at: self.now() }));
        }
        self.store
            .append(vec![StreamAppend::new(StreamName::conversation(id), ExpectedVersion::NoStream, events)])
            .await?;
        self.conversation_for(me, id).await.map(Reply::Group)
    }

    /// Decides a change on the current state and appends it if the group's
    /// shape is still the one decided on, retrying on a lost race. Returns the appended events.
    pub(super) async fn change_group(
        &self,
        actor: UserId,
        raw_id: &str,
        decide: impl Fn(&ConversationState) -> Result<Vec<Event>, Rejection>,
    ) -> Result<(ConversationId, Vec<crate::store::RecordedEvent>), WireError> {
        let id = ConversationId::parse(raw_id)?;
        for _ in 0..ATTEMPTS {
            let state = self
                .store
                .conversation(id)
                .await?
                .ok_or_else(|| WireError::new(ErrorCode::NOT_FOUND, "no such conversation"))?;
            if !state.is_member(actor) {
                return Err(Rejection::NotAMember.into());
            }
            let events = decide(&state)?;
            if events.is_empty() {
                return Ok((id, Vec::new()));
            }
            // Decided on the group's shape, not on its messages: a busy
            // group's chatter does not make an admin's change retry.
            let append = StreamAppend::new(
                StreamName::conversation(id),
                ExpectedVersion::Any,
                events.into_iter().map(NewEvent::fresh).collect(),
            )
            .with_precondition(Precondition::GroupUnchanged { conversation: id, since: state.changed });
            match self.store.append(vec![append]).await {
                Ok(AppendOutcome::Appended(recs) | AppendOutcome::AlreadyStored(recs)) => return Ok((id, recs)),
                Err(AppendError::PreconditionFailed(Precondition::GroupUnchanged { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(WireError::new(ErrorCode::CONFLICT, "the group kept changing; retry"))
    }

    pub(super) async fn add_members(&self, me: &Identity, req: wire::AddMembers) -> Result<Reply, WireError> {
        let users = self.users_by_email(&req.emails).await?;
        let (max, now) = (self.config.max_group_members, self.now());
        let (id, _) = self
            .change_group(me.user_id, &req.conversation_id, |s| {
                Ok(conversation::decide_add_members(s, me.user_id, &users, max, now)?.into_iter().collect())
            })
            .await?;
        self.conversation_for(me, id).await.map(Reply::Group)
    }

    pub(super) async fn remove_member(&self, me: &Identity, req: wire::RemoveMember) -> Result<Reply, WireError> {
        let target = UserId::parse(&req.user_id)?;
        let now = self.now();
        let (id, _) = self
            .change_group(me.user_id, &req.conversation_id, |s| {
                Ok(vec![conversation::decide_remove_member(s, me.user_id, target, now)?])
            })
            .await?;
        self.conversation_for(me, id).await.map(Reply::Group)
    }

    pub(super) async fn leave(&self, me: &Identity, req: wire::LeaveConversation) -> Result<Reply, WireError> {
        let now = self.now();
        let (_, recs) = self
            .change_group(me.user_id, &req.conversation_id, |s| conversation::decide_leave(s, me.user_id, now))
            .await?;
        let seq = recs.first().map_or(0, |r| r.version);
        Ok(Reply::Leave(wire::LeaveOk { seq }))
    }

    pub(super) async fn set_role(&self, me: &Identity, req: wire::SetRole) -> Result<Reply, WireError> {
        let target = UserId::parse(&req.user_id)?;
        let role = role_from_wire(req.role)?;
        let now = self.now();
        let (id, _) = self
            .change_group(me.user_id, &req.conversation_id, |s| {
                Ok(conversation::decide_set_role(s, me.user_id, target, role, now)?.into_iter().collect())
            })
            .await?;
        self.conversation_for(me, id).await.map(Reply::Group)
    }

    pub(super) async fn rename_group(&self, me: &Identity, req: wire::RenameGroup) -> Result<Reply, WireError> {
        let now = self.now();
        let (id, _) = self
            .change_group(me.user_id, &req.conversation_id, |s| {
                Ok(conversation::decide_rename(s, me.user_id, &req.name, now)?.into_iter().collect())
            })
            .await?;
        self.conversation_for(me, id).await.map(Reply::Group)
    }
}
