//! The push worker: a follower of the log that turns new messages into
//! notifications for members with no device connected.
//!
//! It holds the lease on the `push` follower ([`Store::follower_lease`]),
//! reads the log from the lease's position, and gathers each message into a
//! pending notification per (recipient, conversation): due at once when that
//! pair had none in the last `coalesce_ms`, else when that time is up, with
//! the count of messages it covers. When one falls due and the recipient is
//! still offline, it is sent to each of their devices' subscriptions (unless
//! muted) on a task of its own, retried with backoff. The position saved with
//! each lease renewal is the one just before the oldest message whose
//! notification is still pending or in flight: after a crash everything not
//! yet sent is sent, and only what was in flight can repeat.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Answer, Outgoing, PushConfig, PushService, Urgency, MAX_PAYLOAD};
use crate::domain::conversation::{ConversationKind, ConversationState};
use crate::domain::{Content, ConversationId, Event, Millis, Unsubscribed, UserId};
use crate::metrics::Metrics;
use crate::projection::router::Router;
use crate::store::{
    ExpectedVersion, NewEvent, Position, PushTarget, RecordedEvent, Store, StoreError, StreamAppend, StreamName,
};

/// The follower's name in the store.
pub const FOLLOWER: &str = "push";
/// Events read from the log at a time.
const READ_BATCH: u32 = 500;
/// The most text a notification previews, in characters.
const PREVIEW_CHARS: usize = 500;

fn now_ms() -> Millis {
    Millis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// What a client's service worker receives, decrypted (spec/protocol.md,
/// "Push notifications").
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    pub conversation_id: String,
    /// "direct" or "group".
    pub conversation_kind: &'static str,
    /// The group's name; absent for a direct conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_name: Option<String>,
    /// The newest message this notification covers.
    pub seq: u64,
    /// Messages it covers (since the previous notification).
    pub count: u32,
    pub sender_id: String,
    pub sender_name: String,
    pub at_ms: u64,
    /// The newest message's text (or a file's name), only when the user
    /// allows previews.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A notification waiting for its time.
struct Pending {
    /// The oldest message it covers: the checkpoint stays before it.
    first: Position,
    due: Instant,
    payload: Payload,
    kind: ConversationKind,
}

type Key = (UserId, ConversationId);

/// What the worker remembers between batches so that a message costs no
/// read: each conversation's members and name as of the log position read
/// (dropped when an event changes them), and senders' names.
#[derive(Default)]
struct Known {
    conversations: HashMap<ConversationId, Option<Arc<ConversationState>>>,
    names: HashMap<UserId, String>,
}

impl Known {
    /// At most this many of each; beyond, forgotten and read again.
    const MAX: usize = 50_000;

    fn bound(&mut self) {
        if self.conversations.len() > Self::MAX {
            self.conversations.clear();
        }
        if self.names.len() > Self::MAX {
            self.names.clear();
        }
    }
}

pub struct Worker {
    store: Arc<dyn Store>,
    service: Arc<dyn PushService>,
    router: Arc<Router>,
    config: PushConfig,
    /// This node, as the lease names its holder.
    node: String,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        service: Arc<dyn PushService>,
        router: Arc<Router>,
        config: PushConfig,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self { store, service, router, config, node, metrics })
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.lease_ms)
    }

    /// Waits for the lease, works while holding it, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.store.follower_lease(FOLLOWER, &self.node, now_ms(), self.lease(), None).await {
                Ok(Some(position)) => {
                    tracing::info!(node = %self.node, position, "push worker holds the lease");
                    match self.work(position, &shutdown).await {
                        Ok(()) => return,
                        Err(e) => tracing::warn!(error = %e, "push worker stopped; taking the lease again"),
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "push worker cannot reach its lease"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.lease() / 3) => {}
            }
        }
    }

    async fn work(self: &Arc<Self>, from: Position, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let coalesce = Duration::from_millis(self.config.coalesce_ms);
        let renew_every = self.lease() / 3;
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let mut batches = self.store.subscribe();
        let mut at = from;
        let mut pending: HashMap<Key, Pending> = HashMap::new();
        let mut last_sent: HashMap<Key, Instant> = HashMap::new();
        // The oldest position each task in flight covers, counted.
        let mut in_flight: BTreeMap<Position, usize> = BTreeMap::new();
        let mut tasks: JoinSet<Position> = JoinSet::new();
        let mut next_renew = Instant::now() + renew_every;
        let mut caught_up = false;
        let mut known = Known::default();
        loop {
            while let Some(done) = tasks.try_join_next() {
                finished(&mut in_flight, done);
            }
            let room = pending.len() + tasks.len() < self.config.queue;
            let mut full = false;
            if room {
                let events = self.store.read_all(at, READ_BATCH).await?;
                full = events.len() == READ_BATCH as usize;
                if let Some(last) = events.last() {
                    let upto = last.position;
                    self.gather(&events, &mut pending, &last_sent, &mut known, coalesce).await?;
                    at = upto;
                }
                if !full && !caught_up {
                    caught_up = true;
                    tracing::info!(position = at, "push worker caught up with the log");
                }
            }
            self.flush(&mut pending, &mut last_sent, &mut in_flight, &mut tasks, &permits, coalesce).await;

            if Instant::now() >= next_renew {
                let safe = handled(&pending, &in_flight, at);
                self.renew(safe).await?;
                self.metrics.push_progress(safe, at);
                next_renew = Instant::now() + renew_every;
            }
            if full && room {
                continue;
            }
            let next_due = pending.values().map(|p| p.due).min();
            let wake = next_due.map_or(next_renew, |d| d.min(next_renew));
            tokio::select! {
                () = shutdown.cancelled() => {
                    // What was not sent is sent by the next holder, from here;
                    // the lease ends now, so another node need not wait it out.
                    tasks.abort_all();
                    let safe = handled(&pending, &in_flight, at);
                    let ended = Duration::ZERO;
                    let _ = self.store.follower_lease(FOLLOWER, &self.node, now_ms(), ended, Some(safe)).await;
                    return Ok(());
                }
                r = batches.recv() => {
                    if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        tokio::time::sleep_until(wake.into()).await;
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => finished(&mut in_flight, done),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Renews the lease, saving `safe`; a lost lease stops the work (its
    /// tasks end with it, and the new holder sends what is pending here).
    async fn renew(&self, safe: Position) -> Result<(), StoreError> {
        match self.store.follower_lease(FOLLOWER, &self.node, now_ms(), self.lease(), Some(safe)).await? {
            Some(_) => Ok(()),
            None => Err(StoreError::Database("another node took the push worker's lease".into())),
        }
    }

    /// Adds the messages among `events` to the pending notifications of
    /// their conversations' other members.
    async fn gather(
        &self,
        events: &[RecordedEvent],
        pending: &mut HashMap<Key, Pending>,
        last_sent: &HashMap<Key, Instant>,
        known: &mut Known,
        coalesce: Duration,
    ) -> Result<(), StoreError> {
        known.bound();
        let Known { conversations, names } = known;
        let now = Instant::now();
        // A notification the push service would keep no longer is not sent
        // (a worker far behind, or a first start on a long log).
        let too_old = now_ms().0.saturating_sub(u64::from(self.config.ttl_secs) * 1000);
        for rec in events {
            // The log is read in order: a change of members or name is seen
            // before the messages that follow it.
            if rec.event.changes_group() {
                if let Some(id) = rec.event.conversation_id() {
                    conversations.remove(&id);
                }
            }
            let Event::MessageSent(m) = &rec.event else { continue };
            if m.at.0 < too_old {
                continue;
            }
            let state = match conversations.get(&m.conversation_id) {
                Some(s) => s.clone(),
                None => {
                    let s = self.store.conversation(m.conversation_id).await?.map(Arc::new);
                    conversations.insert(m.conversation_id, s.clone());
                    s
                }
            };
            let Some(state) = state else { continue };
            let sender_name = match names.get(&m.sender_user_id) {
                Some(n) => n.clone(),
                None => {
                    let n = self.store.user_by_id(m.sender_user_id).await?.map(|u| u.display_name).unwrap_or_default();
                    names.insert(m.sender_user_id, n.clone());
                    n
                }
            };
            let text = match &m.content {
                Content::Text(t) => t.clone(),
                Content::Media(media) if media.caption.is_empty() => media.file_name.clone(),
                Content::Media(media) => format!("{} ({})", media.caption, media.file_name),
                // End-to-end encrypted: natterd has no text to show, ever.
                Content::Mls { .. } => String::new(),
                // Group bookkeeping, not a message for people.
                Content::MlsCommit { .. } | Content::Erased => continue,
            };
            for user in state.member_ids().filter(|u| *u != m.sender_user_id) {
                let key = (user, m.conversation_id);
                let entry = pending.entry(key).or_insert_with(|| Pending {
                    first: rec.position,
                    due: last_sent.get(&key).map_or(now, |t| (*t + coalesce).max(now)),
                    payload: Payload {
                        conversation_id: m.conversation_id.to_string(),
                        conversation_kind: match state.kind {
                            ConversationKind::Direct => "direct",
                            ConversationKind::Group => "group",
                        },
                        conversation_name: state.name.clone(),
                        seq: 0,
                        count: 0,
                        sender_id: String::new(),
                        sender_name: String::new(),
                        at_ms: 0,
                        text: None,
                    },
                    kind: state.kind,
                });
                entry.payload.seq = rec.version;
                entry.payload.count += 1;
                entry.payload.sender_id = m.sender_user_id.to_string();
                entry.payload.sender_name.clone_from(&sender_name);
                entry.payload.at_ms = m.at.0;
                // An encrypted conversation's notification carries no text at all.
                entry.payload.text = (!state.e2ee).then(|| text.chars().take(PREVIEW_CHARS).collect());
            }
        }
        Ok(())
    }

    /// Sends the notifications that are due to recipients still offline.
    async fn flush(
        self: &Arc<Self>,
        pending: &mut HashMap<Key, Pending>,
        last_sent: &mut HashMap<Key, Instant>,
        in_flight: &mut BTreeMap<Position, usize>,
        tasks: &mut JoinSet<Position>,
        permits: &Arc<Semaphore>,
        coalesce: Duration,
    ) {
        let now = Instant::now();
        let due: Vec<Key> = pending.iter().filter(|(_, p)| p.due <= now).map(|(k, _)| *k).collect();
        if due.is_empty() {
            return;
        }
        last_sent.retain(|_, t| now.duration_since(*t) < coalesce);
        let mut users: Vec<UserId> = due.iter().map(|k| k.0).collect();
        users.sort_unstable();
        users.dedup();
        let here = match self.config.idle_after_ms {
            0 => self.router.online_among(&users).await,
            idle => self.router.active_among(&users, Duration::from_millis(idle)).await,
        };
        for key in due {
            let Some(p) = pending.remove(&key) else { continue };
            // Connected (and, with idle_after_ms, active): the feed tells them.
            if here.contains(&key.0) {
                continue;
            }
            last_sent.insert(key, now);
            *in_flight.entry(p.first).or_default() += 1;
            let worker = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                worker.notify(key, &p).await;
                p.first
            });
        }
    }

    /// Sends one notification to each of the user's subscriptions.
    async fn notify(&self, (user, conversation): Key, p: &Pending) {
        let targets = match self.store.push_targets(conversation, &[user]).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "push worker cannot read subscriptions; notification dropped");
                self.metrics.push("gave_up");
                return;
            }
        };
        let now = now_ms();
        for target in targets {
            let muted = match target.muted_until {
                None => false,
                Some(None) => true,
                Some(Some(until)) => until > now,
            };
            if !muted {
                self.send(&target, p).await;
            }
        }
    }

    async fn send(&self, target: &PushTarget, p: &Pending) {
        let mut payload = p.payload.clone();
        if !target.show_text {
            payload.text = None;
        }
        let topic = topic(&payload.conversation_id);
        let urgency = if p.kind == ConversationKind::Direct { Urgency::High } else { Urgency::Normal };
        let mut attempt = 1;
        loop {
            let body = encode(&mut payload);
            let out = Outgoing {
                subscription: &target.subscription,
                payload: &body,
                ttl_secs: self.config.ttl_secs,
                urgency,
                topic: &topic,
            };
            match self.service.deliver(&out).await {
                Answer::Delivered => {
                    self.metrics.push("delivered");
                    return;
                }
                Answer::Gone => {
                    self.metrics.push("gone");
                    self.unsubscribe(target).await;
                    return;
                }
                // Smaller: without the text (the rest is small and fixed).
                Answer::TooLarge if payload.text.is_some() => payload.text = None,
                Answer::TooLarge => {
                    self.metrics.push("too_large");
                    return;
                }
                Answer::Retry { after, why } => {
                    if attempt >= self.config.max_attempts {
                        tracing::warn!(attempts = attempt, why, "push service kept failing; notification given up");
                        self.metrics.push("gave_up");
                        return;
                    }
                    let backoff = Duration::from_millis(
                        self.config
                            .retry_base_ms
                            .saturating_mul(1 << (attempt - 1).min(20))
                            .min(self.config.retry_max_ms),
                    );
                    // Its advice, within reason (a day would stall the queue).
                    let wait = after.map_or(backoff, |a| a.max(backoff)).min(Duration::from_secs(600));
                    self.metrics.push_retry();
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Answer::Refused(why) => {
                    tracing::warn!(why, "push service refused a notification");
                    self.metrics.push("refused");
                    return;
                }
            }
        }
    }

    /// The push service says the subscription is gone: it is deleted (through
    /// the log), and never tried again.
    async fn unsubscribe(&self, target: &PushTarget) {
        let sub = &target.subscription;
        let event = Event::PushUnsubscribed {
            user_id: sub.user,
            device_id: sub.device,
            endpoint: sub.endpoint.clone(),
            reason: Unsubscribed::Gone,
            at: now_ms(),
        };
        let append = StreamAppend::new(StreamName::user(sub.user), ExpectedVersion::Any, vec![NewEvent::fresh(event)]);
        match self.store.append(vec![append]).await {
            Ok(_) => self.metrics.push_subscription_removed(),
            Err(e) => tracing::warn!(error = %e, "a gone push subscription could not be removed"),
        }
    }
}

/// The position everything up to is handled: just before the oldest message
/// whose notification is waiting or in flight, else how far the log was read.
fn handled(pending: &HashMap<Key, Pending>, in_flight: &BTreeMap<Position, usize>, read: Position) -> Position {
    let oldest = pending.values().map(|p| p.first).chain(in_flight.keys().copied()).min();
    oldest.map_or(read, |p| p.saturating_sub(1))
}

fn finished(in_flight: &mut BTreeMap<Position, usize>, done: Result<Position, tokio::task::JoinError>) {
    let Ok(first) = done else { return };
    if let Some(n) = in_flight.get_mut(&first) {
        *n -= 1;
        if *n == 0 {
            in_flight.remove(&first);
        }
    }
}

/// The payload as JSON, its text shortened until it fits [`MAX_PAYLOAD`].
fn encode(payload: &mut Payload) -> Vec<u8> {
    loop {
        let body = serde_json::to_vec(payload).expect("a payload serializes");
        if body.len() <= MAX_PAYLOAD {
            return body;
        }
        match &mut payload.text {
            Some(text) if !text.is_empty() => {
                let keep = text.chars().count() / 2;
                *text = text.chars().take(keep).collect();
            }
            _ => {
                payload.text = None;
                payload.sender_name = payload.sender_name.chars().take(64).collect();
                payload.conversation_name = payload.conversation_name.take().map(|n| n.chars().take(64).collect());
            }
        }
    }
}

/// The conversation's `Topic`: 32 base64url characters from a hash of its id.
pub fn topic(conversation_id: &str) -> String {
    use base64::Engine as _;
    let hash = Sha256::digest(format!("natter-push-topic:{conversation_id}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(text: &str) -> Payload {
        Payload {
            conversation_id: "c".into(),
            conversation_kind: "group",
            conversation_name: Some("team".into()),
            seq: 3,
            count: 2,
            sender_id: "u".into(),
            sender_name: "Alice".into(),
            at_ms: 5,
            text: Some(text.into()),
        }
    }

    #[test]
    fn a_payload_always_fits_and_keeps_what_it_can() {
        let mut small = payload("hello");
        let body: serde_json::Value = serde_json::from_slice(&encode(&mut small)).unwrap();
        assert_eq!(body["text"], "hello");
        assert_eq!(body["count"], 2);
        // Escaped characters take six bytes each in JSON.
        let mut big = payload(&"\u{1}".repeat(3000));
        let bytes = encode(&mut big);
        assert!(bytes.len() <= MAX_PAYLOAD);
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(body["text"].as_str().unwrap().chars().count() < 3000);
    }

    #[test]
    fn topics_are_32_url_safe_characters_per_conversation() {
        let t = topic("0b7c5e0e-1111-4222-8333-444455556666");
        assert_eq!(t.len(), 32);
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(t, topic("0b7c5e0e-1111-4222-8333-444455556666"));
        assert_ne!(t, topic("another"));
    }
}
