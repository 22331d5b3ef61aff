//! A conversation's retention limit (spec section 5.32): set by a group's
//! owners and admins or by either member of a direct conversation, read by
//! any member. The worker in `crate::retention` acts on it.

use natter_proto::wire::{self, response::Result as Reply};

use super::{invalid, Identity, Service, WireError};
use crate::domain::conversation::ConversationKind;
use crate::domain::{ConversationId, Event, Role};
use crate::retention::{effective, MAX_AGE_LIMIT_SECS};
use crate::store::{ExpectedVersion, NewEvent, StreamAppend, StreamName};

impl Service {
    pub(super) async fn set_retention(&self, me: &Identity, req: wire::SetRetention) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        if state.kind == ConversationKind::Group && state.role_of(me.user_id) < Some(Role::Admin) {
            return Err(super::Rejection::Forbidden("only owners and admins set the group's retention").into());
        }
        if req.max_age_secs > MAX_AGE_LIMIT_SECS {
            return Err(invalid("max_age_secs", "at most a century (3153600000)"));
        }
        let set = Event::RetentionSet {
            conversation_id: state.id,
            actor: me.user_id,
            max_age_secs: req.max_age_secs,
            at: self.now(),
        };
        let append =
            StreamAppend::new(StreamName::retention(state.id), ExpectedVersion::Any, vec![NewEvent::fresh(set)]);
        self.store.append(vec![append]).await?;
        Ok(self.retention(state.id, req.max_age_secs))
    }

    pub(super) async fn get_retention(&self, me: &Identity, req: wire::GetRetention) -> Result<Reply, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        let own = self.store.retention_of(state.id).await?;
        Ok(self.retention(state.id, own))
    }

    fn retention(&self, id: ConversationId, own: u64) -> Reply {
        let deployment = self.config.retention_max_age_secs;
        Reply::Retention(wire::Retention {
            conversation_id: id.to_string(),
            max_age_secs: own,
            deployment_max_age_secs: deployment,
            effective_max_age_secs: effective(own, deployment),
        })
    }
}
