//! Retention: messages older than a limit lose their content, by the same
//! mechanism as deleting an account (`store::erasure`): their `MessageSent`
//! events are rewritten in place to `Content::Erased` (seqs, senders and
//! times kept), the uploads they carried become `Redacted` and their bytes
//! are collected, in one transaction with the conversation's
//! `MessagesExpired`, which the read models, the search follower and the
//! members' clients act on.
//!
//! The limit is the deployment's (`retention.max_age_secs`) or the
//! conversation's own (`SetRetention`, spec section 5.32), the shorter of
//! the two that are set. Every natterd runs the worker; two nodes expiring
//! the same messages at once rewrite them to the same content (and append
//! a `MessagesExpired` each, which is harmless).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blob::{BlobId, BlobStore};
use crate::domain::{Content, ConversationId, Event, MediaId, MessageSent, Millis, Seq};
use crate::store::erasure::LogRewrite;
use crate::store::{
    AppendError, ExpectedVersion, MessageRecord, NewEvent, Store, StoreError, StreamAppend, StreamName,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Messages older than this (seconds) have their content and files
    /// erased, in every conversation; 0: kept for ever. A conversation may
    /// set a shorter limit of its own (`SetRetention`).
    pub max_age_secs: u64,
    /// How often the worker looks for expired messages.
    pub interval_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_age_secs: 0, interval_ms: 600_000 }
    }
}

/// Later than any message (what the stores hold as a signed 64-bit number):
/// expiring before it erases everything.
pub const END_OF_TIME: Millis = Millis(i64::MAX as u64);

/// The longest limit a conversation may set: a century.
pub const MAX_AGE_LIMIT_SECS: u64 = 100 * 365 * 86_400;

/// Messages rewritten in one transaction.
const BATCH: u32 = 1000;

/// The limit that applies: the shorter of the two that are set (0: none).
pub fn effective(own: u64, deployment: u64) -> u64 {
    match (own, deployment) {
        (0, d) => d,
        (c, 0) => c,
        (c, d) => c.min(d),
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub conversations: u64,
    pub messages: u64,
    pub blobs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Append(#[from] AppendError),
}

/// One pass over every conversation with a limit, as at `now`.
///
/// # Errors
/// The store fails (what was expired before stays expired).
pub async fn run(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    config: &RetentionConfig,
    now: Millis,
) -> Result<Report, RetentionError> {
    let mut report = Report::default();
    for (conversation, own) in store.retention_limits(config.max_age_secs > 0).await? {
        let age = effective(own, config.max_age_secs);
        if age == 0 {
            continue;
        }
        let before = Millis(now.0.saturating_sub(age.saturating_mul(1000)));
        let (messages, collected) = expire(store, blobs, conversation, before, now).await?;
        if messages > 0 {
            report.conversations += 1;
            report.messages += messages;
            report.blobs += collected;
        }
    }
    Ok(report)
}

/// Erases the content of `conversation`'s messages sent before `before`, a
/// batch per transaction. Returns the messages erased and blobs deleted.
///
/// # Errors
/// The store fails (what was erased before stays erased).
pub async fn expire(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    conversation: ConversationId,
    before: Millis,
    now: Millis,
) -> Result<(u64, u64), RetentionError> {
    let (mut after, mut erased, mut collected) = (Seq(0), 0, 0);
    loop {
        let page = store.expired_messages(conversation, before, after, BATCH).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == BATCH as usize;
        // A full batch covers the messages up to its last one.
        let upto = if full { Millis((last.at.0 + 1).min(before.0)) } else { before };
        let mut rewrite = LogRewrite::default();
        let mut shas = Vec::new();
        for m in &page {
            let media: Vec<MediaId> = match &m.content {
                // The group's other members need the commits to follow the epochs.
                Content::MlsCommit { .. } | Content::Erased => continue,
                Content::Text(_) => Vec::new(),
                Content::Media(r) => std::iter::once(r.media_id).chain(r.preview).collect(),
                Content::Mls { media, .. } => media.iter().copied().collect(),
            };
            for id in media {
                if let Some((position, sha256)) = upload_event(store, id).await? {
                    rewrite.events.push((position, Event::Redacted { was: "MediaUploaded".into(), at: now }));
                    shas.push(sha256);
                }
            }
            rewrite.events.push((m.position, erased_message(m)));
        }
        if !rewrite.events.is_empty() {
            let count = rewrite.events.iter().filter(|(_, e)| matches!(e, Event::MessageSent(_))).count() as u64;
            let expired = Event::MessagesExpired { conversation_id: conversation, before: upto, at: now };
            let append = StreamAppend::new(
                StreamName::retention(conversation),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(expired)],
            );
            store.rewrite(rewrite, vec![append]).await?;
            erased += count;
            for sha256 in shas {
                match crate::media::gc::collect_unreferenced(store, blobs, BlobId(sha256), now).await {
                    Ok(true) => collected += 1,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "an expired message's blob was not deleted; the collector will")
                    }
                }
            }
        }
        if !full {
            break;
        }
    }
    Ok((erased, collected))
}

/// The message's event as an erasure rewrites it.
fn erased_message(m: &MessageRecord) -> Event {
    Event::MessageSent(MessageSent {
        conversation_id: m.conversation_id,
        sender_user_id: m.sender_user_id,
        sender_device_id: m.sender_device_id,
        client_msg_id: m.client_msg_id.clone(),
        content: Content::Erased,
        at: m.at,
    })
}

/// Where the upload's `MediaUploaded` is in the log, and its bytes' hash
/// (`None` when the upload is gone from the read models already).
async fn upload_event(store: &dyn Store, id: MediaId) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let Some(media) = store.media(id).await? else { return Ok(None) };
    let stream = StreamName::blob(&media.sha256);
    let mut after = 0;
    loop {
        let events = store.read_stream(&stream, after, 1000).await?;
        let Some(last) = events.last() else { return Ok(None) };
        after = last.version;
        for e in &events {
            if matches!(&e.event, Event::MediaUploaded(u) if u.media_id == id) {
                return Ok(Some((e.position, media.sha256)));
            }
        }
    }
}

/// Runs [`run`] every `retention.interval_ms` until shutdown.
pub async fn every_interval(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    config: RetentionConfig,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Millis::now();
        match run(store.as_ref(), blobs.as_ref(), &config, now).await {
            Ok(r) if r.messages > 0 => {
                metrics.messages_erased("retention", r.messages);
                tracing::info!(
                    conversations = r.conversations,
                    messages = r.messages,
                    blobs = r.blobs,
                    "expired messages erased"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the retention pass stopped; it runs again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::effective;

    #[test]
    fn the_shorter_limit_that_is_set_applies() {
        assert_eq!(effective(0, 0), 0);
        assert_eq!(effective(0, 30), 30);
        assert_eq!(effective(20, 0), 20);
        assert_eq!(effective(20, 30), 20);
        assert_eq!(effective(40, 30), 30);
    }
}
