//! The event feed of one connection: first the backlog after the client's
//! cursor (read from the log), then live events from the router, in cursor
//! order, each exactly once. When the live queue overflowed, the feed falls back
//! to reading the log from its cursor until it has caught up again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_proto::wire::{self, feed_event, feed_frame, group_event};
use tokio::sync::{mpsc, watch};

use super::{convert, Identity, Service, WireError};
use crate::domain::{conversation, ConversationId, Event, Seq, UserId};
use crate::projection::router::{Ephemeral, FeedAttachment, LagFlag};
use crate::store::{
    AppendError, ExpectedVersion, NewEvent, Position, Precondition, RecordedEvent, StreamAppend, StreamName,
};

/// Most events read from the log (or drained from the queue) per batch.
const BATCH: usize = 256;

/// Produces the frames of one connection's feed stream.
pub struct FeedSource {
    service: Arc<Service>,
    user: UserId,
    /// The cursor of the last event handed out.
    last: Position,
    rx: mpsc::Receiver<Arc<RecordedEvent>>,
    lag: Arc<LagFlag>,
    /// Reading from the log rather than the live queue.
    signals: mpsc::Receiver<Arc<Ephemeral>>,
    reading_log: bool,
    caught_up_sent: bool,
    delivered: DeliveryTracker,
}

/// What to send next: feed frames (on the stream, in order) and ephemeral
/// signals (as datagrams where the peer takes them).
pub struct FeedBatch {
    pub frames: Vec<wire::FeedFrame>,
    pub signals: Vec<wire::Signal>,
}

impl FeedBatch {
    fn frames(frames: Vec<wire::FeedFrame>) -> Self {
        Self { frames, signals: Vec::new() }
    }
}

impl FeedSource {
    pub(super) fn new(
        service: Arc<Service>,
        user: UserId,
        since: Position,
        attachment: FeedAttachment,
        delivered: DeliveryTracker,
    ) -> Self {
        let FeedAttachment { events: rx, lag, signals } = attachment;
        Self { service, user, last: since, rx, lag, signals, reading_log: true, caught_up_sent: false, delivered }
    }

    /// The next frames to write, in order. Waits for live events when there is
    /// nothing to send. `None` when the router dropped the queue (shutdown).
    ///
    /// # Errors
    /// When the store failed; the transport closes the feed and the client
    /// resyncs on a new connection.
    pub async fn next_batch(&mut self) -> Result<Option<FeedBatch>, WireError> {
        loop {
            if self.lag.take() {
                // The live queue overflowed: forget it and read the log instead.
                while self.rx.try_recv().is_ok() {}
                self.reading_log = true;
            }
            if self.reading_log {
                let events = self.service.store().feed(self.user, self.last, BATCH as u32).await?;
                if !events.is_empty() {
                    return self.frames(events.iter()).await.map(FeedBatch::frames).map(Some);
                }
                self.reading_log = false;
                if !self.caught_up_sent {
                    self.caught_up_sent = true;
                    return Ok(Some(FeedBatch::frames(vec![wire::FeedFrame {
                        kind: Some(feed_frame::Kind::CaughtUp(wire::CaughtUp { cursor: self.last })),
                    }])));
                }
                continue;
            }
            let first = tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return Ok(None),
                },
                () = self.lag.wait() => continue,
                signal = self.signals.recv() => {
                    let Some(signal) = signal else { return Ok(None) };
                    let mut signals = vec![self.service.signal_to_wire(&signal).await?];
                    while let Ok(more) = self.signals.try_recv() {
                        signals.push(self.service.signal_to_wire(&more).await?);
                    }
                    return Ok(Some(FeedBatch { frames: Vec::new(), signals }));
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            let frames = self.frames(batch.iter().map(|e| &**e)).await?;
            if !frames.is_empty() {
                return Ok(Some(FeedBatch::frames(frames)));
            }
        }
    }

    async fn frames<'a>(
        &mut self,
        events: impl Iterator<Item = &'a RecordedEvent>,
    ) -> Result<Vec<wire::FeedFrame>, WireError> {
        let mut out = Vec::new();
        for rec in events {
            // Live events that the log already delivered are skipped: exactly once.
            if rec.position <= self.last {
                continue;
            }
            self.last = rec.position;
            if let Some(conv) = rec.event.conversation_id().filter(|_| rec.stream.is_conversation()) {
                self.delivered.record(rec.position, conv, Seq(rec.version));
            }
            if let Some(kind) = self.to_wire(rec).await? {
                out.push(wire::FeedFrame {
                    kind: Some(feed_frame::Kind::Event(wire::FeedEvent { cursor: rec.position, kind: Some(kind) })),
                });
            }
        }
        Ok(out)
    }

    async fn to_wire(&self, rec: &RecordedEvent) -> Result<Option<feed_event::Kind>, WireError> {
        let svc = &self.service;
        let member = |user: UserId, role| async move {
            let info = svc.user_info(user).await?;
            Ok::<_, WireError>(convert::member(user, role, &info))
        };
        let group = |conv: ConversationId, actor: Option<UserId>, at: crate::domain::Millis, change| {
            feed_event::Kind::Group(wire::GroupEvent {
                conversation_id: conv.to_string(),
                seq: rec.version,
                actor_user_id: actor.map(|a| a.to_string()).unwrap_or_default(),
                at_ms: at.0,
                change: Some(change),
            })
        };
        Ok(match &rec.event {
            Event::MessageSent(m) => {
                let sender = svc.user_info(m.sender_user_id).await?;
                Some(feed_event::Kind::Message(convert::message_event(m, rec.version, &sender)))
            }
            Event::DirectConversationStarted { conversation_id, .. } => {
                let mut state = conversation::apply(None, &rec.event).expect("a start event creates the state");
                // Encrypted from its creation on (the event right after this one).
                state.e2ee = svc.conversation(*conversation_id).await?.is_some_and(|s| s.e2ee);
                Some(feed_event::Kind::ConversationStarted(svc.conversation_to_wire(&state, None).await?))
            }
            Event::GroupCreated { conversation_id, creator, at, .. } => {
                let mut state = conversation::apply(None, &rec.event).expect("a start event creates the state");
                state.e2ee = svc.conversation(*conversation_id).await?.is_some_and(|s| s.e2ee);
                let snapshot = svc.conversation_to_wire(&state, None).await?;
                Some(group(*conversation_id, Some(*creator), *at, group_event::Change::Created(snapshot)))
            }
            Event::MembersAdded { conversation_id, actor, members, at } => {
                let mut added = Vec::with_capacity(members.len());
                for (u, r) in members {
                    added.push(member(*u, Some(*r)).await?);
                }
                let change = group_event::Change::MembersAdded(wire::MembersAdded { members: added });
                Some(group(*conversation_id, Some(*actor), *at, change))
            }
            Event::MemberRemoved { conversation_id, actor, user, at } => {
                let change = group_event::Change::MemberRemoved(member(*user, None).await?);
                Some(group(*conversation_id, Some(*actor), *at, change))
            }
            Event::MemberLeft { conversation_id, user, at } => {
                let change = group_event::Change::MemberLeft(member(*user, None).await?);
                Some(group(*conversation_id, Some(*user), *at, change))
            }
            Event::RoleChanged { conversation_id, actor, user, role, at } => {
                let change = group_event::Change::RoleChanged(member(*user, Some(*role)).await?);
                Some(group(*conversation_id, *actor, *at, change))
            }
            Event::GroupDeleted { conversation_id, by, at } => {
                Some(group(*conversation_id, *by, *at, group_event::Change::Deleted(wire::GroupDeleted {})))
            }
            Event::GroupRenamed { conversation_id, actor, name, at } => {
                Some(group(*conversation_id, Some(*actor), *at, group_event::Change::Renamed(name.clone())))
            }
            Event::DeliveredUpTo { conversation_id, user, seq, .. } => Some(feed_event::Kind::Receipt(wire::Receipt {
                conversation_id: conversation_id.to_string(),
                user_id: user.to_string(),
                delivered_up_to: seq.0,
                read_up_to: 0,
            })),
            Event::ReadUpTo { conversation_id, user, seq, .. } => Some(feed_event::Kind::Receipt(wire::Receipt {
                conversation_id: conversation_id.to_string(),
                user_id: user.to_string(),
                delivered_up_to: 0,
                read_up_to: seq.0,
            })),
            Event::RetentionSet { conversation_id, actor, max_age_secs, .. } => {
                Some(feed_event::Kind::RetentionChanged(wire::RetentionChanged {
                    conversation_id: conversation_id.to_string(),
                    actor_user_id: actor.to_string(),
                    max_age_secs: *max_age_secs,
                }))
            }
            Event::MessagesExpired { conversation_id, before, .. } => {
                Some(feed_event::Kind::MessagesExpired(wire::MessagesExpired {
                    conversation_id: conversation_id.to_string(),
                    before_ms: before.0,
                }))
            }
            Event::AccountErased { user_id, .. } => {
                svc.forget_user_info(*user_id);
                Some(feed_event::Kind::AccountErased(wire::AccountErased { user_id: user_id.to_string() }))
            }
            Event::UserRegistered(_)
            | Event::Redacted { .. }
            | Event::EmailClaimed { .. }
            | Event::SessionStarted(_)
            | Event::SessionRevoked { .. }
            | Event::PrivacyChanged { .. }
            | Event::PushSubscribed(_)
            | Event::DeviceKeyRegistered { .. }
            | Event::ConversationEncrypted { .. }
            | Event::MlsEpochClosed { .. }
            | Event::PushUnsubscribed { .. }
            | Event::PushPreviewsSet { .. }
            | Event::ConversationMuted { .. }
            | Event::ConversationUnmuted { .. }
            | Event::PasswordChanged { .. }
            | Event::EmailVerified { .. }
            | Event::TotpEnabled { .. }
            | Event::TotpDisabled { .. }
            | Event::RecoveryCodesIssued { .. }
            | Event::RecoveryCodeUsed { .. }
            | Event::PhoneClaimed { .. }
            | Event::PhoneAdded { .. }
            | Event::PhoneReleased { .. }
            | Event::PhoneRemoved { .. }
            | Event::AccountOpened(_)
            | Event::MediaUploaded(_)
            | Event::MediaDiscarded { .. }
            | Event::BlobCollected { .. }
            | Event::BlobErased { .. }
            | Event::IdentityClaimed { .. }
            | Event::IdentityReleased { .. }
            | Event::IdentityLinked { .. }
            | Event::IdentityUnlinked { .. }
            | Event::AdminGranted { .. }
            | Event::AdminRevoked { .. }
            | Event::AccountDisabled { .. }
            | Event::AccountEnabled { .. }
            | Event::AdminActed(_) => None,
        })
    }
}

/// Conversation events handed out on a feed and not yet acknowledged: cursor →
/// (conversation, seq). Bounded: the oldest are forgotten first (a later ack
/// covers their conversation anyway as long as something newer is pending).
#[derive(Clone, Default)]
pub struct DeliveryTracker {
    pending: Arc<Mutex<VecDeque<(Position, ConversationId, Seq)>>>,
}

/// Unacknowledged feed events remembered per connection.
const TRACKED_MAX: usize = 4096;
/// How long acks are gathered before they become receipts.
const ACK_COALESCE: Duration = Duration::from_millis(100);

impl DeliveryTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn record(&self, position: Position, conv: ConversationId, seq: Seq) {
        let mut pending = self.pending.lock().expect("tracker lock");
        if pending.len() >= TRACKED_MAX {
            pending.pop_front();
        }
        pending.push_back((position, conv, seq));
    }

    /// Removes everything up to `cursor`: the highest seq per conversation.
    fn acknowledge(&self, cursor: Position) -> HashMap<ConversationId, Seq> {
        let mut pending = self.pending.lock().expect("tracker lock");
        let mut out: HashMap<ConversationId, Seq> = HashMap::new();
        while pending.front().is_some_and(|(p, _, _)| *p <= cursor) {
            let (_, conv, seq) = pending.pop_front().expect("checked");
            let e = out.entry(conv).or_insert(seq);
            *e = (*e).max(seq);
        }
        out
    }
}

/// Turns a connection's feed acknowledgements into delivered receipts: waits for
/// an ack, gathers the burst, and appends one `DeliveredUpTo` per conversation
/// where the user's delivered watermark moves forward (so receipts seen by
/// others only ever grow, whichever device acknowledged). Only current members
/// report delivery. Ends with the connection's session.
pub async fn deliver_receipts(
    service: Arc<Service>,
    me: Identity,
    tracker: DeliveryTracker,
    mut acked: watch::Receiver<Position>,
) {
    while acked.changed().await.is_ok() {
        tokio::time::sleep(ACK_COALESCE).await;
        let cursor = *acked.borrow_and_update();
        for (conv, seq) in tracker.acknowledge(cursor) {
            let current = match service.store().receipt(conv, me.user_id).await {
                Ok(r) => r.delivered,
                Err(e) => {
                    tracing::warn!(error = %e, "delivered receipts skipped");
                    continue;
                }
            };
            let now = service.now();
            let Some(event) = conversation::decide_delivered(conv, me.user_id, me.device_id, current, seq, now) else {
                continue;
            };
            let append =
                StreamAppend::new(StreamName::receipts(conv), ExpectedVersion::Any, vec![NewEvent::fresh(event)])
                    .with_precondition(Precondition::ActiveMember { conversation: conv, user: me.user_id });
            match service.store().append(vec![append]).await {
                Ok(_) | Err(AppendError::PreconditionFailed(_)) => {}
                Err(e) => tracing::warn!(error = %e, "delivered receipt not stored"),
            }
        }
    }
}
