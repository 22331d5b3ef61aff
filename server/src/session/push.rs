//! Web Push requests (spec/protocol.md, "Push notifications"): the calling
//! device's subscription, the user's settings, and the VAPID key clients
//! subscribe with. What the worker sends is in `crate::push`.

use std::sync::Arc;

use natter_proto::wire;
use natter_proto::ErrorCode;

use super::{Identity, Reply, Service, WireError};
use crate::domain::{ConversationId, Event, Millis, PushSubscription, Unsubscribed};
use crate::push::vapid::VapidKey;

/// What the session layer needs of push (`None` when push is off).
pub struct PushSetup {
    pub vapid: Arc<VapidKey>,
    pub allow_http_loopback: bool,
}

pub type Handle = Option<PushSetup>;

fn off() -> WireError {
    WireError::new(ErrorCode::UNAVAILABLE, "push notifications are turned off on this server")
}

impl Service {
    fn push_setup(&self) -> Result<&PushSetup, WireError> {
        self.push.as_ref().ok_or_else(off)
    }

    /// # Errors
    /// `UNAVAILABLE` (push off), `INVALID_ARGUMENT` (endpoint, keys).
    pub(super) async fn register_push(&self, me: &Identity, req: wire::RegisterPush) -> Result<Reply, WireError> {
        let setup = self.push_setup()?;
        crate::push::check_subscription(&req.endpoint, &req.p256dh, &req.auth, setup.allow_http_loopback)
            .map_err(|(field, why)| WireError::new(ErrorCode::INVALID_ARGUMENT, format!("{field}: {why}")))?;
        let event = Event::PushSubscribed(PushSubscription {
            user_id: me.user_id,
            device_id: me.device_id,
            endpoint: req.endpoint,
            p256dh: req.p256dh,
            auth: req.auth,
            at: self.now(),
        });
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::Push(wire::PushOk {}))
    }

    /// Removes the calling device's subscription; none is fine.
    pub(super) async fn unregister_push(&self, me: &Identity) -> Result<Reply, WireError> {
        if let Some(sub) = self.store.push_settings(me.user_id, me.device_id).await?.subscription {
            let event = Event::PushUnsubscribed {
                user_id: me.user_id,
                device_id: me.device_id,
                endpoint: sub.endpoint,
                reason: Unsubscribed::Unregistered,
                at: self.now(),
            };
            self.append_to_user(me.user_id, vec![event]).await?;
        }
        Ok(Reply::Push(wire::PushOk {}))
    }

    /// # Errors
    /// `UNAVAILABLE` (push off).
    pub(super) async fn get_push_config(&self, me: &Identity) -> Result<Reply, WireError> {
        let setup = self.push_setup()?;
        let settings = self.store.push_settings(me.user_id, me.device_id).await?;
        Ok(Reply::PushConfig(wire::PushConfig {
            application_server_key: setup.vapid.public_key().to_vec(),
            registered: settings.subscription.is_some(),
            endpoint: settings.subscription.map(|s| s.endpoint).unwrap_or_default(),
            show_text: settings.show_text,
            muted: settings
                .muted
                .into_iter()
                .map(|(id, until)| wire::MutedConversation {
                    conversation_id: id.to_string(),
                    until_ms: until.map_or(0, |u| u.0),
                })
                .collect(),
        }))
    }

    pub(super) async fn set_push_previews(
        &self,
        me: &Identity,
        req: wire::SetPushPreviews,
    ) -> Result<Reply, WireError> {
        let event = Event::PushPreviewsSet { user_id: me.user_id, show_text: req.show_text, at: self.now() };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::Push(wire::PushOk {}))
    }

    /// # Errors
    /// `INVALID_ARGUMENT` (the id; a time already past), `NOT_FOUND` /
    /// `NOT_A_MEMBER` (as for history: former members may mute too).
    pub(super) async fn mute_conversation(
        &self,
        me: &Identity,
        req: wire::MuteConversation,
    ) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        self.readable_upto(me.user_id, id).await?;
        let now = self.now();
        if req.until_ms != 0 && req.until_ms <= now.0 {
            return Err(super::invalid("until_ms", "is in the past (0 mutes until unmuted)"));
        }
        let until = (req.until_ms != 0).then_some(Millis(req.until_ms));
        let event = Event::ConversationMuted { user_id: me.user_id, conversation_id: id, until, at: now };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::Push(wire::PushOk {}))
    }

    /// # Errors
    /// As [`Self::mute_conversation`].
    pub(super) async fn unmute_conversation(
        &self,
        me: &Identity,
        req: wire::UnmuteConversation,
    ) -> Result<Reply, WireError> {
        let id = ConversationId::parse(&req.conversation_id)?;
        self.readable_upto(me.user_id, id).await?;
        let event = Event::ConversationUnmuted { user_id: me.user_id, conversation_id: id, at: self.now() };
        self.append_to_user(me.user_id, vec![event]).await?;
        Ok(Reply::Push(wire::PushOk {}))
    }
}
