//! The embedded backend: SQLite (bundled) in the data directory, WAL mode.
//!
//! One writer thread owns the only writing connection and group-commits: it
//! takes every append that is queued, runs each in its own savepoint (so one
//! conflict does not fail its neighbours) and commits them in one transaction
//! with `synchronous=FULL`, i.e. one fsync for the batch. Replies go out only
//! after that commit. A small pool of read-only connections serves queries on
//! tokio's blocking pool. Read models are updated in the append's transaction.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use prost::Message as _;

use super::{
    check_distinct_streams, codec, device_session, identity_record, kind_to_str, role_from_str, role_to_str,
    AppendError, AppendOutcome, CommitHook, CommitStats, CommittedBatch, CommittedEvent, ConversationSummary,
    DeviceSessionRecord, HistoryPage, IdentityRecord, Membership, MessageRecord, Position, Precondition,
    PresenceRecord, PushSettings, PushSubscriptionRecord, PushTarget, ReadableConversation, ReceiptRecord,
    RecordedEvent, SessionRecord, Store, StoreError, StoreStats, StreamAppend, StreamName, Summaries, UserRecord, Work,
    WriteJob, SELECT_IDENTITIES_OF, SELECT_IDENTITY_OWNER, SELECT_PUSH_TARGETS, SELECT_READABLE, SELECT_RECOVERY_CODE,
    SELECT_SESSIONS_OF, SELECT_SUMMARIES,
};
use super::{device_key, DeviceKeyRecord, UserListEntry, SELECT_DEVICE_KEYS, SELECT_SHARE_CONVERSATION};
use super::{MediaRecord, MediaRow, SELECT_MEDIA, SELECT_MEDIA_BYTES, SELECT_MEDIA_REFS, SELECT_MEDIA_UNSENT};
use crate::domain::{
    conversation::{ConversationKind, ConversationState, MemberState},
    ClientMsgId, Content, ConversationId, DeviceId, Email, Event, Millis, Seq, TokenHash, UserId,
};

/// Versioned migrations, applied in order at start-up. Never edit a shipped one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_groups_receipts.sql")),
    (3, include_str!("../../migrations/sqlite/0003_presence.sql")),
    (4, include_str!("../../migrations/sqlite/0004_group_changed.sql")),
    (5, include_str!("../../migrations/sqlite/0005_account_security.sql")),
    (6, include_str!("../../migrations/sqlite/0006_identities.sql")),
    (7, include_str!("../../migrations/sqlite/0007_media.sql")),
    (8, include_str!("../../migrations/sqlite/0008_media_previews.sql")),
    (9, include_str!("../../migrations/sqlite/0009_push.sql")),
    (10, include_str!("../../migrations/sqlite/0010_mls.sql")),
    (11, include_str!("../../migrations/sqlite/0011_admin.sql")),
    (12, include_str!("../../migrations/sqlite/0012_erasure.sql")),
];

/// The writer: statement journals in memory, a 64 MiB page cache, reads mapped.
const WRITER_TUNING: &str =
    "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456; PRAGMA wal_autocheckpoint=10000;";
/// Readers: a 16 MiB page cache each, reads mapped.
const READER_TUNING: &str = "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-16384; PRAGMA mmap_size=268435456;";

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

/// How the embedded store is set up.
#[derive(Clone)]
pub struct SqliteConfig {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// Read-only connections serving queries.
    pub readers: usize,
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Appends that may wait for the writer; callers wait (backpressure) beyond it.
    pub queue: usize,
    pub on_commit: Option<CommitHook>,
}

impl SqliteConfig {
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join("natter.db"), readers: 4, max_batch: 1024, queue: 8192, on_commit: None }
    }
}

struct ReaderPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    committed: broadcast::Sender<CommittedBatch>,
    /// Log followers' leases and positions (`followers`): small writes a few
    /// times a minute, on a connection of their own beside the writer (each
    /// waits for the other's lock, briefly).
    followers: Option<Arc<Mutex<Connection>>>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        // SQLITE_FULL: the transaction was rolled back, nothing was written.
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        db_err(e)
    }
}

impl From<rusqlite::Error> for AppendError {
    fn from(e: rusqlite::Error) -> Self {
        AppendError::Store(db_err(e))
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies pending migrations and
    /// starts the writer thread.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub fn open(config: &SqliteConfig) -> Result<Self, StoreError> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(&config.path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!("could not enable WAL mode (got {mode})")));
        }
        // FULL: in WAL mode, every commit fsyncs the WAL before returning.
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=OFF;")?;
        // Found with perf under S1: savepoint sub-journals went to temp files
        // (a pwrite per page), and the default 2 MB page cache re-read pages from
        // the OS on every append.
        conn.execute_batch(WRITER_TUNING)?;
        // Erasure (store::erasure): what a delete or rewrite frees is zeroed,
        // not left in free space for a file reader to find.
        conn.execute_batch("PRAGMA secure_delete=ON;")?;
        // The writer uses a few dozen statements; the default cache (16) would
        // re-prepare them over and over.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut conn)?;

        let (committed, _) = broadcast::channel(1024);
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let publish = committed.clone();
        let max_batch = config.max_batch.max(1);
        let thread = std::thread::Builder::new().name("natter-sqlite-writer".into()).spawn({
            let hook = config.on_commit.clone();
            move || writer_loop(conn, rx, publish, max_batch, hook)
        })?;
        let readers = open_readers(&config.path, config.readers)?;
        let followers = Connection::open(&config.path)?;
        followers.execute_batch("PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;")?;
        Ok(Self {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            readers,
            committed,
            followers: Some(Arc::new(Mutex::new(followers))),
        })
    }

    /// Opens an existing database for queries only (operator tools). Appends
    /// fail with `Closed`; no migration runs.
    ///
    /// # Errors
    /// When the file is missing or not a natter database.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            )));
        }
        let readers = open_readers(path, 1)?;
        let (committed, _) = broadcast::channel(1);
        Ok(Self { writer: Mutex::new(None), writer_thread: Mutex::new(None), readers, committed, followers: None })
    }

    /// Hands non-append work to the writer and waits for its commit.
    async fn write(&self, work: Work) -> Result<(), StoreError> {
        let writer = self.writer.lock().expect("writer lock").clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer.send(WriteJob { work, reply }).await.map_err(|_| StoreError::Closed)?;
        match rx.await.map_err(|_| StoreError::Closed)? {
            Ok(_) => Ok(()),
            Err(AppendError::Store(e)) => Err(e),
            Err(other) => Err(StoreError::Database(other.to_string())),
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        let permit: OwnedSemaphorePermit =
            pool.permits.clone().acquire_owned().await.map_err(|_| StoreError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let conn = pool.conns.lock().expect("reader pool lock").pop().expect("a permit guarantees a connection");
            let result = f(&conn);
            pool.conns.lock().expect("reader pool lock").push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("reader task failed: {e}")))?
    }
}

/// Writes a consistent copy of the SQLite database at `src` to `dest` (which
/// must not exist) while others read and write it: `VACUUM INTO` in one read
/// transaction, so the copy is the database as of one commit, compacted, and
/// synced to disk before this returns. Any natter SQLite file (`natter.db`,
/// `auth.db`, `mls.db`) can be copied this way.
///
/// # Errors
/// `src` cannot be opened, or the copy cannot be written.
pub fn copy_database(src: &Path, dest: &Path) -> Result<(), StoreError> {
    if !src.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} does not exist", src.display()),
        )));
    }
    let conn = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.execute_batch("PRAGMA busy_timeout=5000;")?;
    let dest_text = dest.to_str().ok_or_else(|| StoreError::Database(format!("{} is not UTF-8", dest.display())))?;
    conn.execute("VACUUM INTO ?1", [dest_text])?;
    drop(conn);
    std::fs::File::open(dest)?.sync_all()?;
    Ok(())
}

fn open_readers(path: &Path, n: usize) -> Result<Arc<ReaderPool>, StoreError> {
    let n = n.max(1);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.execute_batch("PRAGMA busy_timeout=5000;")?;
        conn.execute_batch(READER_TUNING)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conns.push(conn);
    }
    Ok(Arc::new(ReaderPool { conns: Mutex::new(conns), permits: Arc::new(Semaphore::new(n)) }))
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::Database(format!(
            "database schema version {current} is newer than this natterd knows ({known}); upgrade natterd"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version, "applied sqlite migration");
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteJob>,
    publish: broadcast::Sender<CommittedBatch>,
    max_batch: usize,
    on_commit: Option<CommitHook>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        // Group commit sized by load: take whatever else is already waiting.
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let n = jobs.len();
        if let Some((committed, commit_took)) = commit_batch(&mut conn, &mut jobs, &publish) {
            if let Some(hook) = &on_commit {
                let messages = committed.iter().filter(|c| matches!(c.event.event, Event::MessageSent(_))).count();
                hook(CommitStats { jobs: n, events: committed.len(), messages, took: started.elapsed(), commit_took });
            }
        }
    }
    tracing::debug!("sqlite writer stopped");
}

/// Commits the jobs as one transaction; returns what was published and how
/// long the COMMIT step took (`None` when the transaction failed as a whole).
fn commit_batch(
    conn: &mut Connection,
    jobs: &mut Vec<WriteJob>,
    publish: &broadcast::Sender<CommittedBatch>,
) -> Option<(CommittedBatch, std::time::Duration)> {
    let recorded_at = Millis(now_ms() as u64);
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let e = db_err(e);
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(AppendError::Store(e.for_another())));
            }
            return None;
        }
    };
    let mut results = Vec::with_capacity(jobs.len());
    let mut batch = Vec::new();
    for job in jobs.iter() {
        let done = |()| (AppendOutcome::Appended(Vec::new()), Vec::new());
        let r = match &job.work {
            Work::Append(appends) => append_in_tx(&tx, appends, recorded_at),
            Work::LastSeen(user, at) => upsert_last_seen(&tx, *user, *at).map(done).map_err(AppendError::from),
            Work::Import(events) => import_in_tx(&tx, events).map(done),
            Work::Rebuild => rebuild_in_tx(&tx).map(done),
            Work::Rewrite(rewrite, appends) => {
                rewrite_in_tx(&tx, rewrite).and_then(|()| append_in_tx(&tx, appends, recorded_at))
            }
        };
        match r {
            Ok((outcome, committed)) => {
                batch.extend(committed);
                results.push(Ok(outcome));
            }
            // Refused before writing anything: its neighbours still commit.
            Err(e @ (AppendError::WrongExpectedVersion { .. } | AppendError::PreconditionFailed(_))) => {
                results.push(Err(e));
            }
            // A storage failure may have left this job half-written: the whole
            // batch is rolled back and every caller told (they may retry).
            Err(AppendError::Store(e)) => {
                drop(tx);
                tracing::error!(error = %e, "sqlite append failed; the group commit is rolled back");
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(AppendError::Store(e.for_another())));
                }
                return None;
            }
        }
    }
    let commit_started = std::time::Instant::now();
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "sqlite group commit failed; appends in the batch are not stored");
        let e = db_err(e);
        for job in jobs.drain(..) {
            let _ = job.reply.send(Err(AppendError::Store(e.for_another())));
        }
        return None;
    }
    let commit_took = commit_started.elapsed();
    if jobs.iter().any(|j| matches!(j.work, Work::Rewrite(..))) {
        // What the rewrite replaced is zeroed in the database (secure_delete);
        // the WAL still holds it until this.
        forget_wal(conn);
    }
    for (job, result) in jobs.drain(..).zip(results) {
        let _ = job.reply.send(result);
    }
    let batch: CommittedBatch = batch.into();
    if !batch.is_empty() {
        // No subscriber is fine: the log has everything.
        let _ = publish.send(batch.clone());
    }
    Some((batch, commit_took))
}

/// One job's appends; also returns what to publish once committed.
fn append_in_tx(
    conn: &Connection,
    appends: &[StreamAppend],
    recorded_at: Millis,
) -> Result<(AppendOutcome, Vec<CommittedEvent>), AppendError> {
    let mut existing = Vec::new();
    {
        let mut by_id = conn.prepare_cached(&format!("{SELECT_EVENT} WHERE event_id = ?1"))?;
        for e in appends.iter().flat_map(|a| a.events.iter()) {
            if let Some(rec) = by_id.query_row([e.id.as_bytes().as_slice()], row_to_event).optional()? {
                existing.push(rec?);
            }
        }
    }
    if !existing.is_empty() {
        return Ok((AppendOutcome::AlreadyStored(existing), Vec::new()));
    }
    // Every check runs before the first write, so a refused append has written
    // nothing and needs no savepoint to undo (savepoints cost a statement
    // journal per job: found with perf).
    let mut currents = Vec::with_capacity(appends.len());
    check_distinct_streams(appends)?;
    for append in appends {
        if let Some(pre) = append.precondition {
            check_precondition(conn, pre)?;
        }
        let current: u64 = conn
            .prepare_cached("SELECT version FROM streams WHERE stream = ?1")?
            .query_row([append.stream.as_str()], |r| r.get::<_, i64>(0))
            .optional()?
            .map_or(0, |v| v as u64);
        append.check_version(current)?;
        currents.push(current);
    }
    let mut recorded = Vec::new();
    let mut committed = Vec::new();
    for (append, current) in appends.iter().zip(currents) {
        let stream = append.stream.as_str();
        let mut insert = conn.prepare_cached(
            "INSERT INTO events (stream, version, event_id, event_type, schema_version, payload, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut version = current;
        for new in &append.events {
            version += 1;
            let (ty, schema, payload) = codec::encode(&new.event);
            insert.execute(params![
                stream,
                version as i64,
                new.id.as_bytes().as_slice(),
                ty,
                schema,
                payload,
                recorded_at.0 as i64
            ])?;
            let rec = RecordedEvent {
                position: conn.last_insert_rowid() as u64,
                stream: append.stream.clone(),
                version,
                id: new.id,
                recorded_at,
                event: new.event.clone(),
            };
            let audience = project(conn, &rec)?;
            committed.push(CommittedEvent { event: rec.clone(), audience });
            recorded.push(rec);
        }
        conn.prepare_cached(
            "INSERT INTO streams (stream, version) VALUES (?1, ?2)
             ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
        )?
        .execute(params![stream, version as i64])?;
    }
    Ok((AppendOutcome::Appended(recorded), committed))
}

/// Rewrites events in place and renames streams (the log keeps positions and
/// versions).
fn rewrite_in_tx(conn: &Connection, rewrite: &super::erasure::LogRewrite) -> Result<(), AppendError> {
    for (from, to) in &rewrite.renames {
        conn.prepare_cached("UPDATE events SET stream = ?2 WHERE stream = ?1")?
            .execute(params![from.as_str(), to.as_str()])?;
        conn.prepare_cached("UPDATE streams SET stream = ?2 WHERE stream = ?1")?
            .execute(params![from.as_str(), to.as_str()])?;
    }
    let mut update = conn
        .prepare_cached("UPDATE events SET event_type = ?2, schema_version = ?3, payload = ?4 WHERE position = ?1")?;
    for (position, event) in &rewrite.events {
        let (ty, schema, payload) = codec::encode(event);
        if update.execute(params![*position as i64, ty, schema, payload])? != 1 {
            return Err(AppendError::Store(StoreError::Database(format!(
                "no event at position {position} to rewrite"
            ))));
        }
        if super::erasure::erases_message(event) {
            conn.prepare_cached(super::erasure::ERASE_MESSAGE_ROW)?.execute([*position as i64])?;
        }
    }
    Ok(())
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` on a side database (`auth.db`,
/// `mls.db`) after it forgot an erased account.
///
/// # Errors
/// The checkpoint fails.
pub(crate) fn truncate_wal(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)).map(|_| ())
}

/// Copies the WAL into the database and truncates it to nothing, so what a
/// rewrite replaced is in no file. Waits (busy timeout) for readers of older
/// snapshots; retried a few times, then logged.
fn forget_wal(conn: &Connection) {
    for attempt in 0..10 {
        match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50 * (attempt + 1))),
            Err(e) => {
                tracing::error!(error = %e, "the WAL checkpoint after an erasure failed");
                return;
            }
        }
    }
    tracing::error!("the WAL checkpoint after an erasure stayed busy: the WAL may hold erased data until the next one");
}

/// Writes another log's events as they are, then projects them.
fn import_in_tx(conn: &Connection, events: &[RecordedEvent]) -> Result<(), AppendError> {
    let head: i64 = conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get(0))?;
    let mut last = head as u64;
    for rec in events {
        if rec.position <= last {
            return Err(AppendError::Store(StoreError::Database(format!(
                "imported position {} does not follow this log's {last}",
                rec.position
            ))));
        }
        last = rec.position;
        let (ty, schema, payload) = codec::encode(&rec.event);
        conn.prepare_cached(
            "INSERT INTO events (position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            rec.position as i64,
            rec.stream.as_str(),
            rec.version as i64,
            rec.id.as_bytes().as_slice(),
            ty,
            schema,
            payload,
            rec.recorded_at.0 as i64
        ])?;
        conn.prepare_cached(
            "INSERT INTO streams (stream, version) VALUES (?1, ?2)
             ON CONFLICT (stream) DO UPDATE SET version = MAX(version, excluded.version)",
        )?
        .execute(params![rec.stream.as_str(), rec.version as i64])?;
        project(conn, rec)?;
    }
    Ok(())
}

fn rebuild_in_tx(conn: &Connection) -> Result<(), AppendError> {
    for table in super::READ_MODELS {
        conn.execute(&format!("DELETE FROM {table}"), [])?;
    }
    let mut after = 0u64;
    loop {
        let batch = {
            let mut stmt =
                conn.prepare_cached(&format!("{SELECT_EVENT} WHERE position > ?1 ORDER BY position LIMIT 1000"))?;
            collect_events(&mut stmt, params![after as i64])?
        };
        let Some(last) = batch.last() else { break };
        after = last.position;
        for rec in &batch {
            project(conn, rec)?;
        }
    }
    Ok(())
}

fn upsert_last_seen(conn: &Connection, user: UserId, at: Millis) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        // Not for an erased account (its last connection may close after).
        "INSERT INTO last_seen (user_id, last_seen_ms)
         SELECT ?1, ?2 WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = ?1 AND erased_at_ms IS NOT NULL)
         ON CONFLICT (user_id) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
    )?
    .execute(params![user.to_string(), at.0 as i64])?;
    Ok(())
}

fn check_precondition(conn: &Connection, pre: Precondition) -> Result<(), AppendError> {
    let holds = match pre {
        Precondition::ActiveMember { conversation, user } => conn
            .prepare_cached("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2 AND left_seq IS NULL")?
            .query_row([conversation.to_string(), user.to_string()], |_| Ok(()))
            .optional()?
            .is_some(),
        Precondition::GroupUnchanged { conversation, since } => conn
            .prepare_cached("SELECT changed_seq FROM conversations WHERE conversation_id = ?1")?
            .query_row([conversation.to_string()], |r| r.get::<_, i64>(0))
            .optional()?
            .is_some_and(|changed| changed as u64 == since.0),
    };
    if holds {
        Ok(())
    } else {
        Err(AppendError::PreconditionFailed(pre))
    }
}

/// A media row (the columns of `media_columns!`).
fn sqlite_media_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MediaRow> {
    Ok(MediaRow {
        id: r.get(0)?,
        uploader: r.get(1)?,
        conversation: r.get(2)?,
        sha256: r.get(3)?,
        size: r.get(4)?,
        mime_type: r.get(5)?,
        file_name: r.get(6)?,
        width: r.get(7)?,
        height: r.get(8)?,
        uploaded_at: r.get(9)?,
        first_seq: r.get(10)?,
        preview: r.get(11)?,
        preview_of: r.get(12)?,
        duration_ms: r.get(13)?,
    })
}

/// A user's recovery codes become exactly `codes` (none: TOTP is off).
fn replace_recovery_codes(conn: &Connection, user: &str, codes: &[[u8; 32]]) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("DELETE FROM recovery_codes WHERE user_id = ?1")?.execute([user])?;
    let mut insert = conn.prepare_cached("INSERT INTO recovery_codes (user_id, code_hash) VALUES (?1, ?2)")?;
    for code in codes {
        insert.execute(params![user, code.as_slice()])?;
    }
    Ok(())
}

/// Updates the read models for one recorded event and returns its audience:
/// the users whose feed it goes into. Runs inside the append's transaction, and
/// again for every event when the read models are rebuilt.
fn project(conn: &Connection, rec: &RecordedEvent) -> Result<Vec<UserId>, rusqlite::Error> {
    let version = rec.version as i64;
    let mut extra_audience = None;
    match &rec.event {
        Event::UserRegistered(u) => {
            conn.prepare_cached(
                "INSERT INTO users (user_id, email, display_name, password_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![u.user_id.to_string(), u.email.as_str(), u.display_name, u.password_hash, u.at.0 as i64])?;
            return Ok(Vec::new());
        }
        Event::AccountOpened(a) => {
            conn.prepare_cached(
                "INSERT INTO users (user_id, email, display_name, created_at_ms, email_verified_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                a.user_id.to_string(),
                a.email.as_ref().map(Email::as_str),
                a.display_name,
                a.at.0 as i64,
                a.email_verified.then_some(a.at.0 as i64)
            ])?;
            return Ok(Vec::new());
        }
        Event::MediaUploaded(m) => {
            conn.prepare_cached(
                "INSERT INTO media (media_id, uploader_user_id, conversation_id, sha256, size, mime_type, file_name,
                                    width, height, uploaded_at_ms, preview_media_id, preview_of, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?
            .execute(params![
                m.media_id.to_string(),
                m.uploader.to_string(),
                m.conversation_id.to_string(),
                m.sha256.as_slice(),
                m.size as i64,
                m.mime_type,
                m.file_name,
                m.width,
                m.height,
                m.at.0 as i64,
                m.preview.map(|p| p.to_string()),
                m.preview_of.map(|p| p.to_string()),
                m.duration_ms as i64,
            ])?;
            return Ok(Vec::new());
        }
        Event::MediaDiscarded { media_id, .. } => {
            conn.prepare_cached("DELETE FROM media WHERE media_id = ?1")?.execute([media_id.to_string()])?;
            return Ok(Vec::new());
        }
        Event::BlobCollected { .. } | Event::BlobErased { .. } => return Ok(Vec::new()),
        Event::IdentityClaimed { .. } | Event::IdentityReleased { .. } | Event::PhoneReleased { .. } => {
            return Ok(Vec::new())
        }
        Event::PhoneRemoved { user_id, phone, .. } => {
            conn.prepare_cached("UPDATE users SET phone = NULL WHERE user_id = ?1 AND phone = ?2")?
                .execute(params![user_id.to_string(), phone.as_str()])?;
            return Ok(Vec::new());
        }
        Event::IdentityLinked { user_id, identity, at } => {
            conn.prepare_cached(
                "INSERT INTO identities (provider, subject, user_id, email, linked_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                identity.provider.as_str(),
                identity.subject,
                user_id.to_string(),
                identity.email.as_ref().map(Email::as_str),
                at.0 as i64
            ])?;
            return Ok(Vec::new());
        }
        Event::IdentityUnlinked { user_id, provider, subject, .. } => {
            conn.prepare_cached("DELETE FROM identities WHERE provider = ?1 AND subject = ?2 AND user_id = ?3")?
                .execute(params![provider.as_str(), subject, user_id.to_string()])?;
            return Ok(Vec::new());
        }
        Event::EmailClaimed { .. } => return Ok(Vec::new()),
        Event::SessionStarted(s) => {
            conn.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, device_id, device_name, created_at_ms, method)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.token_hash.0.as_slice(),
                s.user_id.to_string(),
                s.device_id.to_string(),
                s.device_name,
                s.at.0 as i64,
                s.method.as_str()
            ])?;
            return Ok(Vec::new());
        }
        Event::PasswordChanged { user_id, password_hash, .. } => {
            conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), password_hash])?;
            return Ok(Vec::new());
        }
        Event::PhoneClaimed { .. } => return Ok(Vec::new()),
        Event::PhoneAdded { user_id, phone, .. } => {
            conn.prepare_cached("UPDATE users SET phone = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), phone.as_str()])?;
            return Ok(Vec::new());
        }
        Event::EmailVerified { user_id, at, .. } => {
            conn.prepare_cached("UPDATE users SET email_verified_at_ms = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), at.0 as i64])?;
            return Ok(Vec::new());
        }
        Event::TotpEnabled { user_id, sealed_secret, recovery_codes, at } => {
            let user = user_id.to_string();
            conn.prepare_cached(
                "UPDATE users SET totp_sealed_secret = ?2, totp_enabled_at_ms = ?3 WHERE user_id = ?1",
            )?
            .execute(params![user, sealed_secret, at.0 as i64])?;
            replace_recovery_codes(conn, &user, recovery_codes)?;
            return Ok(Vec::new());
        }
        Event::RecoveryCodesIssued { user_id, recovery_codes, .. } => {
            replace_recovery_codes(conn, &user_id.to_string(), recovery_codes)?;
            return Ok(Vec::new());
        }
        Event::TotpDisabled { user_id, .. } => {
            let user = user_id.to_string();
            conn.prepare_cached(
                "UPDATE users SET totp_sealed_secret = NULL, totp_enabled_at_ms = NULL WHERE user_id = ?1",
            )?
            .execute(params![user])?;
            replace_recovery_codes(conn, &user, &[])?;
            return Ok(Vec::new());
        }
        Event::RecoveryCodeUsed { user_id, code_hash, at } => {
            conn.prepare_cached(
                "UPDATE recovery_codes SET used_at_ms = ?3 WHERE user_id = ?1 AND code_hash = ?2 AND used_at_ms IS NULL",
            )?
            .execute(params![user_id.to_string(), code_hash.as_slice(), at.0 as i64])?;
            return Ok(Vec::new());
        }
        Event::SessionRevoked { token_hash, at, .. } => {
            conn.prepare_cached(
                "UPDATE sessions SET revoked_at_ms = ?2 WHERE token_hash = ?1 AND revoked_at_ms IS NULL",
            )?
            .execute(params![token_hash.0.as_slice(), at.0 as i64])?;
            // Signing out removes the device's push subscription.
            conn.prepare_cached(
                "DELETE FROM push_subscriptions WHERE device_id IN (SELECT device_id FROM sessions WHERE token_hash = ?1)",
            )?
            .execute(params![token_hash.0.as_slice()])?;
            // And its MLS signature key.
            conn.prepare_cached(
                "DELETE FROM device_keys WHERE device_id IN (SELECT device_id FROM sessions WHERE token_hash = ?1)",
            )?
            .execute(params![token_hash.0.as_slice()])?;
            return Ok(Vec::new());
        }
        Event::ConversationEncrypted { conversation_id, .. } => {
            let conv = conversation_id.to_string();
            conn.prepare_cached("UPDATE conversations SET e2ee = 1 WHERE conversation_id = ?1")?.execute([&conv])?;
            touch_conversation(conn, &conv, rec)?;
            return Ok(Vec::new());
        }
        // Only the `mls:` stream's version counts (one commit per epoch).
        Event::MlsEpochClosed { .. } => return Ok(Vec::new()),
        Event::DeviceKeyRegistered { user_id, device_id, signature_key, at } => {
            conn.prepare_cached(
                "INSERT INTO device_keys (device_id, user_id, signature_key, registered_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id,
                     signature_key = excluded.signature_key, registered_at_ms = excluded.registered_at_ms",
            )?
            .execute(params![device_id.to_string(), user_id.to_string(), signature_key, at.0 as i64])?;
            return Ok(Vec::new());
        }
        Event::PushSubscribed(sub) => {
            conn.prepare_cached(
                "INSERT INTO push_subscriptions (device_id, user_id, endpoint, p256dh, auth, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id, endpoint = excluded.endpoint,
                     p256dh = excluded.p256dh, auth = excluded.auth, created_at_ms = excluded.created_at_ms",
            )?
            .execute(params![
                sub.device_id.to_string(),
                sub.user_id.to_string(),
                sub.endpoint,
                sub.p256dh,
                sub.auth,
                sub.at.0 as i64
            ])?;
            return Ok(Vec::new());
        }
        Event::PushUnsubscribed { device_id, endpoint, .. } => {
            conn.prepare_cached("DELETE FROM push_subscriptions WHERE device_id = ?1 AND endpoint = ?2")?
                .execute(params![device_id.to_string(), endpoint])?;
            return Ok(Vec::new());
        }
        Event::PushPreviewsSet { user_id, show_text, .. } => {
            conn.prepare_cached("UPDATE users SET push_show_text = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), *show_text])?;
            return Ok(Vec::new());
        }
        Event::AdminGranted { user_id, .. } | Event::AdminRevoked { user_id, .. } => {
            let admin = matches!(rec.event, Event::AdminGranted { .. });
            conn.prepare_cached("UPDATE users SET admin = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), admin])?;
            return Ok(Vec::new());
        }
        Event::AccountDisabled { user_id, at, .. } => {
            conn.prepare_cached("UPDATE users SET disabled_at_ms = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), at.0 as i64])?;
            return Ok(Vec::new());
        }
        Event::AccountEnabled { user_id, .. } => {
            conn.prepare_cached("UPDATE users SET disabled_at_ms = NULL WHERE user_id = ?1")?
                .execute(params![user_id.to_string()])?;
            return Ok(Vec::new());
        }
        // Read from its stream: no read model.
        Event::AdminActed(_) | Event::Redacted { .. } => return Ok(Vec::new()),
        Event::AccountErased { user_id, registered_at, at, .. } => {
            return erase_account(conn, *user_id, *registered_at, *at, rec.position)
        }
        Event::ConversationMuted { user_id, conversation_id, until, .. } => {
            conn.prepare_cached(
                "INSERT INTO push_mutes (user_id, conversation_id, until_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET until_ms = excluded.until_ms",
            )?
            .execute(params![
                user_id.to_string(),
                conversation_id.to_string(),
                until.map(|u| u.0 as i64)
            ])?;
            return Ok(Vec::new());
        }
        Event::ConversationUnmuted { user_id, conversation_id, .. } => {
            conn.prepare_cached("DELETE FROM push_mutes WHERE user_id = ?1 AND conversation_id = ?2")?
                .execute(params![user_id.to_string(), conversation_id.to_string()])?;
            return Ok(Vec::new());
        }
        Event::DirectConversationStarted { conversation_id, members, at } => {
            let all: Vec<_> = members.iter().map(|m| (*m, crate::domain::Role::Member)).collect();
            insert_conversation(conn, *conversation_id, ConversationKind::Direct, None, &all, *at, rec)?;
        }
        Event::GroupCreated { conversation_id, name, members, at, .. } => {
            insert_conversation(conn, *conversation_id, ConversationKind::Group, Some(name), members, *at, rec)?;
        }
        Event::MembersAdded { conversation_id, members, .. } => {
            let conv = conversation_id.to_string();
            let mut add = conn.prepare_cached(
                "INSERT INTO members (conversation_id, user_id, ordinal, role, left_seq)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(ordinal), -1) + 1 FROM members WHERE conversation_id = ?1), ?3, NULL)
                 ON CONFLICT (conversation_id, user_id) DO UPDATE
                 SET role = excluded.role, left_seq = NULL, ordinal = excluded.ordinal",
            )?;
            for (user, role) in members {
                add.execute(params![conv, user.to_string(), role_to_str(*role)])?;
            }
            touch_conversation(conn, &conv, rec)?;
        }
        Event::MemberRemoved { conversation_id, user, .. } | Event::MemberLeft { conversation_id, user, .. } => {
            let conv = conversation_id.to_string();
            conn.prepare_cached("UPDATE members SET left_seq = ?3 WHERE conversation_id = ?1 AND user_id = ?2")?
                .execute(params![conv, user.to_string(), version])?;
            touch_conversation(conn, &conv, rec)?;
            // The person who left (or was removed) learns of it too.
            extra_audience = Some(*user);
        }
        Event::RoleChanged { conversation_id, user, role, .. } => {
            let conv = conversation_id.to_string();
            conn.prepare_cached("UPDATE members SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2")?
                .execute(params![conv, user.to_string(), role_to_str(*role)])?;
            touch_conversation(conn, &conv, rec)?;
        }
        Event::GroupRenamed { conversation_id, name, .. } => {
            let conv = conversation_id.to_string();
            conn.prepare_cached("UPDATE conversations SET name = ?2 WHERE conversation_id = ?1")?
                .execute(params![conv, name])?;
            touch_conversation(conn, &conv, rec)?;
        }
        Event::GroupDeleted { conversation_id, .. } => {
            let conv = conversation_id.to_string();
            touch_conversation(conn, &conv, rec)?;
            // Its members learn of it, then are members no more.
            let audience = add_to_feeds(conn, &conv, rec.position, None)?;
            conn.prepare_cached("UPDATE members SET left_seq = ?2 WHERE conversation_id = ?1 AND left_seq IS NULL")?
                .execute(params![conv, version])?;
            return Ok(audience);
        }
        Event::MessageSent(m) => {
            let conv = m.conversation_id.to_string();
            let (kind, text, content_pb) = match &m.content {
                Content::Text(text) => ("text", text.as_str(), None),
                Content::Mls { media, .. } => {
                    if let Some(media) = media {
                        // The encrypted file is sent: bound, readable as the message.
                        conn.prepare_cached(
                            "UPDATE media SET first_seq = ?2 WHERE media_id = ?1 AND first_seq IS NULL",
                        )?
                        .execute(params![media.to_string(), version])?;
                    }
                    ("mls", "", Some(codec::encode_content(&m.content).encode_to_vec()))
                }
                Content::MlsCommit { .. } => ("mls", "", Some(codec::encode_content(&m.content).encode_to_vec())),
                Content::Erased => ("erased", "", None),
                Content::Media(media) => {
                    conn.prepare_cached("UPDATE media SET first_seq = ?2 WHERE media_id = ?1 AND first_seq IS NULL")?
                        .execute(params![media.media_id.to_string(), version])?;
                    ("media", media.caption.as_str(), Some(codec::encode_content(&m.content).encode_to_vec()))
                }
            };
            conn.prepare_cached(
                "INSERT INTO messages (conversation_id, seq, position, sender_user_id, sender_device_id, client_msg_id,
                                       content_kind, text, sent_at_ms, content_pb)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?9, ?7, ?8, ?10)",
            )?
            .execute(params![
                conv,
                version,
                rec.position as i64,
                m.sender_user_id.to_string(),
                m.sender_device_id.to_string(),
                m.client_msg_id.as_str(),
                text,
                m.at.0 as i64,
                kind,
                content_pb
            ])?;
            touch_conversation(conn, &conv, rec)?;
        }
        Event::RetentionSet { conversation_id, max_age_secs, .. } => {
            conn.prepare_cached("UPDATE conversations SET retention_secs = ?2 WHERE conversation_id = ?1")?
                .execute(params![conversation_id.to_string(), *max_age_secs as i64])?;
        }
        Event::MessagesExpired { conversation_id, .. } => {
            for sql in super::erasure::EXPIRED_MEDIA {
                conn.prepare_cached(sql)?.execute([conversation_id.to_string()])?;
            }
        }
        Event::DeliveredUpTo { conversation_id, user, device, seq, .. } => {
            let (conv, user_s) = (conversation_id.to_string(), user.to_string());
            conn.prepare_cached(
                "INSERT INTO device_receipts (conversation_id, device_id, user_id, delivered_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (conversation_id, device_id) DO UPDATE
                 SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
            )?
            .execute(params![conv, device.to_string(), user_s, seq.0 as i64])?;
            conn.prepare_cached(
                "INSERT INTO receipts (conversation_id, user_id, delivered_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (conversation_id, user_id) DO UPDATE
                 SET delivered_seq = MAX(delivered_seq, excluded.delivered_seq)",
            )?
            .execute(params![conv, user_s, seq.0 as i64])?;
        }
        Event::PrivacyChanged { user_id, hide_last_seen, .. } => {
            conn.prepare_cached("UPDATE users SET hide_last_seen = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.to_string(), *hide_last_seen])?;
            return Ok(Vec::new());
        }
        Event::ReadUpTo { conversation_id, user, seq, .. } => {
            conn.prepare_cached(
                "INSERT INTO receipts (conversation_id, user_id, read_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (conversation_id, user_id) DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
            )?
            .execute(params![conversation_id.to_string(), user.to_string(), seq.0 as i64])?;
        }
    }
    let conv = rec.event.conversation_id().expect("every other event belongs to a conversation").to_string();
    add_to_feeds(conn, &conv, rec.position, extra_audience)
}

/// `AccountErased`: the account's row becomes a tombstone, and what else the
/// read models hold of it goes (see `store::erasure`). The people who shared a
/// conversation with it are told (their clients show the tombstone).
fn erase_account(
    conn: &Connection,
    user: UserId,
    registered_at: Millis,
    at: Millis,
    position: Position,
) -> Result<Vec<UserId>, rusqlite::Error> {
    let id = user.to_string();
    conn.prepare_cached(
        "INSERT INTO users (user_id, display_name, created_at_ms, hide_last_seen, push_show_text, disabled_at_ms,
                            erased_at_ms)
         VALUES (?1, '', ?2, 1, 0, ?3, ?3)
         ON CONFLICT (user_id) DO UPDATE SET email = NULL, display_name = '', password_hash = NULL, phone = NULL,
             email_verified_at_ms = NULL, totp_sealed_secret = NULL, totp_enabled_at_ms = NULL, admin = 0,
             hide_last_seen = 1, push_show_text = 0, disabled_at_ms = excluded.disabled_at_ms,
             erased_at_ms = excluded.erased_at_ms",
    )?
    .execute(params![id, registered_at.0 as i64, at.0 as i64])?;
    for sql in super::erasure::ERASED_ROWS {
        conn.prepare_cached(sql)?.execute([&id])?;
    }
    let mut audience = Vec::new();
    {
        let mut contacts = conn.prepare_cached(super::erasure::SELECT_CONTACTS)?;
        let rows = contacts.query_map([&id], |r| r.get::<_, String>(0))?;
        for contact in rows {
            let contact = contact?;
            let uuid = Uuid::try_parse(&contact).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            audience.push(UserId(uuid));
        }
    }
    let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO feed (user_id, position) VALUES (?1, ?2)")?;
    for u in &audience {
        insert.execute(params![u.to_string(), position as i64])?;
    }
    Ok(audience)
}

fn insert_conversation(
    conn: &Connection,
    id: ConversationId,
    kind: ConversationKind,
    name: Option<&str>,
    members: &[(UserId, crate::domain::Role)],
    at: Millis,
    rec: &RecordedEvent,
) -> Result<(), rusqlite::Error> {
    let conv = id.to_string();
    conn.prepare_cached(
        "INSERT INTO conversations
             (conversation_id, kind, name, created_at_ms, last_seq, last_position, last_activity_ms, changed_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4, ?5)",
    )?
    .execute(params![conv, kind_to_str(kind), name, at.0 as i64, rec.version as i64, rec.position as i64])?;
    let mut add =
        conn.prepare_cached("INSERT INTO members (conversation_id, user_id, ordinal, role) VALUES (?1, ?2, ?3, ?4)")?;
    for (i, (user, role)) in members.iter().enumerate() {
        add.execute(params![conv, user.to_string(), i as i64, role_to_str(*role)])?;
    }
    Ok(())
}

/// Records a conversation-stream event as the conversation's latest activity
/// (and, for a change of shape, as its latest change).
fn touch_conversation(conn: &Connection, conv: &str, rec: &RecordedEvent) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE conversations SET last_seq = ?2, last_position = ?3, last_activity_ms = MAX(last_activity_ms, ?4),
                changed_seq = CASE WHEN ?5 THEN ?2 ELSE changed_seq END
         WHERE conversation_id = ?1",
    )?
    .execute(params![
        conv,
        rec.version as i64,
        rec.position as i64,
        rec.recorded_at.0 as i64,
        rec.event.changes_group()
    ])?;
    Ok(())
}

/// Puts the event into the feed of every current member (and `extra`), and
/// returns who that was.
fn add_to_feeds(
    conn: &Connection,
    conv: &str,
    position: Position,
    extra: Option<UserId>,
) -> Result<Vec<UserId>, rusqlite::Error> {
    let mut audience = Vec::new();
    {
        let mut members =
            conn.prepare_cached("SELECT user_id FROM members WHERE conversation_id = ?1 AND left_seq IS NULL")?;
        let rows = members.query_map([conv], |r| r.get::<_, String>(0))?;
        for id in rows {
            let id = id?;
            let uuid = Uuid::try_parse(&id).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            audience.push(UserId(uuid));
        }
    }
    if let Some(u) = extra.filter(|u| !audience.contains(u)) {
        audience.push(u);
    }
    let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO feed (user_id, position) VALUES (?1, ?2)")?;
    for u in &audience {
        insert.execute(params![u.to_string(), position as i64])?;
    }
    Ok(audience)
}

const SELECT_EVENT: &str =
    "SELECT position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms FROM events";

/// Maps a row of `SELECT_EVENT`; the inner result is a decoding failure.
fn row_to_event(row: &Row<'_>) -> rusqlite::Result<Result<RecordedEvent, StoreError>> {
    let position = row.get::<_, i64>(0)? as u64;
    let stream: String = row.get(1)?;
    let version = row.get::<_, i64>(2)? as u64;
    let id_bytes: Vec<u8> = row.get(3)?;
    let ty: String = row.get(4)?;
    let schema = row.get::<_, i64>(5)? as u32;
    let payload: Vec<u8> = row.get(6)?;
    let recorded_at = Millis(row.get::<_, i64>(7)? as u64);
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let id = match Uuid::from_slice(&id_bytes) {
        Ok(id) => id,
        Err(e) => return Ok(Err(corrupt(e.to_string()))),
    };
    Ok(codec::decode(&ty, schema, &payload).map_err(corrupt).map(|event| RecordedEvent {
        position,
        stream: StreamName::from_stored(stream),
        version,
        id,
        recorded_at,
        event,
    }))
}

fn collect_events(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = stmt.query_map(params, row_to_event)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(s).map_err(|e| StoreError::Database(format!("bad id {s:?} in read model: {e}")))
}

fn load_members(conn: &Connection, conv: &str) -> Result<Vec<MemberState>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, role FROM members WHERE conversation_id = ?1 AND left_seq IS NULL ORDER BY ordinal",
    )?;
    let rows = stmt.query_map([conv], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (id, role) = row?;
        let role = role_from_str(&role).ok_or_else(|| StoreError::Database(format!("unknown role {role:?}")))?;
        out.push(MemberState { user: UserId(parse_uuid(&id)?), role });
    }
    Ok(out)
}

fn load_conversation(conn: &Connection, conv: &str) -> Result<Option<ConversationState>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT kind, name, created_at_ms, last_seq, changed_seq, e2ee FROM conversations WHERE conversation_id = ?1",
        )?
        .query_row([conv], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })
        .optional()?;
    let Some((kind, name, created, last_seq, changed, e2ee)) = row else {
        return Ok(None);
    };
    let kind = match kind.as_str() {
        "direct" => ConversationKind::Direct,
        "group" => ConversationKind::Group,
        other => return Err(StoreError::Database(format!("unknown conversation kind {other:?}"))),
    };
    Ok(Some(ConversationState {
        id: ConversationId(parse_uuid(conv)?),
        kind,
        name,
        members: load_members(conn, conv)?,
        created_at: Millis(created as u64),
        version: Seq(last_seq as u64),
        changed: Seq(changed as u64),
        e2ee,
    }))
}

fn load_membership(conn: &Connection, conv: &str, user: &str) -> Result<Option<Membership>, StoreError> {
    let row = conn
        .prepare_cached("SELECT role, left_seq FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
        .query_row([conv, user], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))
        .optional()?;
    Ok(match row {
        None => None,
        Some((_, Some(left))) => Some(Membership::Former { left_at: Seq(left as u64) }),
        Some((role, None)) => Some(Membership::Active(
            role_from_str(&role).ok_or_else(|| StoreError::Database(format!("unknown role {role:?}")))?,
        )),
    })
}

fn load_summaries(c: &Connection, user: UserId, which: Summaries) -> Result<Vec<ConversationSummary>, StoreError> {
    let me = user.to_string();
    type Row = (String, i64, i64, Option<i64>, i64);
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    };
    let rows: Vec<Row> = match which {
        Summaries::Page { before, limit } => c
            .prepare_cached(&format!(
                "{SELECT_SUMMARIES} WHERE m.user_id = ?1 AND c.last_position < ?2 ORDER BY c.last_position DESC LIMIT ?3"
            ))?
            .query_map(params![me, before.map_or(i64::MAX, |b| b as i64), limit], map)?
            .collect::<Result<_, _>>()?,
        Summaries::One(id) => c
            .prepare_cached(&format!("{SELECT_SUMMARIES} WHERE m.user_id = ?1 AND m.conversation_id = ?2"))?
            .query_map(params![me, id.to_string()], map)?
            .collect::<Result<_, _>>()?,
    };
    let mut last = c.prepare_cached(&format!(
        "{SELECT_MESSAGE} WHERE conversation_id = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1"
    ))?;
    let mut unread = c.prepare_cached(
        "SELECT COUNT(*) FROM messages WHERE conversation_id = ?1 AND seq > ?2 AND seq <= ?3 AND sender_user_id != ?4",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (conv, activity_ms, position, left, read) in rows {
        let state = load_conversation(c, &conv)?
            .ok_or_else(|| StoreError::Database(format!("member row for missing conversation {conv}")))?;
        let visible = left.unwrap_or(i64::MAX);
        let last_message = collect_messages(&mut last, params![conv, visible])?.pop();
        let unread: i64 = unread.query_row(params![conv, read, visible, me], |r| r.get(0))?;
        out.push(ConversationSummary {
            state,
            last_message,
            last_activity: Millis(activity_ms as u64),
            activity: position as u64,
            unread: unread as u64,
            read_up_to: Seq(read as u64),
            left_at: left.map(|l| Seq(l as u64)),
        });
    }
    Ok(out)
}

const SELECT_MESSAGE: &str = "SELECT conversation_id, seq, position, sender_user_id, sender_device_id, client_msg_id,
                                     content_kind, text, sent_at_ms, content_pb FROM messages";

fn row_to_message(row: &Row<'_>) -> rusqlite::Result<Result<MessageRecord, StoreError>> {
    let conv: String = row.get(0)?;
    let seq = row.get::<_, i64>(1)? as u64;
    let position = row.get::<_, i64>(2)? as u64;
    let sender: String = row.get(3)?;
    let device: String = row.get(4)?;
    let client_msg_id: String = row.get(5)?;
    let kind: String = row.get(6)?;
    let text: Option<String> = row.get(7)?;
    let at = row.get::<_, i64>(8)? as u64;
    let content_pb: Option<Vec<u8>> = row.get(9)?;
    Ok((|| {
        let content = super::stored_content(&kind, text, content_pb)?;
        Ok(MessageRecord {
            conversation_id: ConversationId(parse_uuid(&conv)?),
            seq: Seq(seq),
            position,
            sender_user_id: UserId(parse_uuid(&sender)?),
            sender_device_id: DeviceId(parse_uuid(&device)?),
            client_msg_id: ClientMsgId::parse(&client_msg_id)
                .map_err(|e| StoreError::Database(format!("stored client_msg_id: {e}")))?,
            content,
            at: Millis(at),
        })
    })())
}

fn collect_messages(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<MessageRecord>, StoreError> {
    let rows = stmt.query_map(params, row_to_message)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

/// A `users` row as [`SELECT_USER`] reads it, before its ids are parsed.
struct UserRow {
    id: String,
    email: Option<String>,
    name: String,
    hash: Option<String>,
    created: i64,
    verified: bool,
    totp: Option<Vec<u8>>,
    phone: Option<String>,
    admin: bool,
    disabled: bool,
    erased: bool,
}

fn row_to_user(row: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: row.get(0)?,
        email: row.get(1)?,
        name: row.get(2)?,
        hash: row.get(3)?,
        created: row.get(4)?,
        verified: row.get(5)?,
        totp: row.get(6)?,
        phone: row.get(7)?,
        admin: row.get(8)?,
        disabled: row.get(9)?,
        erased: row.get(10)?,
    })
}

fn user_record(row: UserRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        user_id: UserId(parse_uuid(&row.id)?),
        email: row.email.map(Email::from_normalized),
        display_name: row.name,
        password_hash: row.hash,
        created_at: Millis(row.created as u64),
        email_verified: row.verified,
        totp_sealed_secret: row.totp,
        phone: row.phone.map(crate::domain::Phone::from_normalized),
        admin: row.admin,
        disabled: row.disabled,
        erased: row.erased,
    })
}

const SELECT_USER: &str = "SELECT user_id, email, display_name, password_hash, created_at_ms,
                                  email_verified_at_ms IS NOT NULL, totp_sealed_secret, phone, admin,
                                  disabled_at_ms IS NOT NULL, erased_at_ms IS NOT NULL FROM users";

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        let writer = self.writer.lock().expect("writer lock").clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer.send(WriteJob { work: Work::Append(appends), reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn rewrite(
        &self,
        rewrite: super::erasure::LogRewrite,
        appends: Vec<StreamAppend>,
    ) -> Result<AppendOutcome, AppendError> {
        let writer = self.writer.lock().expect("writer lock").clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer.send(WriteJob { work: Work::Rewrite(rewrite, appends), reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_all(&self, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("{SELECT_EVENT} WHERE position > ?1 ORDER BY position LIMIT ?2"))?;
            collect_events(&mut stmt, params![after as i64, limit])
        })
        .await
    }

    async fn read_stream(&self, stream: &StreamName, after: u64, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.as_str().to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "{SELECT_EVENT} WHERE stream = ?1 AND version > ?2 ORDER BY version LIMIT ?3"
            ))?;
            collect_events(&mut stmt, params![stream, after as i64, limit])
        })
        .await
    }

    async fn last_in_stream(&self, stream: &StreamName) -> Result<Option<RecordedEvent>, StoreError> {
        let stream = stream.as_str().to_owned();
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached(&format!("{SELECT_EVENT} WHERE stream = ?1 ORDER BY version DESC LIMIT 1"))?;
            Ok(collect_events(&mut stmt, params![stream])?.pop())
        })
        .await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<CommittedBatch> {
        self.committed.subscribe()
    }

    async fn feed(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.schema_version, e.payload,
                        e.recorded_at_ms
                 FROM feed f JOIN events e ON e.position = f.position
                 WHERE f.user_id = ?1 AND f.position > ?2 ORDER BY f.position LIMIT ?3",
            )?;
            collect_events(&mut stmt, params![user.to_string(), after as i64, limit])
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let email = email.as_str().to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("{SELECT_USER} WHERE email = ?1"))?
                .query_row([email], row_to_user)
                .optional()?
                .map(user_record)
                .transpose()
        })
        .await
    }

    async fn user_by_id(&self, user: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!("{SELECT_USER} WHERE user_id = ?1"))?
                .query_row([user.to_string()], row_to_user)
                .optional()?
                .map(user_record)
                .transpose()
        })
        .await
    }

    async fn groups_page(
        &self,
        prefix: Option<String>,
        after: Option<(Millis, ConversationId)>,
        limit: u32,
    ) -> Result<Vec<super::GroupListEntry>, StoreError> {
        let (after_at, after_id) = after.map_or((None, None), |(at, id)| (Some(at.0 as i64), Some(id.to_string())));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(super::SELECT_GROUPS_PAGE)?;
            let rows = stmt.query_map(params![prefix, after_at, after_id, i64::from(limit)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            let mut page = Vec::new();
            for row in rows {
                let (id, name, e2ee, created, activity, last_seq, members) = row?;
                page.push(super::GroupListEntry {
                    conversation_id: ConversationId(parse_uuid(&id)?),
                    name,
                    e2ee,
                    created_at: Millis(created as u64),
                    last_activity: Millis(activity as u64),
                    last_seq: Seq(last_seq as u64),
                    members: members as u32,
                });
            }
            Ok(page)
        })
        .await
    }

    async fn users_page(
        &self,
        prefix: Option<String>,
        after: Option<(Millis, UserId)>,
        limit: u32,
    ) -> Result<Vec<UserListEntry>, StoreError> {
        let (after_at, after_id) = after.map_or((None, None), |(at, id)| (Some(at.0 as i64), Some(id.to_string())));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT u.*, (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.user_id AND s.revoked_at_ms IS NULL)
                 FROM ({SELECT_USER}
                       WHERE (?1 IS NULL OR substr(COALESCE(email, ''), 1, length(?1)) = ?1
                              OR substr(lower(display_name), 1, length(?1)) = ?1)
                         AND (?2 IS NULL OR (created_at_ms, user_id) > (?2, ?3))
                       ORDER BY created_at_ms, user_id LIMIT ?4) u
                 ORDER BY u.created_at_ms, u.user_id"
            ))?;
            let rows = stmt.query_map(params![prefix, after_at, after_id, limit], |row| {
                Ok((row_to_user(row)?, row.get::<_, i64>(11)?))
            })?;
            let mut page = Vec::new();
            for row in rows {
                let (user, sessions) = row?;
                page.push(UserListEntry { user: user_record(user)?, sessions: sessions as u32 });
            }
            Ok(page)
        })
        .await
    }

    async fn user_by_phone(&self, phone: &crate::domain::Phone) -> Result<Option<UserRecord>, StoreError> {
        let phone = phone.as_str().to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("{SELECT_USER} WHERE phone = ?1"))?
                .query_row([phone], row_to_user)
                .optional()?
                .map(user_record)
                .transpose()
        })
        .await
    }

    async fn user_by_identity(
        &self,
        provider: crate::domain::IdentityProvider,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let subject = subject.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("{SELECT_USER} WHERE user_id = ({SELECT_IDENTITY_OWNER})"))?
                .query_row(params![provider.as_str(), subject], row_to_user)
                .optional()?
                .map(user_record)
                .transpose()
        })
        .await
    }

    async fn media(&self, id: crate::domain::MediaId) -> Result<Option<MediaRecord>, StoreError> {
        self.read(move |c| {
            let row = c.prepare_cached(SELECT_MEDIA)?.query_row([id.to_string()], sqlite_media_row).optional()?;
            row.map(MediaRow::into_record).transpose()
        })
        .await
    }

    async fn media_unsent(&self, before: Millis, limit: u32) -> Result<Vec<MediaRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT_MEDIA_UNSENT)?;
            let rows = stmt.query_map(params![before.0 as i64, limit], sqlite_media_row)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(MediaRow::into_record)).collect()
        })
        .await
    }

    async fn media_blobs(&self, after: Option<[u8; 32]>, limit: u32) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        self.read(move |c| {
            let after = after.map(|a| a.to_vec()).unwrap_or_default();
            let mut stmt = c.prepare_cached(super::SELECT_MEDIA_BLOBS)?;
            let rows = stmt
                .query_map(params![after, i64::from(limit)], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
            let mut blobs = Vec::new();
            for row in rows {
                let (sha, size) = row?;
                blobs.push((super::stored_sha256(&sha)?, size as u64));
            }
            Ok(blobs)
        })
        .await
    }

    async fn media_refs(&self, sha256: [u8; 32]) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(SELECT_MEDIA_REFS)?.query_row([sha256.as_slice()], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn media_bytes_of(&self, user: UserId) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(SELECT_MEDIA_BYTES)?.query_row([user.to_string()], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn identities_of(&self, user: UserId) -> Result<Vec<IdentityRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT_IDENTITIES_OF)?;
            let rows = stmt.query_map([user.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (provider, subject, email, at) = row?;
                out.push(identity_record(&provider, subject, email, at)?);
            }
            Ok(out)
        })
        .await
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<DeviceSessionRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT_SESSIONS_OF)?;
            let rows = stmt.query_map([user.to_string()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (hash, device, name, method, created) = row?;
                out.push(device_session(&hash, &device, name, &method, created)?);
            }
            Ok(out)
        })
        .await
    }

    async fn recovery_code_unused(&self, user: UserId, code_hash: [u8; 32]) -> Result<bool, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(SELECT_RECOVERY_CODE)?
                .query_row(params![user.to_string(), code_hash.as_slice()], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn session_by_token(&self, token_hash: TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        self.read(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT user_id, device_id, device_name, revoked_at_ms IS NOT NULL, created_at_ms FROM sessions
                     WHERE token_hash = ?1",
                )?
                .query_row([token_hash.0.as_slice()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .optional()?;
            row.map(|(user, device, name, revoked, created)| {
                Ok(SessionRecord {
                    created_at: Millis(created as u64),
                    user_id: UserId(parse_uuid(&user)?),
                    device_id: DeviceId(parse_uuid(&device)?),
                    device_name: name,
                    revoked,
                })
            })
            .transpose()
        })
        .await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationState>, StoreError> {
        self.read(move |c| load_conversation(c, &id.to_string())).await
    }

    async fn membership(&self, id: ConversationId, user: UserId) -> Result<Option<Membership>, StoreError> {
        self.read(move |c| load_membership(c, &id.to_string(), &user.to_string())).await
    }

    async fn conversations_for_user(
        &self,
        user: UserId,
        before: Option<Position>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read(move |c| load_summaries(c, user, Summaries::Page { before, limit })).await
    }

    async fn conversation_summary(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        self.read(move |c| Ok(load_summaries(c, user, Summaries::One(id))?.pop())).await
    }

    async fn readable_conversations(&self, user: UserId) -> Result<Vec<ReadableConversation>, StoreError> {
        self.read(move |c| {
            let rows: Vec<(String, Option<String>, Option<i64>)> = c
                .prepare_cached(&format!("{SELECT_READABLE} WHERE m.user_id = ?1"))?
                .query_map([user.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            rows.into_iter()
                .map(|(id, name, left)| {
                    Ok(ReadableConversation {
                        conversation: ConversationId(parse_uuid(&id)?),
                        name,
                        left_at: left.map(|l| Seq(l as u64)),
                    })
                })
                .collect()
        })
        .await
    }

    async fn messages(
        &self,
        id: ConversationId,
        page: HistoryPage,
        visible_upto: Option<Seq>,
    ) -> Result<(Vec<MessageRecord>, bool), StoreError> {
        self.read(move |c| {
            let conv = id.to_string();
            let upto = visible_upto.map_or(i64::MAX, |s| s.0 as i64);
            let (sql, bound, limit, newest_first) = page.query('?');
            let mut stmt = c.prepare_cached(&format!("{SELECT_MESSAGE} {sql}"))?;
            let msgs = collect_messages(&mut stmt, params![conv, bound as i64, i64::from(limit) + 1, upto])?;
            Ok(HistoryPage::finish(msgs, limit, newest_first))
        })
        .await
    }

    async fn message(&self, id: ConversationId, seq: Seq) -> Result<Option<MessageRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!("{SELECT_MESSAGE} WHERE conversation_id = ?1 AND seq = ?2"))?;
            Ok(collect_messages(&mut stmt, params![id.to_string(), seq.0 as i64])?.pop())
        })
        .await
    }

    async fn retention_of(&self, id: ConversationId) -> Result<u64, StoreError> {
        self.read(move |c| {
            let secs: Option<i64> = c
                .prepare_cached("SELECT retention_secs FROM conversations WHERE conversation_id = ?1")?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()?;
            Ok(secs.unwrap_or(0) as u64)
        })
        .await
    }

    async fn retention_limits(&self, every: bool) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT conversation_id, retention_secs FROM conversations WHERE ?1 OR retention_secs > 0
                 ORDER BY conversation_id",
            )?;
            let rows = stmt.query_map([every], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, secs) = row?;
                out.push((ConversationId(parse_uuid(&id)?), secs as u64));
            }
            Ok(out)
        })
        .await
    }

    async fn expired_messages(
        &self,
        id: ConversationId,
        before: Millis,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "{SELECT_MESSAGE} WHERE conversation_id = ?1 AND sent_at_ms < ?2 AND seq > ?3
                 AND content_kind <> 'erased' ORDER BY seq LIMIT ?4"
            ))?;
            collect_messages(&mut stmt, params![id.to_string(), before.0 as i64, after.0 as i64, limit])
        })
        .await
    }

    async fn receipt(&self, id: ConversationId, user: UserId) -> Result<ReceiptRecord, StoreError> {
        self.read(move |c| {
            let row: Option<(i64, i64)> = c
                .prepare_cached(
                    "SELECT delivered_seq, read_seq FROM receipts WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .query_row([id.to_string(), user.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let (delivered, read) = row.unwrap_or((0, 0));
            Ok(ReceiptRecord { user, delivered: Seq(delivered as u64), read: Seq(read as u64) })
        })
        .await
    }

    async fn receipts(&self, id: ConversationId) -> Result<Vec<ReceiptRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT user_id, delivered_seq, read_seq FROM receipts WHERE conversation_id = ?1 ORDER BY user_id",
            )?;
            let rows = stmt.query_map([id.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, delivered, read) = row?;
                out.push(ReceiptRecord {
                    user: UserId(parse_uuid(&user)?),
                    delivered: Seq(delivered as u64),
                    read: Seq(read as u64),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|c| {
            let count =
                |sql: &str| -> Result<u64, StoreError> { Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
            Ok(StoreStats {
                events: count("SELECT COUNT(*) FROM events")?,
                users: count("SELECT COUNT(*) FROM users")?,
                conversations: count("SELECT COUNT(*) FROM conversations")?,
                messages: count("SELECT COUNT(*) FROM messages")?,
                head: count("SELECT COALESCE(MAX(position), 0) FROM events")?,
            })
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        // An empty write transaction through the writer: begin, commit, fsync.
        self.write(Work::Append(Vec::new())).await
    }

    async fn set_last_seen(&self, user: UserId, at: Millis) -> Result<(), StoreError> {
        self.write(Work::LastSeen(user, at)).await
    }

    async fn last_seen_all(&self) -> Result<Vec<(UserId, Millis)>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT user_id, last_seen_ms FROM last_seen ORDER BY user_id")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (user, at) = row?;
                out.push((UserId(parse_uuid(&user)?), Millis(at as u64)));
            }
            Ok(out)
        })
        .await
    }

    async fn push_targets(
        &self,
        conversation: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<PushTarget>, StoreError> {
        // By user id, as PostgreSQL answers.
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT_PUSH_TARGETS)?;
            let mut out = Vec::new();
            for user in users {
                let rows = stmt.query_map(params![conversation.to_string(), user.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, bool>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                    ))
                })?;
                for row in rows {
                    let (device, endpoint, p256dh, auth, show_text, muted, until) = row?;
                    out.push(PushTarget {
                        subscription: PushSubscriptionRecord {
                            user,
                            device: DeviceId(parse_uuid(&device)?),
                            endpoint,
                            p256dh,
                            auth,
                        },
                        show_text,
                        muted_until: muted.map(|_| until.map(|u| Millis(u as u64))),
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn push_settings(&self, user: UserId, device: DeviceId) -> Result<PushSettings, StoreError> {
        self.read(move |c| {
            let show_text = c
                .prepare_cached("SELECT push_show_text FROM users WHERE user_id = ?1")?
                .query_row([user.to_string()], |r| r.get::<_, bool>(0))
                .optional()?
                .unwrap_or(true);
            let mut muted = Vec::new();
            let mut stmt = c.prepare_cached(
                "SELECT conversation_id, until_ms FROM push_mutes WHERE user_id = ?1 ORDER BY conversation_id",
            )?;
            for row in
                stmt.query_map([user.to_string()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)))?
            {
                let (conv, until) = row?;
                muted.push((ConversationId(parse_uuid(&conv)?), until.map(|u| Millis(u as u64))));
            }
            let subscription = c
                .prepare_cached(
                    "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE device_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![device.to_string(), user.to_string()], |r| {
                    Ok(PushSubscriptionRecord { user, device, endpoint: r.get(0)?, p256dh: r.get(1)?, auth: r.get(2)? })
                })
                .optional()?;
            Ok(PushSettings { show_text, muted, subscription })
        })
        .await
    }

    async fn follower_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: std::time::Duration,
        advance: Option<Position>,
    ) -> Result<Option<Position>, StoreError> {
        let conn = self.followers.clone().ok_or(StoreError::Closed)?;
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let until = now.0.saturating_add(ttl.as_millis() as u64);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("followers connection");
            let position = conn
                .prepare_cached(super::FOLLOWER_LEASE)?
                .query_row(params![name, holder, until as i64, advance.unwrap_or(0) as i64, now.0 as i64], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?;
            Ok(position.map(|p| p as Position))
        })
        .await
        .map_err(|e| StoreError::Database(format!("follower lease task: {e}")))?
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        self.write(Work::Import(events)).await
    }

    async fn rebuild(&self) -> Result<(), StoreError> {
        self.write(Work::Rebuild).await
    }

    async fn presence_info(&self, users: Vec<UserId>) -> Result<Vec<PresenceRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.hide_last_seen, l.last_seen_ms FROM users u
                 LEFT JOIN last_seen l ON l.user_id = u.user_id WHERE u.user_id = ?1",
            )?;
            let mut out = Vec::with_capacity(users.len());
            for user in users {
                let row = stmt
                    .query_row([user.to_string()], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, Option<i64>>(1)?)))
                    .optional()?;
                if let Some((hide, seen)) = row {
                    out.push(PresenceRecord { user, last_seen: seen.map(|s| Millis(s as u64)), hide_last_seen: hide });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT other.user_id FROM members me
                 JOIN members other ON other.conversation_id = me.conversation_id
                 WHERE me.user_id = ?1 AND me.left_seq IS NULL AND other.left_seq IS NULL AND other.user_id != ?1",
            )?;
            let rows = stmt.query_map([user.to_string()], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in rows {
                out.push(UserId(parse_uuid(&id?)?));
            }
            Ok(out)
        })
        .await
    }

    async fn share_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.read(move |c| {
            let found = c
                .prepare_cached(SELECT_SHARE_CONVERSATION)?
                .query_row(params![a.to_string(), b.to_string()], |_| Ok(()))
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    async fn device_keys(&self, user: UserId) -> Result<Vec<DeviceKeyRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(SELECT_DEVICE_KEYS)?;
            let rows = stmt.query_map([user.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (device, key, at) = row?;
                out.push(device_key(&device, key, at)?);
            }
            Ok(out)
        })
        .await
    }

    async fn shutdown(&self) {
        // Dropping the sender lets the writer finish what is queued and stop.
        self.writer.lock().expect("writer lock").take();
        let thread = self.writer_thread.lock().expect("writer thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
