//! Web Push notifications (spec/protocol.md, "Push notifications"): a device
//! registers its subscription; the push worker ([`worker`]), a follower of
//! the log, tells the members of a conversation who have no device connected
//! about its new messages, one notification per conversation per
//! `coalesce_ms` at most, through a [`PushService`] (`webpush`: RFC 8030 with
//! RFC 8291 payload encryption and RFC 8292 VAPID).
//!
//! On several nodes exactly one runs at a time: the worker holds a lease in
//! the store, with its position (the log position it has handled everything
//! up to). A node that dies stops renewing it, and another takes over from
//! that position within `lease_ms`. A crash repeats at most the notifications
//! in flight, which the `Topic` header makes harmless (a newer notification
//! of a topic replaces the older one on the device).

pub mod vapid;
pub mod webpush;
pub mod worker;

use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::PushSubscriptionRecord;

/// `[push]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Whether natterd sends notifications (`RegisterPush` answers
    /// `UNAVAILABLE` when off).
    pub enabled: bool,
    /// VAPID `sub`: how a push service reaches the operator (`mailto:` or
    /// `https:`).
    pub subject: String,
    /// The VAPID private key (32 bytes, base64url); by default derived from
    /// the server key.
    pub vapid_key_file: Option<PathBuf>,
    /// Plain-http endpoints on a loopback address (tests only).
    pub allow_http_loopback: bool,
    /// At most one notification per conversation and user in this long;
    /// messages meanwhile are counted into the next.
    pub coalesce_ms: u64,
    /// A user counts as away, and is notified, when none of their connected
    /// devices made a request in this long (0: only when none is connected).
    /// Feed acknowledgements, which clients send by themselves, do not count.
    pub idle_after_ms: u64,
    /// How long a push service keeps an undelivered notification.
    pub ttl_secs: u32,
    /// Tries of one notification (429, 5xx, timeouts) before giving up.
    pub max_attempts: u32,
    /// The first retry's wait; doubled each time, at most `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// The longest one request to a push service may take.
    pub request_timeout_ms: u64,
    /// Requests to push services at once.
    pub concurrency: usize,
    /// Notifications waiting or in flight; beyond it the worker stops reading
    /// the log until some are done (it lags; nothing is lost).
    pub queue: usize,
    /// The lease on the worker: renewed every third of it; another node
    /// takes over this long after its holder died.
    pub lease_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            subject: "mailto:postmaster@localhost".into(),
            vapid_key_file: None,
            allow_http_loopback: false,
            coalesce_ms: 3000,
            idle_after_ms: 0,
            ttl_secs: 24 * 3600,
            max_attempts: 5,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            request_timeout_ms: 10_000,
            concurrency: 32,
            queue: 10_000,
            lease_ms: 10_000,
        }
    }
}

impl PushConfig {
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let s = self.subject.as_str();
        let ok = s.strip_prefix("mailto:").is_some_and(|a| a.contains('@'))
            || reqwest::Url::parse(s).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some());
        if !ok {
            return Err(format!("push.subject {s:?} must be a mailto: address or an https: URL"));
        }
        if self.max_attempts == 0 || self.concurrency == 0 || self.queue == 0 {
            return Err("push.max_attempts, push.concurrency and push.queue must be at least 1".into());
        }
        if self.lease_ms < 300 {
            return Err("push.lease_ms must be at least 300".into());
        }
        Ok(())
    }
}

/// How soon the push service should deliver (RFC 8030 `Urgency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Direct messages.
    High,
    Normal,
}

/// One request to a push service.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub subscription: &'a PushSubscriptionRecord,
    /// The plaintext, at most [`MAX_PAYLOAD`] bytes; the backend encrypts it.
    pub payload: &'a [u8],
    pub ttl_secs: u32,
    pub urgency: Urgency,
    /// 32 characters of the base64url alphabet: a newer notification of the
    /// same topic replaces an undelivered older one.
    pub topic: &'a str,
}

/// What the push service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Delivered,
    /// 404 or 410: the subscription is gone for good.
    Gone,
    /// 413.
    TooLarge,
    /// 429, 5xx, a timeout or no connection: try again later.
    Retry { after: Option<std::time::Duration>, why: String },
    /// Anything else: not tried again.
    Refused(String),
}

/// A way to hand a notification to a device's push service.
#[async_trait]
pub trait PushService: Send + Sync + 'static {
    async fn deliver(&self, out: &Outgoing<'_>) -> Answer;
}

/// The most plaintext one notification carries: 4,096 bytes of `aes128gcm`
/// body (what RFC 8030 push services must accept) less its header (86 bytes:
/// salt, record size, the 65-byte key id) and the record's tag and padding
/// delimiter (17).
pub const MAX_PAYLOAD: usize = 4096 - 86 - 17;

/// Checks a `RegisterPush`: the endpoint (https; http only to loopback when
/// allowed), the P-256 key and the auth secret.
///
/// # Errors
/// The field and why, for `INVALID_ARGUMENT`.
pub fn check_subscription(
    endpoint: &str,
    p256dh: &[u8],
    auth: &[u8],
    allow_http_loopback: bool,
) -> Result<(), (&'static str, String)> {
    if endpoint.len() > 2048 {
        return Err(("endpoint", "longer than 2048 bytes".into()));
    }
    let url = reqwest::Url::parse(endpoint).map_err(|e| ("endpoint", format!("not a URL: {e}")))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or(("endpoint", "has no host".to_owned()))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(("endpoint", "must not carry credentials or a fragment".into()));
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_http_loopback && crate::auth::http::is_loopback_host(host) => {}
        _ => {
            return Err((
                "endpoint",
                "must be an https URL (plain http only to loopback on a server set up for tests)".into(),
            ));
        }
    }
    if p256dh.len() != 65 || p256dh[0] != 4 {
        return Err(("p256dh", "must be an uncompressed P-256 point (65 bytes, 0x04 first)".into()));
    }
    if web_push_native::p256::PublicKey::from_sec1_bytes(p256dh).is_err() {
        return Err(("p256dh", "is not a point on P-256".into()));
    }
    if auth.len() != 16 {
        return Err(("auth", "must be 16 bytes".into()));
    }
    Ok(())
}
