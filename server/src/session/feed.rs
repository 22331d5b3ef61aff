//! The event feed of one connection: first the backlog after the client's
//! cursor (read from the log), then live events from the router, in cursor
//! order, each exactly once. When the live queue overflowed, the feed falls back
//! to reading the log from its cursor until it has caught up again.

use std::sync::Arc;

use natter_proto::wire::{self, feed_event, feed_frame};
use tokio::sync::mpsc;

use super::{convert, Service, WireError};
use crate::domain::{conversation, Event, UserId};
use crate::projection::router::LagFlag;
use crate::store::{Position, RecordedEvent};

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
    reading_log: bool,
    caught_up_sent: bool,
}

impl FeedSource {
    pub(super) fn new(
        service: Arc<Service>,
        user: UserId,
        since: Position,
        rx: mpsc::Receiver<Arc<RecordedEvent>>,
        lag: Arc<LagFlag>,
    ) -> Self {
        Self { service, user, last: since, rx, lag, reading_log: true, caught_up_sent: false }
    }

    /// The next frames to write, in order. Waits for live events when there is
    /// nothing to send. `None` when the router dropped the queue (shutdown).
    ///
    /// # Errors
    /// When the store failed; the transport closes the feed and the client
    /// resyncs on a new connection.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<wire::FeedFrame>>, WireError> {
        loop {
            if self.lag.take() {
                // The live queue overflowed: forget it and read the log instead.
                while self.rx.try_recv().is_ok() {}
                self.reading_log = true;
            }
            if self.reading_log {
                let events = self.service.store().feed(self.user, self.last, BATCH as u32).await?;
                if !events.is_empty() {
                    return self.frames(events.iter()).await.map(Some);
                }
                self.reading_log = false;
                if !self.caught_up_sent {
                    self.caught_up_sent = true;
                    return Ok(Some(vec![wire::FeedFrame {
                        kind: Some(feed_frame::Kind::CaughtUp(wire::CaughtUp { cursor: self.last })),
                    }]));
                }
                continue;
            }
            let first = tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(ev) => ev,
                    None => return Ok(None),
                },
                () = self.lag.wait() => continue,
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
                return Ok(Some(frames));
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
            if let Some(kind) = self.to_wire(rec).await? {
                out.push(wire::FeedFrame {
                    kind: Some(feed_frame::Kind::Event(wire::FeedEvent { cursor: rec.position, kind: Some(kind) })),
                });
            }
        }
        Ok(out)
    }

    async fn to_wire(&self, rec: &RecordedEvent) -> Result<Option<feed_event::Kind>, WireError> {
        Ok(match &rec.event {
            Event::MessageSent(m) => {
                let sender = self.service.user_info(m.sender_user_id).await?;
                Some(feed_event::Kind::Message(convert::message_event(m, rec.version, &sender)))
            }
            Event::DirectConversationStarted { .. } => {
                let state = conversation::apply(None, &rec.event).expect("a start event creates the state");
                let wire = self.service.conversation_to_wire(&state, None).await?;
                Some(feed_event::Kind::ConversationStarted(wire))
            }
            Event::UserRegistered(_)
            | Event::EmailClaimed { .. }
            | Event::SessionStarted(_)
            | Event::SessionRevoked { .. } => None,
        })
    }
}
