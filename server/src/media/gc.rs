//! The collector: uploads no message sent in time are discarded, and stored
//! bytes nothing refers to any more are deleted from the blob store.
//!
//! Everything that refers to a blob is an event in the blob's own stream
//! (`blob:<sha256>`): `MediaUploaded`, `MediaDiscarded`, and the collector's
//! `BlobCollected` / `BlobErased`. That stream's version orders an upload
//! that refers to stored bytes against the collector that deletes them:
//!
//! - an upload reads the version ([`blob_version`]) *before* it stores or
//!   finds the bytes, and appends its `MediaUploaded` at exactly that
//!   version;
//! - the collector checks that no stored upload has the bytes, and appends
//!   `BlobCollected` at exactly the version it read before checking; only then
//!   does it delete the bytes, and `BlobErased` follows.
//!
//! So either the collector's append comes first (the upload's fails: it was
//! told to retry, and refers to nothing), or the upload's does (the
//! collector's fails, or its check sees the upload). While `BlobCollected`
//! is the newest event, uploads of those bytes wait. A collection left
//! half-done (natterd stopped between the two events) is finished by whoever
//! finds it after [`STALLED`].
//!
//! Sending media, too, must not race its discarding: natterd accepts an
//! upload in a message only until [`MediaConfig::send_deadline`], an hour
//! before the collector may discard it.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::MediaConfig;
use crate::blob::{BlobError, BlobId, BlobStat, BlobStore};
use crate::domain::{Event, Millis};
use crate::store::{AppendError, ExpectedVersion, MediaRecord, NewEvent, Store, StoreError, StreamAppend, StreamName};

/// A collection whose `BlobErased` has not followed after this long was left
/// by a collector that stopped; anyone may finish it.
pub const STALLED: Duration = Duration::from_secs(600);

/// Blobs listed per page.
const LIST_PAGE: usize = 1000;

/// When the collector acts.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Unsent uploads older than this are discarded.
    pub unsent_ttl: Duration,
    /// Bytes stored more recently than this are left alone.
    pub grace: Duration,
}

impl From<&MediaConfig> for Policy {
    fn from(c: &MediaConfig) -> Self {
        Self { unsent_ttl: Duration::from_secs(c.unsent_ttl_secs), grace: Duration::from_secs(c.gc_grace_secs) }
    }
}

/// What a collector run did, or (dry run) would do.
#[derive(Debug, Default)]
pub struct Report {
    /// Uploads (and their previews) discarded.
    pub discarded: Vec<MediaRecord>,
    /// Blobs deleted.
    pub collected: Vec<BlobStat>,
    /// Blobs left because an upload referred to them meanwhile.
    pub raced: usize,
}

impl Report {
    pub fn freed_bytes(&self) -> u64 {
        self.collected.iter().map(|b| b.size).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The bytes are being deleted; an upload of them waits.
    #[error("these bytes are being deleted from the file store; retry shortly")]
    Collecting,
}

impl From<AppendError> for GcError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Store(e) => Self::Store(e),
            e => Self::Store(StoreError::Database(e.to_string())),
        }
    }
}

fn elapsed(now: Millis, at: Millis) -> Duration {
    Duration::from_millis(now.0.saturating_sub(at.0))
}

/// The version of the blob's stream an upload that is about to store or find
/// these bytes appends its `MediaUploaded` at.
///
/// # Errors
/// [`GcError::Collecting`] while a collection of the bytes runs; store errors.
pub async fn blob_version(store: &dyn Store, blobs: &dyn BlobStore, blob: BlobId, now: Millis) -> Result<u64, GcError> {
    let stream = StreamName::blob(&blob.0);
    let Some(last) = store.last_in_stream(&stream).await? else { return Ok(0) };
    match last.event {
        Event::BlobCollected { at, .. } if elapsed(now, at) < STALLED => Err(GcError::Collecting),
        Event::BlobCollected { .. } => {
            finish_collection(store, blobs, blob, last.version, now).await?;
            Ok(last.version + 1)
        }
        _ => Ok(last.version),
    }
}

/// Deletes collected bytes and records it (at `version + 1`: one finisher wins).
async fn finish_collection(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    blob: BlobId,
    version: u64,
    now: Millis,
) -> Result<(), GcError> {
    blobs.delete(blob).await?;
    let erased = StreamAppend::new(
        StreamName::blob(&blob.0),
        ExpectedVersion::Exact(version),
        vec![NewEvent::fresh(Event::BlobErased { sha256: blob.0, at: now })],
    );
    match store.append(vec![erased]).await {
        Ok(_) | Err(AppendError::WrongExpectedVersion { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The event id of an upload's discarding: the same on every node, so two
/// collectors discarding it at once store it once.
fn discard_id(media: &MediaRecord) -> Uuid {
    Uuid::new_v5(&media.media_id.0, b"MediaDiscarded")
}

/// One collector pass at `now`: discards unsent uploads past their time,
/// then deletes the bytes no stored upload has. With `dry_run`, reports what
/// it would do and changes nothing.
///
/// # Errors
/// Store and blob store failures (what was done before stays done).
pub async fn run(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    policy: Policy,
    now: Millis,
    dry_run: bool,
) -> Result<Report, GcError> {
    let mut report = Report::default();
    let cutoff = Millis(now.0.saturating_sub(policy.unsent_ttl.as_millis() as u64));
    loop {
        let page = store.media_unsent(cutoff, if dry_run { u32::MAX } else { 500 }).await?;
        if page.is_empty() {
            break;
        }
        for media in page {
            let preview = match media.preview {
                Some(p) => store.media(p).await?,
                None => None,
            };
            for m in std::iter::once(media).chain(preview) {
                if !dry_run {
                    let discarded = Event::MediaDiscarded { media_id: m.media_id, sha256: m.sha256, at: now };
                    let append = StreamAppend::new(
                        StreamName::blob(&m.sha256),
                        ExpectedVersion::Any,
                        vec![NewEvent { id: discard_id(&m), event: discarded }],
                    );
                    store.append(vec![append]).await?;
                }
                report.discarded.push(m);
            }
        }
        if dry_run {
            break;
        }
    }
    let mut after = None;
    loop {
        let page = blobs.list(after, LIST_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.blob);
        for stat in page {
            if elapsed(now, Millis(stat.stored_at_ms)) < policy.grace {
                continue;
            }
            if dry_run {
                let going = report.discarded.iter().filter(|m| m.sha256 == stat.blob.0).count() as u64;
                if store.media_refs(stat.blob.0).await? <= going {
                    report.collected.push(stat);
                }
                continue;
            }
            match collect(store, blobs, stat.blob, now).await? {
                Collect::Deleted => report.collected.push(stat),
                Collect::Raced => report.raced += 1,
                Collect::Referred => {}
            }
        }
    }
    Ok(report)
}

/// Deletes `blob` now if no stored upload has it (an upload whose metadata
/// natterd stripped leaves the bytes as they arrived behind). Returns
/// whether it was deleted.
///
/// # Errors
/// Store and blob store failures.
pub async fn collect_unreferenced(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    blob: BlobId,
    now: Millis,
) -> Result<bool, GcError> {
    Ok(matches!(collect(store, blobs, blob, now).await?, Collect::Deleted))
}

enum Collect {
    Deleted,
    Referred,
    Raced,
}

/// Deletes `blob` if no stored upload has it (see the module's protocol).
async fn collect(store: &dyn Store, blobs: &dyn BlobStore, blob: BlobId, now: Millis) -> Result<Collect, GcError> {
    let stream = StreamName::blob(&blob.0);
    let last = store.last_in_stream(&stream).await?;
    let version = last.as_ref().map_or(0, |e| e.version);
    if let Some(Event::BlobCollected { at, .. }) = last.as_ref().map(|e| &e.event) {
        // Someone's collection: theirs to finish, unless they stopped.
        if elapsed(now, *at) < STALLED {
            return Ok(Collect::Raced);
        }
        finish_collection(store, blobs, blob, version, now).await?;
        return Ok(Collect::Deleted);
    }
    if store.media_refs(blob.0).await? > 0 {
        return Ok(Collect::Referred);
    }
    let collected = StreamAppend::new(
        stream,
        ExpectedVersion::Exact(version),
        vec![NewEvent::fresh(Event::BlobCollected { sha256: blob.0, at: now })],
    );
    match store.append(vec![collected]).await {
        Ok(_) => {}
        Err(AppendError::WrongExpectedVersion { .. }) => return Ok(Collect::Raced),
        Err(e) => return Err(e.into()),
    }
    finish_collection(store, blobs, blob, version + 1, now).await?;
    Ok(Collect::Deleted)
}

/// Runs the collector every `media.gc_interval_secs` until shutdown.
pub async fn every_interval(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    config: MediaConfig,
    shutdown: tokio_util::sync::CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(config.gc_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let policy = Policy::from(&config);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Millis::now();
        match run(store.as_ref(), blobs.as_ref(), policy, now, false).await {
            Ok(report) => {
                metrics.media_collected(
                    report.discarded.len() as u64,
                    report.collected.len() as u64,
                    report.freed_bytes(),
                );
                if !report.discarded.is_empty() || !report.collected.is_empty() {
                    tracing::info!(
                        discarded = report.discarded.len(),
                        blobs = report.collected.len(),
                        bytes = report.freed_bytes(),
                        raced = report.raced,
                        "media collected"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "media collection stopped; it runs again later"),
        }
    }
}
