//! Ephemeral signals: typing indicators and presence. Never written to the
//! log; only a user's last-seen time is stored (so it survives a restart).
//! Presence is visible only to people who share a conversation with the user.

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;

use super::{Identity, Service, WireError};
use crate::domain::{Event, UserId};
use crate::projection::router::Ephemeral;
use crate::store::{ExpectedVersion, NewEvent, StreamAppend, StreamName};

/// A token bucket: `burst` signals at once, then `per_second`.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { tokens: f64::from(burst), burst: f64::from(burst), per_second, last: Instant::now() }
    }

    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_second))
        }
    }
}

impl Service {
    /// Shows `me` typing in a conversation to its other members who are online.
    ///
    /// # Errors
    /// `NOT_A_MEMBER`, `NOT_FOUND`, `INVALID_ARGUMENT`.
    pub(super) async fn typing(&self, me: &Identity, raw_id: &str) -> Result<(), WireError> {
        let state = self.member_conversation(me.user_id, raw_id).await?;
        let others: Vec<UserId> = state.member_ids().filter(|u| *u != me.user_id).collect();
        let signal = Ephemeral::Typing { conversation: state.id, user: me.user_id, ttl_ms: self.config.typing_ttl_ms };
        self.router.signal(&others, signal);
        Ok(())
    }

    pub(super) async fn set_privacy(&self, me: &Identity, req: wire::SetPrivacy) -> Result<Reply, WireError> {
        let event = Event::PrivacyChanged { user_id: me.user_id, hide_last_seen: req.hide_last_seen, at: self.now() };
        self.store
            .append(vec![StreamAppend::new(
                StreamName::user(me.user_id),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(event)],
            )])
            .await?;
        Ok(Reply::Privacy(wire::PrivacyOk {}))
    }

    pub(super) async fn get_presence(&self, me: &Identity, req: wire::GetPresence) -> Result<Reply, WireError> {
        if req.user_ids.len() > natter_proto::limits::MAX_EMAILS_PER_REQUEST {
            return Err(WireError::new(ErrorCode::INVALID_ARGUMENT, "more than 256 users in one request"));
        }
        let contacts = self.store.contacts(me.user_id).await?;
        let mut asked = Vec::new();
        for raw in &req.user_ids {
            let user = UserId::parse(raw)?;
            // Strangers are left out: presence is for people you talk with.
            if contacts.contains(&user) && !asked.contains(&user) {
                asked.push(user);
            }
        }
        let mut out = Vec::with_capacity(asked.len());
        let online_now = self.router.online_among(&asked).await;
        for record in self.store.presence_info(asked).await? {
            let info = self.user_info(record.user).await?;
            let online = online_now.contains(&record.user);
            // Like the signals: no last-seen while online, nor when hidden.
            let last_seen = if online || record.hide_last_seen { 0 } else { record.last_seen.map_or(0, |m| m.0) };
            out.push(wire::PresenceSignal {
                user_id: record.user.to_string(),
                email: super::convert::email_text(&info.email),
                online,
                last_seen_ms: last_seen,
            });
        }
        Ok(Reply::Presence(wire::PresenceList { presence: out }))
    }

    /// Tells the user's contacts that they came online or went offline, and
    /// records the last-seen time.
    pub(super) async fn presence_changed(self: Arc<Self>, user: UserId, online: bool) {
        let now = self.now();
        if let Err(e) = self.store.set_last_seen(user, now).await {
            tracing::warn!(error = %e, "last-seen not recorded");
        }
        if !self.router.presence_changed(user).await {
            // Another node has them: to their contacts nothing changed.
            return;
        }
        let contacts = match self.store.contacts(user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "presence not sent");
                return;
            }
        };
        let hidden = match self.store.presence_info(vec![user]).await {
            Ok(r) => r.first().is_some_and(|r| r.hide_last_seen),
            Err(_) => true,
        };
        let last_seen = (!online && !hidden).then_some(now);
        self.router.signal(&contacts, Ephemeral::Presence { user, online, last_seen });
    }

    /// The wire form of an ephemeral signal.
    pub(super) async fn signal_to_wire(&self, signal: &Ephemeral) -> Result<wire::Signal, WireError> {
        use wire::signal::Kind;
        let kind = match signal {
            Ephemeral::Typing { conversation, user, ttl_ms } => Kind::Typing(wire::TypingSignal {
                conversation_id: conversation.to_string(),
                user_id: user.to_string(),
                email: super::convert::email_text(&self.user_info(*user).await?.email),
                expires_in_ms: *ttl_ms,
            }),
            Ephemeral::Presence { user, online, last_seen } => Kind::Presence(wire::PresenceSignal {
                user_id: user.to_string(),
                email: super::convert::email_text(&self.user_info(*user).await?.email),
                online: *online,
                last_seen_ms: last_seen.map_or(0, |m| m.0),
            }),
            Ephemeral::KeyPackageStock { device, remaining, has_last_resort } => {
                Kind::KeyPackageStock(self.stock_to_wire(*device, *remaining, *has_last_resort))
            }
        };
        Ok(wire::Signal { kind: Some(kind) })
    }
}
