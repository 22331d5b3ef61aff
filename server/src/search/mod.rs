//! Full-text search: a projection of the log into a search index
//! (spec/protocol.md, "Search"). `SearchIndex` is what a backend does;
//! `tantivy` is the embedded one, in `<data_dir>/search/`. [`follow`] feeds
//! an index from the log and [`Search`] answers queries, only ever from
//! messages the searcher may read.
//!
//! The index keeps, with each commit, the log position it holds everything
//! up to (tantivy: the commit's payload). After a crash or a restart the
//! projection resumes from there; a document is keyed by conversation and
//! seq, so an event indexed again replaces itself and nothing is ever found
//! twice. Commits are batched by time and size, never one per event. Every
//! node keeps its own index of the shared log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::domain::{Content, ConversationId, Event, Millis, Seq, UserId};
use crate::metrics::Metrics;
use crate::store::{Position, RecordedEvent, Store, StoreError};

pub mod tantivy;
pub mod text;

pub use text::{Clause, QueryError, Snippet};

/// `[search]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub backend: SearchBackend,
    /// The longest a new message waits to become searchable.
    pub commit_interval_ms: u64,
    /// Documents that force a commit sooner (catching up on a long log).
    pub commit_docs: usize,
    /// The index writer's memory budget, in bytes.
    pub writer_memory_bytes: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            backend: SearchBackend::Tantivy,
            commit_interval_ms: 1000,
            commit_docs: 50_000,
            writer_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Which backend holds the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchBackend {
    /// Embedded, in `<data_dir>/search/`.
    #[default]
    Tantivy,
    /// No index: `Search` answers `UNAVAILABLE`.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One message as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub at: Millis,
    pub text: String,
}

/// What the searcher may read of one conversation: everything, or up to the
/// seq at which they left or were removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visible {
    pub conversation: ConversationId,
    pub upto: Option<Seq>,
}

/// A query as a backend runs it; the visibility filter is part of it.
#[derive(Debug, Clone)]
pub struct Query {
    pub clauses: Vec<Clause>,
    /// Only these conversations (never empty: an empty list finds nothing
    /// without asking the index).
    pub visible: Vec<Visible>,
    pub from: Option<UserId>,
    /// `at` strictly after / before, in ms.
    pub after: Option<Millis>,
    pub before: Option<Millis>,
    pub offset: usize,
    pub limit: usize,
}

/// One message found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub at: Millis,
    pub score: f32,
    pub snippet: Snippet,
}

/// Hits ordered by relevance, then recency; `more` when a next page exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub hits: Vec<Hit>,
    pub more: bool,
}

/// A search backend. Writes come only from [`follow`], one task per index.
#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// The log position the index holds everything up to, durably.
    async fn checkpoint(&self) -> Result<Position, SearchError>;
    /// Adds (or replaces) documents; durable at the next commit.
    async fn add(&self, docs: Vec<Doc>) -> Result<(), SearchError>;
    /// Makes what was added durable and searchable, recording `upto`.
    async fn commit(&self, upto: Position) -> Result<(), SearchError>;
    async fn search(&self, query: Query) -> Result<Page, SearchError>;
    /// Deletes the documents `what` names and commits, recording `upto`;
    /// then rewrites the segments without them, so no file of the index
    /// holds their text any more (`AccountErased`, `MessagesExpired`).
    async fn forget(&self, what: Forget, upto: Position) -> Result<(), SearchError>;
    /// Lets merges finish and releases the index for writing (the
    /// projection's last step at shutdown; nothing is added afterwards).
    async fn close(&self) -> Result<(), SearchError>;
}

/// Documents an erasure takes out of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// Everything one user wrote.
    Sender(UserId),
    /// A conversation's messages sent before a time.
    Before(ConversationId, Millis),
}

impl Forget {
    /// What the event erases from the index, if anything.
    pub fn of(event: &Event) -> Option<Self> {
        match event {
            Event::AccountErased { user_id, .. } => Some(Forget::Sender(*user_id)),
            Event::MessagesExpired { conversation_id, before, .. } => Some(Forget::Before(*conversation_id, *before)),
            _ => None,
        }
    }
}

/// The text of an event that the index holds, if any: a text message, or a
/// file's name and caption. MLS content (end-to-end encrypted) never.
pub fn doc_of(recorded: &RecordedEvent) -> Option<Doc> {
    let Event::MessageSent(m) = &recorded.event else { return None };
    let text = match &m.content {
        Content::Text(t) => t.clone(),
        Content::Media(media) if media.caption.is_empty() => media.file_name.clone(),
        Content::Media(media) => format!("{} ({})", media.caption, media.file_name),
        Content::Mls { .. } | Content::MlsCommit { .. } | Content::Erased => return None,
    };
    Some(Doc { conversation: m.conversation_id, seq: Seq(recorded.version), sender: m.sender_user_id, at: m.at, text })
}

/// Where the projection is, shared with [`Search`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Whether the index has committed the log's head as it was when the
    /// projection started: until then, searches would miss old messages and
    /// are refused.
    pub caught_up: AtomicBool,
}

/// Events read from the log at a time.
const READ_BATCH: u32 = 2000;

/// Feeds `index` from the log until `shutdown`, then commits what it has.
/// Errors are logged and retried after a second: the index is a projection,
/// and the log still holds everything.
pub async fn follow(
    store: Arc<dyn Store>,
    index: Arc<dyn SearchIndex>,
    config: SearchConfig,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    loop {
        match follow_once(&store, &index, &config, &progress, &shutdown, &metrics).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "search projection failed; resuming from its checkpoint");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    // The next natterd on this data directory (a restart) opens the index for writing.
    if let Err(e) = index.close().await {
        tracing::warn!(error = %e, "the search index did not close cleanly");
    }
}

async fn follow_once(
    store: &Arc<dyn Store>,
    index: &Arc<dyn SearchIndex>,
    config: &SearchConfig,
    progress: &Progress,
    shutdown: &CancellationToken,
    metrics: &Metrics,
) -> Result<(), SearchError> {
    let interval = Duration::from_millis(config.commit_interval_ms.max(1));
    let mut committed = index.checkpoint().await?;
    let mut at = committed;
    // Subscribe before reading the head: nothing committed after it is missed.
    let mut batches = store.subscribe();
    let target = store.head().await?;
    let mut pending = 0usize;
    let mut last_commit = Instant::now();
    let started = Instant::now();
    loop {
        if !progress.caught_up.load(Ordering::Relaxed) && committed >= target {
            progress.caught_up.store(true, Ordering::Relaxed);
            tracing::info!(
                position = committed,
                took_ms = started.elapsed().as_millis() as u64,
                "search index caught up"
            );
        }
        let events = store.read_all(at, READ_BATCH).await?;
        if let Some(last) = events.last() {
            at = last.position;
            let mut docs = Vec::new();
            for e in &events {
                if let Some(what) = Forget::of(&e.event) {
                    // Whatever came before it is added first, so the erasure
                    // deletes it too.
                    if !docs.is_empty() {
                        index.add(std::mem::take(&mut docs)).await?;
                    }
                    index.forget(what, e.position).await?;
                    committed = e.position;
                    pending = 0;
                    last_commit = Instant::now();
                } else if let Some(doc) = doc_of(e) {
                    docs.push(doc);
                }
            }
            pending += docs.len();
            metrics.search_progress(docs.len() as u64, committed, at.max(target), false);
            if !docs.is_empty() {
                index.add(docs).await?;
            }
        }
        let full = events.len() == READ_BATCH as usize;
        let due = last_commit.elapsed() >= interval || pending >= config.commit_docs;
        // Catching up commits by size; once at the head, by time.
        if at > committed && (due || (!full && !progress.caught_up.load(Ordering::Relaxed))) {
            index.commit(at).await?;
            committed = at;
            pending = 0;
            last_commit = Instant::now();
            metrics.search_progress(0, committed, at.max(target), true);
            continue;
        }
        if full {
            continue;
        }
        // At the head: wait for the next batch, or for a commit to fall due.
        let wait = if at > committed { interval.saturating_sub(last_commit.elapsed()) } else { Duration::from_secs(5) };
        tokio::select! {
            () = shutdown.cancelled() => {
                if at > committed {
                    index.commit(at).await?;
                }
                return Ok(());
            }
            r = batches.recv() => {
                if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    tokio::time::sleep(wait).await;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the session layer searches with: the index and how far it is.
#[derive(Clone)]
pub struct SearchHandle {
    pub index: Arc<dyn SearchIndex>,
    pub progress: Arc<Progress>,
}

/// Opens the configured backend under `data_dir` and starts its projection
/// (`None` when search is off). An index that already holds the log's head
/// (a restart, or after `natter-admin reindex`) answers from the first request.
///
/// # Errors
/// The index cannot be opened or made, or the store cannot say its head.
pub async fn start(
    config: &SearchConfig,
    data_dir: &std::path::Path,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<Option<(SearchHandle, tokio::task::JoinHandle<()>)>, SearchError> {
    let index: Arc<dyn SearchIndex> = match config.backend {
        SearchBackend::Off => return Ok(None),
        SearchBackend::Tantivy => {
            Arc::new(tantivy::TantivyIndex::open(&data_dir.join("search"), config.writer_memory_bytes)?)
        }
    };
    let progress = Arc::new(Progress::default());
    let head = store.head().await?;
    if index.checkpoint().await? >= head {
        progress.caught_up.store(true, Ordering::Relaxed);
    }
    let task = tokio::spawn(follow(store, index.clone(), config.clone(), progress.clone(), shutdown, metrics));
    Ok(Some((SearchHandle { index, progress }, task)))
}

/// What [`reindex`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReindexReport {
    /// Log events read, and the messages among them indexed.
    pub events: u64,
    pub messages: u64,
    /// The position the new index holds everything up to.
    pub position: Position,
    pub took: Duration,
}

/// Drops the index under `data_dir` and builds it again from the whole log,
/// telling `progress` (position reached, log head) after each batch. The
/// node's natterd must be stopped (the caller holds the data directory).
///
/// # Errors
/// The store or the index fails; search is off in `config`.
pub async fn reindex(
    store: &dyn Store,
    config: &SearchConfig,
    data_dir: &std::path::Path,
    mut progress: impl FnMut(Position, Position),
) -> Result<ReindexReport, SearchError> {
    let started = Instant::now();
    let index: Arc<dyn SearchIndex> = match config.backend {
        SearchBackend::Off => return Err(SearchError::Index("search.backend is off: there is no index".into())),
        SearchBackend::Tantivy => {
            let dir = data_dir.join("search");
            tantivy::TantivyIndex::drop_in(&dir)?;
            Arc::new(tantivy::TantivyIndex::open(&dir, config.writer_memory_bytes)?)
        }
    };
    let head = store.head().await?;
    let (mut at, mut events, mut messages, mut pending) = (0, 0u64, 0u64, 0usize);
    loop {
        let batch = store.read_all(at, READ_BATCH).await?;
        let Some(last) = batch.last() else { break };
        at = last.position;
        events += batch.len() as u64;
        let docs: Vec<Doc> = batch.iter().filter_map(doc_of).collect();
        messages += docs.len() as u64;
        pending += docs.len();
        if !docs.is_empty() {
            index.add(docs).await?;
        }
        if pending >= config.commit_docs {
            index.commit(at).await?;
            pending = 0;
        }
        progress(at, head.max(at));
    }
    index.commit(at).await?;
    index.close().await?;
    Ok(ReindexReport { events, messages, position: at, took: started.elapsed() })
}
