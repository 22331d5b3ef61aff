//! The PostgreSQL backend: the same log and read models as the embedded store,
//! in a database that several natterd nodes share.
//!
//! Writes: each node has one writer (its own thread, runtime and connection)
//! that group-commits (every append waiting is taken into one transaction, one
//! WAL flush, two round trips; what it sends is in `write`). Every write
//! transaction first takes one advisory lock, `LOG_LOCK`, and assigns positions
//! after the highest committed one; the lock is released only after the commit
//! is visible. So positions become visible in position order, across nodes: a
//! reader that has seen position P never later finds a new event below P (see
//! ARCHITECTURE.md, "Gap-free positions"). Taking the lock first also means
//! every check an append makes (expected version, idempotency, membership)
//! reads the latest committed state, whichever node wrote it.
//!
//! Reads: a pool of connections; a read whose connection the database dropped
//! runs again on a fresh one, and an unreachable database is
//! `StoreError::Unavailable`. Subscriptions: a tailer task per node reads
//! the log by position and publishes batches (with each event's audience, read
//! back from the feed rows), woken by this node's own commits and by
//! `LISTEN natter_log` for other nodes' commits, with a slow poll as a safety net.
//! The same listening connection carries the cluster channel (`natter_signal`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod write;

use super::{
    codec, device_session, identity_record, role_from_str, AppendError, AppendOutcome, Cluster, CommitHook,
    CommitStats, CommittedBatch, CommittedEvent, ConversationSummary, DeviceSessionRecord, HistoryPage, IdentityRecord,
    Membership, MessageRecord, Position, PresenceRecord, PushSettings, PushSubscriptionRecord, PushTarget,
    ReadableConversation, ReceiptRecord, RecordedEvent, SessionRecord, Store, StoreError, StoreStats, StreamAppend,
    StreamName, Summaries, UserRecord, Work, WriteJob, SELECT_IDENTITIES_OF, SELECT_IDENTITY_OWNER, SELECT_READABLE,
    SELECT_RECOVERY_CODE, SELECT_SESSIONS_OF, SELECT_SUMMARIES,
};
use super::{device_key, DeviceKeyRecord, UserListEntry, SELECT_DEVICE_KEYS, SELECT_SHARE_CONVERSATION};
use super::{MediaRecord, MediaRow, SELECT_MEDIA, SELECT_MEDIA_BYTES, SELECT_MEDIA_REFS, SELECT_MEDIA_UNSENT};
use crate::domain::{
    conversation::{ConversationKind, ConversationState, MemberState},
    ClientMsgId, ConversationId, DeviceId, Email, Event, Millis, Role, Seq, TokenHash, UserId,
};

/// Versioned migrations, applied in order at start-up. Never edit a shipped one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_account_security.sql")),
    (3, include_str!("../../migrations/postgres/0003_identities.sql")),
    (4, include_str!("../../migrations/postgres/0004_media.sql")),
    (5, include_str!("../../migrations/postgres/0005_media_previews.sql")),
    (6, include_str!("../../migrations/postgres/0006_push.sql")),
    (7, include_str!("../../migrations/postgres/0007_mls.sql")),
    (8, include_str!("../../migrations/postgres/0008_online_activity.sql")),
    (9, include_str!("../../migrations/postgres/0009_admin.sql")),
    (10, include_str!("../../migrations/postgres/0010_erasure.sql")),
];

/// The advisory lock every log write holds from its first statement to its commit.
const LOG_LOCK: i64 = 0x6e61_7474_6572_0001;
/// The advisory lock migrations hold (nodes starting together migrate once).
const MIGRATION_LOCK: i64 = 0x6e61_7474_6572_0002;

/// NOTIFY channel: "the log has new events".
const LOG_CHANNEL: &str = "natter_log";
/// NOTIFY channel: ephemeral messages between nodes.
const SIGNAL_CHANNEL: &str = "natter_signal";

/// How often a node proves it is alive, and how long until it counts as gone.
const HEARTBEAT: Duration = Duration::from_secs(2);
const NODE_EXPIRY_SECS: i64 = 10;

/// Largest NOTIFY payload PostgreSQL takes is 8000 bytes; keep a margin.
pub const MAX_CLUSTER_MESSAGE: usize = 7_800;

/// Events the tailer reads per query.
const TAIL_BATCH: i64 = 512;

/// How the PostgreSQL store is set up.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Connections serving queries (the writer and the listener have their own).
    pub readers: usize,
    /// Most appends committed in one transaction.
    pub max_batch: usize,
    /// Appends that may wait for the writer; callers wait (backpressure) beyond it.
    pub queue: usize,
    /// Without a wake-up, the tailer still looks for new events this often.
    pub poll: Duration,
    /// Follow the shared log and join the cluster (natterd); operator tools
    /// that only read and write leave it off.
    pub serve: bool,
    pub on_commit: Option<CommitHook>,
}

impl PostgresConfig {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            readers: 8,
            max_batch: 1024,
            queue: 8192,
            poll: Duration::from_millis(500),
            serve: true,
            on_commit: None,
        }
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    pool: Pool,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    writer_task: Mutex<Option<std::thread::JoinHandle<()>>>,
    committed: broadcast::Sender<CommittedBatch>,
    stop: CancellationToken,
    cluster: Option<Arc<PgCluster>>,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's message, when there is one, says more than the wrapper.
        // Connection failures, and the server ending the session (class 08;
        // 57P01-57P03: shut down, crashed, not yet accepting).
        let gone = e.is_closed()
            || e.as_db_error().is_some_and(|db| {
                let code = db.code().code();
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
            });
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => with_causes(&e),
        };
        // Class 53: insufficient resources (53100 disk full, 53200 out of
        // memory, 53300 too many connections): worth retrying later.
        let full = e.as_db_error().is_some_and(|db| db.code().code() == "53100");
        if gone {
            StoreError::Unavailable(message)
        } else if full {
            StoreError::Full(message)
        } else {
            StoreError::Database(message)
        }
    }
}

/// An error's message followed by its causes' ("error connecting to server:
/// Connection refused (os error 111)").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !message.contains(&more) {
            message = format!("{message}: {more}");
        }
        cause = c.source();
    }
    message
}

impl From<tokio_postgres::Error> for AppendError {
    fn from(e: tokio_postgres::Error) -> Self {
        AppendError::Store(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // Refused by the server itself (no such database or role, bad
            // password): a configuration error. Anything else on the way to
            // it (refused, reset, timed out, shutting down): unavailable.
            deadpool_postgres::PoolError::Backend(e) => {
                let refused_by_server = e.as_db_error().is_some();
                match StoreError::from(e) {
                    StoreError::Database(why) if refused_by_server => {
                        StoreError::Database(format!("connecting to postgres: {why}"))
                    }
                    StoreError::Database(why) | StoreError::Unavailable(why) => {
                        StoreError::Unavailable(format!("connecting to postgres: {why}"))
                    }
                    other => other,
                }
            }
            e @ deadpool_postgres::PoolError::Timeout(_) => {
                StoreError::Unavailable(format!("connection pool: {}", with_causes(&e)))
            }
            other => StoreError::Database(format!("connection pool: {}", with_causes(&other))),
        }
    }
}

impl PostgresStore {
    /// Connects, applies pending migrations and starts the writer (and, with
    /// `serve`, the tailer, the listener and the heartbeat).
    ///
    /// # Errors
    /// When the URL is malformed, the database cannot be reached or a migration fails.
    pub async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        let pool = connection_pool(&config.url, config.readers.max(1))?;
        let mut conn = pool.get().await?;
        migrate(&mut conn).await?;
        let head = head_position(&conn).await?;
        // Back to the pool before anything else needs one (`readers` may be 1).
        drop(conn);

        let stop = CancellationToken::new();
        let (committed, _) = broadcast::channel(1024);
        let wake = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(refresh_plans(pool.clone(), stop.clone()))];
        let cluster = if config.serve {
            let node = Uuid::new_v4().to_string();
            let cluster = Arc::new(PgCluster { pool: pool.clone(), node, messages: broadcast::channel(1024).0 });
            tasks.push(tokio::spawn(listen(config.url.clone(), wake.clone(), cluster.clone(), stop.clone())));
            tasks.push(tokio::spawn(tail(
                pool.clone(),
                head,
                wake.clone(),
                committed.clone(),
                config.poll,
                stop.clone(),
            )));
            cluster.heartbeat().await?;
            tasks.push(tokio::spawn(heartbeat(cluster.clone(), stop.clone())));
            Some(cluster)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        // The writer gets a thread and a runtime of its own, like the embedded
        // store's writer thread: its round trips to the server are its whole
        // cost, and on a busy shared runtime each waited for a worker (found
        // by timing a wave's checks under S1: milliseconds for a trivial query).
        let writer_task = std::thread::Builder::new().name("natter-pg-writer".into()).spawn({
            let (url, on_commit, max_batch) = (config.url.clone(), config.on_commit.clone(), config.max_batch.max(1));
            let stop = stop.clone();
            move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return tracing::error!(error = %e, "postgres writer runtime failed to start"),
                };
                runtime.block_on(async move {
                    match connection_pool(&url, 1) {
                        Ok(pool) => {
                            // Ends with the runtime, when the writer has stopped.
                            tokio::spawn(refresh_plans(pool.clone(), stop));
                            Writer { pool, conn: None, wake, on_commit }.run(rx, max_batch).await
                        }
                        Err(e) => tracing::error!(error = %e, "postgres writer cannot start"),
                    }
                });
            }
        })?;
        Ok(Self {
            pool,
            writer: Mutex::new(Some(tx)),
            tasks: Mutex::new(tasks),
            writer_task: Mutex::new(Some(writer_task)),
            committed,
            stop,
            cluster,
        })
    }

    async fn write(&self, work: Work) -> Result<AppendOutcome, AppendError> {
        let writer = self.writer.lock().expect("writer lock").clone().ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        writer.send(WriteJob { work, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn write_plain(&self, work: Work) -> Result<(), StoreError> {
        match self.write(work).await {
            Ok(_) => Ok(()),
            Err(AppendError::Store(e)) => Err(e),
            Err(other) => Err(StoreError::Database(other.to_string())),
        }
    }

    /// How many natterd nodes serve this database (a heartbeat within the
    /// last 10 s; a node that stopped gracefully has left at once).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn live_nodes(&self) -> Result<u64, StoreError> {
        self.read(|conn| async move {
            let row = conn
                .query_one(
                    &format!(
                        "SELECT COUNT(*) FROM nodes WHERE heartbeat_at > now() - interval '{NODE_EXPIRY_SECS} seconds'"
                    ),
                    &[],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Runs a read on a pooled connection. When the database dropped that
    /// connection (a restart, a cut), the pool may not know yet: the read runs
    /// again on another, up to [`READ_ATTEMPTS`] times. A dead connection is
    /// not handed out again (the pool checks on return).
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match read(self.conn().await?).await {
                Err(StoreError::Unavailable(e)) if attempt < READ_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "postgres connection lost during a read; retrying");
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }
}

/// A pool of up to `size` connections to `url`, driven by the runtime that
/// opens them (the writer has its own, of one connection, on its runtime).
pub(crate) fn connection_pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let pg: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Database(format!("store.url: {e}")))?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Database(format!("connection pool: {e}")))
}

/// Attempts at a read whose connection turns out to be dead.
const READ_ATTEMPTS: u32 = 3;

/// How long a prepared statement (and the plan PostgreSQL chose for it) is
/// kept. A generic plan is chosen once, on the statistics of that moment: one
/// made while a table was a few rows long scans it sequentially, and stays
/// until something invalidates it. Re-preparing every minute bounds that (it
/// costs one Parse round trip per statement a minute).
const PLAN_LIFETIME: Duration = Duration::from_secs(60);

/// Drops a pool's prepared statements every [`PLAN_LIFETIME`].
async fn refresh_plans(pool: Pool, stop: CancellationToken) {
    let mut every = tokio::time::interval(PLAN_LIFETIME);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => pool.manager().statement_caches.clear(),
        }
    }
}

async fn migrate(conn: &mut Object) -> Result<(), StoreError> {
    let tx = conn.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
    )
    .await?;
    let current: i64 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await?.get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::Database(format!(
            "database schema version {current} is newer than this natterd knows ({known}); upgrade natterd"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)", &[version, &now_ms()])
            .await?;
        tracing::info!(version, "applied postgres migration");
    }
    tx.commit().await?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn head_position(conn: &Object) -> Result<Position, StoreError> {
    Ok(conn.query_one("SELECT COALESCE(MAX(position), 0) FROM events", &[]).await?.get::<_, i64>(0) as u64)
}

/// The writer task: owns one connection and group-commits.
struct Writer {
    pool: Pool,
    conn: Option<Object>,
    /// Wakes this node's tailer after a commit.
    wake: Arc<Notify>,
    on_commit: Option<CommitHook>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<WriteJob>, max_batch: usize) {
        let mut jobs = Vec::with_capacity(max_batch);
        while let Some(first) = rx.recv().await {
            jobs.push(first);
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let n = jobs.len();
            let mut outcome = self.commit(&mut jobs).await;
            if let Err((Failure::BeforeCommit(e), true)) = &outcome {
                // The connection died and the transaction with it, so nothing
                // of the batch is stored: run it again on a fresh connection.
                tracing::warn!(error = %e, "postgres writer connection lost; retrying the batch");
                outcome = self.commit(&mut jobs).await;
            }
            let outcome = outcome.map_err(|(failure, _)| failure);
            match outcome {
                Ok((events, messages, commit_took)) => {
                    if let Some(hook) = &self.on_commit {
                        hook(CommitStats { jobs: n, events, messages, took: started.elapsed(), commit_took });
                    }
                }
                Err(failure) => {
                    let e = failure.error();
                    tracing::error!(error = %e, "postgres group commit failed; appends in the batch may not be stored");
                    for job in jobs.drain(..) {
                        let _ = job.reply.send(Err(AppendError::Store(e.for_another())));
                    }
                }
            }
        }
        tracing::debug!("postgres writer stopped");
    }

    /// Commits the jobs in one transaction; returns events and messages written
    /// and how long the round trip carrying COMMIT took. On `Err` no reply was
    /// sent, and the connection is dropped (it may be mid-transaction); nothing
    /// was stored unless the failure came at the COMMIT itself (then it is
    /// unknown).
    /// The `bool` with a failure: whether the connection had died.
    async fn commit(&mut self, jobs: &mut Vec<WriteJob>) -> Result<(usize, usize, Duration), (Failure, bool)> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.pool.get().await.map_err(|e| (Failure::BeforeCommit(e.into()), false))?);
        }
        let conn = self.conn.as_ref().expect("a connection was just taken");
        let recorded_at = Millis(now_ms() as u64);
        let written = match write::write_batch(conn, jobs, recorded_at).await {
            Ok(written) => written,
            Err(failure) => {
                let conn = self.conn.take().expect("the connection written on");
                let lost = conn.is_closed() || matches!(failure, Failure::BeforeCommit(StoreError::Unavailable(_)));
                // Not back into the pool: it may hold an open transaction.
                drop(Object::take(conn));
                return Err((failure, lost));
            }
        };
        let batch = written.committed;
        let wrote = !batch.is_empty()
            || jobs.iter().any(|j| matches!(j.work, Work::Import(_) | Work::Rebuild | Work::Rewrite(..)));
        for (job, result) in jobs.drain(..).zip(written.results) {
            let _ = job.reply.send(result);
        }
        if wrote {
            self.wake.notify_one();
        }
        let messages = batch.iter().filter(|c| matches!(c.event.event, Event::MessageSent(_))).count();
        Ok((batch.len(), messages, written.commit_took))
    }
}

/// How a group commit failed.
enum Failure {
    /// Before COMMIT, or a statement failed and the COMMIT behind it rolled
    /// the transaction back: nothing of the batch is stored.
    BeforeCommit(StoreError),
    /// At COMMIT: the batch may or may not be stored (callers retry; appends
    /// are idempotent by event id).
    AtCommit(StoreError),
}

impl Failure {
    fn error(self) -> StoreError {
        match self {
            Failure::BeforeCommit(e) | Failure::AtCommit(e) => e,
        }
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A connection as the writer uses it: statements prepared once, the
/// transaction driven by hand (so BEGIN and COMMIT can share round trips).
type Conn = ClientWrapper;

async fn query(client: &Conn, sql: &str, params: Params<'_>) -> Result<Vec<Row>, tokio_postgres::Error> {
    let stmt = client.prepare_cached(sql).await?;
    client.query(&stmt, params).await
}

const SELECT_EVENT: &str =
    "SELECT position, stream, version, event_id, event_type, schema_version, payload, recorded_at_ms FROM events";

fn row_to_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position = row.get::<_, i64>(0) as u64;
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let id = Uuid::from_slice(row.get::<_, &[u8]>(3)).map_err(|e| corrupt(e.to_string()))?;
    let ty: &str = row.get(4);
    let schema = row.get::<_, i32>(5) as u32;
    let event = codec::decode(ty, schema, row.get::<_, &[u8]>(6)).map_err(corrupt)?;
    Ok(RecordedEvent {
        position,
        stream: StreamName::from_stored(row.get(1)),
        version: row.get::<_, i64>(2) as u64,
        id,
        recorded_at: Millis(row.get::<_, i64>(7) as u64),
        event,
    })
}

/// One read-only, repeatable-read transaction on the database whose snapshot
/// is exported (`pg_export_snapshot`), so that `pg_dump --snapshot` dumps
/// exactly what this reads: a backup's dump, its log and the blobs its media
/// refer to, all as of one commit. The snapshot lives until [`ExportedSnapshot::finish`]
/// (or the value is dropped).
pub struct ExportedSnapshot {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
    /// What `pg_dump --snapshot` takes.
    pub id: String,
    /// The log's newest position in the snapshot.
    pub head: Position,
}

impl ExportedSnapshot {
    /// Opens the transaction on `url` and exports its snapshot.
    ///
    /// # Errors
    /// The database cannot be reached, or refuses.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "snapshot connection ended");
            }
        });
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let id: String = client.query_one("SELECT pg_export_snapshot()", &[]).await?.get(0);
        let head =
            client.query_one("SELECT COALESCE(MAX(position), 0) FROM events", &[]).await?.get::<_, i64>(0) as u64;
        Ok(Self { client, driver, id, head })
    }

    /// Events of the snapshot's log with position > `after`, at most `limit`.
    ///
    /// # Errors
    /// The database failed, or an event does not decode.
    pub async fn read_all(&self, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!("{SELECT_EVENT} WHERE position > $1 ORDER BY position LIMIT $2");
        let rows = self.client.query(&sql, &[&(after as i64), &i64::from(limit)]).await?;
        rows.iter().map(row_to_event).collect()
    }

    /// As [`Store::media_blobs`], in the snapshot.
    ///
    /// # Errors
    /// The database failed.
    pub async fn media_blobs(&self, after: Option<[u8; 32]>, limit: u32) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        let after = after.map(|a| a.to_vec()).unwrap_or_default();
        let rows = self.client.query(super::SELECT_MEDIA_BLOBS, &[&after, &i64::from(limit)]).await?;
        media_blob_rows(&rows)
    }

    /// Ends the transaction (the snapshot with it).
    pub async fn finish(self) {
        let _ = self.client.batch_execute("COMMIT").await;
        drop(self.client);
        let _ = self.driver.await;
    }
}

/// The rows of [`super::SELECT_MEDIA_BLOBS`].
fn media_blob_rows(rows: &[Row]) -> Result<Vec<([u8; 32], u64)>, StoreError> {
    rows.iter().map(|r| Ok((super::stored_sha256(r.get::<_, &[u8]>(0))?, r.get::<_, i64>(1) as u64))).collect()
}

/// Whether the database at `url` holds no table at all (a restore's target).
///
/// # Errors
/// The database cannot be reached.
pub async fn database_is_empty(url: &str) -> Result<bool, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(connection);
    let n: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(n == 0)
}

fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(s).map_err(|e| StoreError::Database(format!("bad id {s:?} in read model: {e}")))
}

fn parse_role(s: &str) -> Result<Role, StoreError> {
    role_from_str(s).ok_or_else(|| StoreError::Database(format!("unknown role {s:?}")))
}

/// Follows the log for this node: reads by position, publishes with audiences.
async fn tail(
    pool: Pool,
    mut last: Position,
    wake: Arc<Notify>,
    publish: broadcast::Sender<CommittedBatch>,
    poll: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
        }
        loop {
            match read_committed(&pool, last).await {
                Ok(batch) => {
                    let Some(newest) = batch.last() else { break };
                    last = newest.event.position;
                    let full = batch.len() as i64 == TAIL_BATCH;
                    // No subscriber is fine: the log has everything.
                    let _ = publish.send(batch.into());
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, after = last, "reading the shared log failed; retrying");
                    break;
                }
            }
        }
    }
}

/// Committed events after `after`, each with the audience its feed rows name.
async fn read_committed(pool: &Pool, after: Position) -> Result<Vec<CommittedEvent>, StoreError> {
    let conn = pool.get().await?;
    let stmt = conn
        .prepare_cached(
            "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.schema_version, e.payload,
                    e.recorded_at_ms, ARRAY(SELECT f.user_id FROM feed f WHERE f.position = e.position)
             FROM events e WHERE e.position > $1 ORDER BY e.position LIMIT $2",
        )
        .await?;
    let rows = conn.query(&stmt, &[&(after as i64), &TAIL_BATCH]).await?;
    rows.iter()
        .map(|row| {
            let audience = row
                .get::<_, Vec<String>>(8)
                .iter()
                .map(|u| parse_uuid(u).map(UserId))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(CommittedEvent { event: row_to_event(row)?, audience })
        })
        .collect()
}

/// Keeps a LISTEN connection open (reconnecting when it drops) and turns
/// notifications into tailer wake-ups and cluster messages.
async fn listen(url: String, wake: Arc<Notify>, cluster: Arc<PgCluster>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = futures::StreamExt::next(&mut messages).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "postgres listener connection lost");
                                break;
                            }
                        }
                    }
                });
                let listening = client.batch_execute(&format!("LISTEN {LOG_CHANNEL}; LISTEN {SIGNAL_CHANNEL}")).await;
                if let Err(e) = listening {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    // Anything committed while not listening is found by reading.
                    wake.notify_one();
                    loop {
                        let n = tokio::select! {
                            _ = stop.cancelled() => break,
                            n = rx.recv() => n,
                        };
                        let Some(n) = n else { break };
                        if n.channel() == LOG_CHANNEL {
                            wake.notify_one();
                        } else if let Some((node, message)) = n.payload().split_once(' ') {
                            if node != cluster.node {
                                let _ = cluster.messages.send(message.into());
                            }
                        }
                    }
                }
                drop(client);
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "postgres listener cannot connect; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn heartbeat(cluster: Arc<PgCluster>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        if let Err(e) = cluster.heartbeat().await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
    }
}

/// This node's membership of the cluster.
struct PgCluster {
    pool: Pool,
    node: String,
    messages: broadcast::Sender<Arc<str>>,
}

impl PgCluster {
    /// Proves this node alive and forgets nodes that stopped proving it.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            "INSERT INTO nodes (node_id) VALUES ($1) ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()",
            &[&self.node],
        )
        .await?;
        conn.execute(
            &format!(
                "DELETE FROM online WHERE node_id IN
                   (SELECT node_id FROM nodes WHERE heartbeat_at < now() - interval '{NODE_EXPIRY_SECS} seconds')"
            ),
            &[],
        )
        .await?;
        conn.execute(
            &format!("DELETE FROM nodes WHERE heartbeat_at < now() - interval '{NODE_EXPIRY_SECS} seconds'"),
            &[],
        )
        .await?;
        conn.execute(
            "DELETE FROM login_failures WHERE updated_at < now() - interval '1 day'
                AND (locked_until IS NULL OR locked_until < now())",
            &[],
        )
        .await?;
        Ok(())
    }

    async fn leave(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute("DELETE FROM online WHERE node_id = $1", &[&self.node]).await?;
        conn.execute("DELETE FROM nodes WHERE node_id = $1", &[&self.node]).await?;
        Ok(())
    }
}

#[async_trait]
impl Cluster for PgCluster {
    fn node_id(&self) -> &str {
        &self.node
    }

    async fn nodes(&self) -> Result<Vec<super::NodeRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT n.node_id, GREATEST(EXTRACT(EPOCH FROM now() - n.heartbeat_at), 0)::int,
                            (SELECT COUNT(*) FROM online o WHERE o.node_id = n.node_id)
                     FROM nodes n WHERE n.heartbeat_at > now() - interval '{NODE_EXPIRY_SECS} seconds'
                     ORDER BY n.node_id"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| super::NodeRecord {
                node_id: r.get(0),
                heartbeat_age_secs: r.get::<_, i32>(1) as u32,
                online_users: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    async fn account_locked_for(&self, email: &Email) -> Result<Option<Duration>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT CEIL(EXTRACT(EPOCH FROM (locked_until - now())) * 1000)::bigint FROM login_failures
                 WHERE email = $1 AND locked_until > now()",
                &[&email.as_str()],
            )
            .await?;
        Ok(rows.first().map(|r| Duration::from_millis(r.get::<_, i64>(0).max(1) as u64)))
    }

    async fn login_failed(&self, email: &Email) -> Result<u32, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_one(
                "INSERT INTO login_failures (email, failures) VALUES ($1, 1)
                 ON CONFLICT (email) DO UPDATE SET failures = login_failures.failures + 1, updated_at = now()
                 RETURNING failures",
                &[&email.as_str()],
            )
            .await?;
        Ok(row.get::<_, i32>(0).max(0) as u32)
    }

    async fn lock_account(&self, email: &Email, lock: Duration) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute(
            "UPDATE login_failures
             SET locked_until = GREATEST(locked_until, now() + $2::float8 * interval '1 millisecond')
             WHERE email = $1",
            &[&email.as_str(), &(lock.as_secs_f64() * 1000.0)],
        )
        .await?;
        Ok(())
    }

    async fn login_succeeded(&self, email: &Email) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.execute("DELETE FROM login_failures WHERE email = $1", &[&email.as_str()]).await?;
        Ok(())
    }

    async fn publish(&self, message: String) -> Result<(), StoreError> {
        if message.len() > MAX_CLUSTER_MESSAGE {
            return Err(StoreError::Database(format!(
                "cluster message of {} bytes is over the {MAX_CLUSTER_MESSAGE}-byte limit",
                message.len()
            )));
        }
        let conn = self.pool.get().await?;
        let payload = format!("{} {message}", self.node);
        conn.execute("SELECT pg_notify($1, $2)", &[&SIGNAL_CHANNEL, &payload]).await?;
        Ok(())
    }

    fn messages(&self) -> broadcast::Receiver<Arc<str>> {
        self.messages.subscribe()
    }

    async fn set_online(&self, user: UserId, online: bool) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        if online {
            // Connecting is activity.
            let now = now_ms();
            conn.execute(
                "INSERT INTO online (user_id, node_id, active_at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, node_id) DO UPDATE SET active_at_ms = GREATEST(online.active_at_ms, $3)",
                &[&user.to_string(), &self.node, &now],
            )
            .await?;
        } else {
            conn.execute("DELETE FROM online WHERE user_id = $1 AND node_id = $2", &[&user.to_string(), &self.node])
                .await?;
        }
        Ok(())
    }

    async fn record_activity(&self, active: &[(UserId, u64)]) -> Result<(), StoreError> {
        if active.is_empty() {
            return Ok(());
        }
        let conn = self.pool.get().await?;
        let users: Vec<String> = active.iter().map(|(u, _)| u.to_string()).collect();
        let at: Vec<i64> = active.iter().map(|(_, t)| *t as i64).collect();
        conn.execute(
            "UPDATE online o SET active_at_ms = GREATEST(o.active_at_ms, v.at)
             FROM unnest($1::text[], $2::bigint[]) AS v(user_id, at)
             WHERE o.user_id = v.user_id AND o.node_id = $3",
            &[&users, &at, &self.node],
        )
        .await?;
        Ok(())
    }

    async fn active_elsewhere(&self, users: &[UserId], since_ms: u64) -> Result<Vec<UserId>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.pool.get().await?;
        let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
        let rows = conn
            .query(
                &format!(
                    "SELECT DISTINCT o.user_id FROM online o JOIN nodes n ON n.node_id = o.node_id
                     WHERE o.user_id = ANY($1) AND o.node_id <> $2 AND o.active_at_ms >= $3
                       AND n.heartbeat_at > now() - interval '{NODE_EXPIRY_SECS} seconds'"
                ),
                &[&ids, &self.node, &(since_ms as i64)],
            )
            .await?;
        rows.iter().map(|r| parse_uuid(r.get(0)).map(UserId)).collect()
    }

    async fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        // Every connected user's activity time is at least 0.
        self.active_elsewhere(users, 0).await
    }
}

const SELECT_MESSAGE: &str = "SELECT conversation_id, seq, position, sender_user_id, sender_device_id, client_msg_id,
                                     content_kind, text, sent_at_ms, content_pb FROM messages";

fn row_to_message(row: &Row) -> Result<MessageRecord, StoreError> {
    let content = super::stored_content(row.get(6), row.get(7), row.get(9))?;
    Ok(MessageRecord {
        conversation_id: ConversationId(parse_uuid(row.get(0))?),
        seq: Seq(row.get::<_, i64>(1) as u64),
        position: row.get::<_, i64>(2) as u64,
        sender_user_id: UserId(parse_uuid(row.get(3))?),
        sender_device_id: DeviceId(parse_uuid(row.get(4))?),
        client_msg_id: ClientMsgId::parse(row.get(5))
            .map_err(|e| StoreError::Database(format!("stored client_msg_id: {e}")))?,
        content,
        at: Millis(row.get::<_, i64>(8) as u64),
    })
}

const SELECT_USER: &str = "SELECT user_id, email, display_name, password_hash, created_at_ms,
                                  email_verified_at_ms IS NOT NULL, totp_sealed_secret, phone, admin,
                                  disabled_at_ms IS NOT NULL, erased_at_ms IS NOT NULL FROM users";

fn row_to_user(row: &Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        user_id: UserId(parse_uuid(row.get(0))?),
        email: row.get::<_, Option<String>>(1).map(Email::from_normalized),
        display_name: row.get(2),
        password_hash: row.get(3),
        created_at: Millis(row.get::<_, i64>(4) as u64),
        email_verified: row.get(5),
        totp_sealed_secret: row.get(6),
        phone: row.get::<_, Option<String>>(7).map(crate::domain::Phone::from_normalized),
        admin: row.get(8),
        disabled: row.get(9),
        erased: row.get(10),
    })
}

async fn cached_query(conn: &Object, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
    let stmt = conn.prepare_cached(sql).await?;
    Ok(conn.query(&stmt, params).await?)
}

async fn load_conversation(conn: &Object, conv: &str) -> Result<Option<ConversationState>, StoreError> {
    // Both reads in one round trip.
    let params: [&(dyn ToSql + Sync); 1] = [&conv];
    let (rows, members) = futures::try_join!(
        cached_query(
            conn,
            "SELECT kind, name, created_at_ms, last_seq, changed_seq, e2ee FROM conversations WHERE conversation_id = $1",
            &params,
        ),
        cached_query(
            conn,
            "SELECT user_id, role FROM members WHERE conversation_id = $1 AND left_seq IS NULL ORDER BY ordinal",
            &params,
        )
    )?;
    let Some(row) = rows.first() else { return Ok(None) };
    let kind = match row.get::<_, &str>(0) {
        "direct" => ConversationKind::Direct,
        "group" => ConversationKind::Group,
        other => return Err(StoreError::Database(format!("unknown conversation kind {other:?}"))),
    };
    let members = members
        .iter()
        .map(|r| Ok(MemberState { user: UserId(parse_uuid(r.get(0))?), role: parse_role(r.get(1))? }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(ConversationState {
        id: ConversationId(parse_uuid(conv)?),
        kind,
        name: row.get(1),
        members,
        created_at: Millis(row.get::<_, i64>(2) as u64),
        version: Seq(row.get::<_, i64>(3) as u64),
        changed: Seq(row.get::<_, i64>(4) as u64),
        e2ee: row.get(5),
    }))
}

async fn load_summaries(conn: &Object, user: UserId, which: Summaries) -> Result<Vec<ConversationSummary>, StoreError> {
    let me = user.to_string();
    let rows = match which {
        Summaries::Page { before, limit } => {
            cached_query(
                conn,
                &format!(
                    "{SELECT_SUMMARIES} WHERE m.user_id = $1 AND c.last_position < $2 ORDER BY c.last_position DESC LIMIT $3"
                ),
                &[&me, &before.map_or(i64::MAX, |b| b as i64), &i64::from(limit)],
            )
            .await?
        }
        Summaries::One(id) => {
            cached_query(
                conn,
                &format!("{SELECT_SUMMARIES} WHERE m.user_id = $1 AND m.conversation_id = $2"),
                &[&me, &id.to_string()],
            )
            .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let conv: String = row.get(0);
        let left: Option<i64> = row.get(3);
        let read: i64 = row.get(4);
        let state = load_conversation(conn, &conv)
            .await?
            .ok_or_else(|| StoreError::Database(format!("member row for missing conversation {conv}")))?;
        let visible = left.unwrap_or(i64::MAX);
        let last_message = cached_query(
            conn,
            &format!("{SELECT_MESSAGE} WHERE conversation_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1"),
            &[&conv, &visible],
        )
        .await?
        .first()
        .map(row_to_message)
        .transpose()?;
        let unread: i64 = cached_query(
            conn,
            "SELECT COUNT(*) FROM messages
             WHERE conversation_id = $1 AND seq > $2 AND seq <= $3 AND sender_user_id <> $4",
            &[&conv, &read, &visible, &me],
        )
        .await?[0]
            .get(0);
        out.push(ConversationSummary {
            state,
            last_message,
            last_activity: Millis(row.get::<_, i64>(1) as u64),
            activity: row.get::<_, i64>(2) as u64,
            unread: unread as u64,
            read_up_to: Seq(read as u64),
            left_at: left.map(|l| Seq(l as u64)),
        });
    }
    Ok(out)
}

fn events_from(rows: &[Row]) -> Result<Vec<RecordedEvent>, StoreError> {
    rows.iter().map(row_to_event).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, appends: Vec<StreamAppend>) -> Result<AppendOutcome, AppendError> {
        self.write(Work::Append(appends)).await
    }

    async fn rewrite(
        &self,
        rewrite: super::erasure::LogRewrite,
        appends: Vec<StreamAppend>,
    ) -> Result<AppendOutcome, AppendError> {
        self.write(Work::Rewrite(rewrite, appends)).await
    }

    async fn read_all(&self, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(|conn| async move {
            let sql = format!("{SELECT_EVENT} WHERE position > $1 ORDER BY position LIMIT $2");
            events_from(&cached_query(&conn, &sql, &[&(after as i64), &i64::from(limit)]).await?)
        })
        .await
    }

    async fn read_stream(&self, stream: &StreamName, after: u64, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(|conn| async move {
            let sql = format!("{SELECT_EVENT} WHERE stream = $1 AND version > $2 ORDER BY version LIMIT $3");
            events_from(&cached_query(&conn, &sql, &[&stream.as_str(), &(after as i64), &i64::from(limit)]).await?)
        })
        .await
    }

    async fn last_in_stream(&self, stream: &StreamName) -> Result<Option<RecordedEvent>, StoreError> {
        self.read(|conn| async move {
            let sql = format!("{SELECT_EVENT} WHERE stream = $1 ORDER BY version DESC LIMIT 1");
            Ok(events_from(&cached_query(&conn, &sql, &[&stream.as_str()]).await?)?.pop())
        })
        .await
    }

    async fn head(&self) -> Result<Position, StoreError> {
        self.read(|conn| async move { head_position(&conn).await }).await
    }

    fn subscribe(&self) -> broadcast::Receiver<CommittedBatch> {
        self.committed.subscribe()
    }

    async fn feed(&self, user: UserId, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT e.position, e.stream, e.version, e.event_id, e.event_type, e.schema_version, e.payload,
                        e.recorded_at_ms
                 FROM feed f JOIN events e ON e.position = f.position
                 WHERE f.user_id = $1 AND f.position > $2 ORDER BY f.position LIMIT $3",
                &[&user.to_string(), &(after as i64), &i64::from(limit)],
            )
            .await?;
            events_from(&rows)
        })
        .await
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, &format!("{SELECT_USER} WHERE email = $1"), &[&email.as_str()]).await?;
            rows.first().map(row_to_user).transpose()
        })
        .await
    }

    async fn user_by_id(&self, user: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, &format!("{SELECT_USER} WHERE user_id = $1"), &[&user.to_string()]).await?;
            rows.first().map(row_to_user).transpose()
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
        let (prefix, after_id) = (&prefix, &after_id);
        self.read(|conn| async move {
            let rows =
                cached_query(&conn, super::SELECT_GROUPS_PAGE, &[prefix, &after_at, after_id, &i64::from(limit)])
                    .await?;
            rows.iter()
                .map(|r| {
                    Ok(super::GroupListEntry {
                        conversation_id: ConversationId(parse_uuid(r.get(0))?),
                        name: r.get(1),
                        e2ee: r.get(2),
                        created_at: Millis(r.get::<_, i64>(3) as u64),
                        last_activity: Millis(r.get::<_, i64>(4) as u64),
                        last_seq: Seq(r.get::<_, i64>(5) as u64),
                        members: r.get::<_, i64>(6) as u32,
                    })
                })
                .collect()
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
        let (prefix, after_id) = (&prefix, &after_id);
        self.read(|conn| async move {
            let sql = format!(
                "SELECT u.*, (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.user_id AND s.revoked_at_ms IS NULL)
                 FROM ({SELECT_USER}
                       WHERE ($1::text IS NULL OR starts_with(COALESCE(email, ''), $1) OR starts_with(lower(display_name), $1))
                         AND ($2::bigint IS NULL OR (created_at_ms, user_id) > ($2, $3::text))
                       ORDER BY created_at_ms, user_id LIMIT $4) u
                 ORDER BY u.created_at_ms, u.user_id"
            );
            let rows = cached_query(&conn, &sql, &[prefix, &after_at, after_id, &i64::from(limit)]).await?;
            rows.iter()
                .map(|row| {
                    Ok(UserListEntry { user: row_to_user(row)?, sessions: row.get::<_, i64>(11) as u32 })
                })
                .collect()
        })
        .await
    }

    async fn user_by_phone(&self, phone: &crate::domain::Phone) -> Result<Option<UserRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, &format!("{SELECT_USER} WHERE phone = $1"), &[&phone.as_str()]).await?;
            rows.first().map(row_to_user).transpose()
        })
        .await
    }

    async fn user_by_identity(
        &self,
        provider: crate::domain::IdentityProvider,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        self.read(|conn| async move {
            let sql = format!("{SELECT_USER} WHERE user_id = ({SELECT_IDENTITY_OWNER})");
            let rows = cached_query(&conn, &sql, &[&provider.as_str(), &subject]).await?;
            rows.first().map(row_to_user).transpose()
        })
        .await
    }

    async fn media(&self, id: crate::domain::MediaId) -> Result<Option<MediaRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_MEDIA, &[&id.to_string()]).await?;
            rows.first().map(|r| pg_media_row(r).into_record()).transpose()
        })
        .await
    }

    async fn media_unsent(&self, before: Millis, limit: u32) -> Result<Vec<MediaRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_MEDIA_UNSENT, &[&(before.0 as i64), &i64::from(limit)]).await?;
            rows.iter().map(|r| pg_media_row(r).into_record()).collect()
        })
        .await
    }

    async fn media_blobs(&self, after: Option<[u8; 32]>, limit: u32) -> Result<Vec<([u8; 32], u64)>, StoreError> {
        let after = after.map(|a| a.to_vec()).unwrap_or_default();
        let after = &after;
        self.read(|conn| async move {
            let rows = cached_query(&conn, super::SELECT_MEDIA_BLOBS, &[after, &i64::from(limit)]).await?;
            media_blob_rows(&rows)
        })
        .await
    }

    async fn media_refs(&self, sha256: [u8; 32]) -> Result<u64, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_MEDIA_REFS, &[&sha256.as_slice()]).await?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
        })
        .await
    }

    async fn media_bytes_of(&self, user: UserId) -> Result<u64, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_MEDIA_BYTES, &[&user.to_string()]).await?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64)
        })
        .await
    }

    async fn identities_of(&self, user: UserId) -> Result<Vec<IdentityRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_IDENTITIES_OF, &[&user.to_string()]).await?;
            rows.iter().map(|r| identity_record(r.get(0), r.get(1), r.get(2), r.get::<_, i64>(3))).collect()
        })
        .await
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<DeviceSessionRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_SESSIONS_OF, &[&user.to_string()]).await?;
            rows.iter()
                .map(|r| device_session(&r.get::<_, Vec<u8>>(0), r.get(1), r.get(2), r.get(3), r.get::<_, i64>(4)))
                .collect()
        })
        .await
    }

    async fn recovery_code_unused(&self, user: UserId, code_hash: [u8; 32]) -> Result<bool, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_RECOVERY_CODE, &[&user.to_string(), &code_hash.as_slice()]).await?;
            Ok(!rows.is_empty())
        })
        .await
    }

    async fn session_by_token(&self, token_hash: TokenHash) -> Result<Option<SessionRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT user_id, device_id, device_name, revoked_at_ms IS NOT NULL, created_at_ms FROM sessions
                 WHERE token_hash = $1",
                &[&token_hash.0.as_slice()],
            )
            .await?;
            rows.first()
                .map(|r| {
                    Ok(SessionRecord {
                        user_id: UserId(parse_uuid(r.get(0))?),
                        device_id: DeviceId(parse_uuid(r.get(1))?),
                        device_name: r.get(2),
                        revoked: r.get(3),
                        created_at: Millis(r.get::<_, i64>(4) as u64),
                    })
                })
                .transpose()
        })
        .await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationState>, StoreError> {
        self.read(|conn| async move { load_conversation(&conn, &id.to_string()).await }).await
    }

    async fn membership(&self, id: ConversationId, user: UserId) -> Result<Option<Membership>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT role, left_seq FROM members WHERE conversation_id = $1 AND user_id = $2",
                &[&id.to_string(), &user.to_string()],
            )
            .await?;
            let Some(row) = rows.first() else { return Ok(None) };
            Ok(Some(match row.get::<_, Option<i64>>(1) {
                Some(left) => Membership::Former { left_at: Seq(left as u64) },
                None => Membership::Active(parse_role(row.get(0))?),
            }))
        })
        .await
    }

    async fn conversations_for_user(
        &self,
        user: UserId,
        before: Option<Position>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read(|conn| async move { load_summaries(&conn, user, Summaries::Page { before, limit }).await }).await
    }

    async fn conversation_summary(
        &self,
        user: UserId,
        id: ConversationId,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        self.read(|conn| async move { Ok(load_summaries(&conn, user, Summaries::One(id)).await?.pop()) }).await
    }

    async fn readable_conversations(&self, user: UserId) -> Result<Vec<ReadableConversation>, StoreError> {
        self.read(|conn| async move {
            let rows = conn.query(&format!("{SELECT_READABLE} WHERE m.user_id = $1"), &[&user.to_string()]).await?;
            rows.iter()
                .map(|r| {
                    Ok(ReadableConversation {
                        conversation: ConversationId(parse_uuid(r.get(0))?),
                        name: r.get(1),
                        left_at: r.get::<_, Option<i64>>(2).map(|l| Seq(l as u64)),
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
        self.read(|conn| async move {
            let upto = visible_upto.map_or(i64::MAX, |s| s.0 as i64);
            let (sql, bound, limit, newest_first) = page.query('$');
            let rows = cached_query(
                &conn,
                &format!("{SELECT_MESSAGE} {sql}"),
                &[&id.to_string(), &(bound as i64), &(i64::from(limit) + 1), &upto],
            )
            .await?;
            let msgs = rows.iter().map(row_to_message).collect::<Result<Vec<_>, _>>()?;
            Ok(HistoryPage::finish(msgs, limit, newest_first))
        })
        .await
    }

    async fn retention_of(&self, id: ConversationId) -> Result<u64, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT retention_secs FROM conversations WHERE conversation_id = $1",
                &[&id.to_string()],
            )
            .await?;
            Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
        .await
    }

    async fn retention_limits(&self, every: bool) -> Result<Vec<(ConversationId, u64)>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT conversation_id, retention_secs FROM conversations WHERE $1 OR retention_secs > 0
                 ORDER BY conversation_id",
                &[&every],
            )
            .await?;
            rows.iter().map(|r| Ok((ConversationId(parse_uuid(r.get(0))?), r.get::<_, i64>(1) as u64))).collect()
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
        self.read(|conn| async move {
            let sql = format!(
                "{SELECT_MESSAGE} WHERE conversation_id = $1 AND sent_at_ms < $2 AND seq > $3
                 AND content_kind <> 'erased' ORDER BY seq LIMIT $4"
            );
            let params: Params<'_> = &[&id.to_string(), &(before.0 as i64), &(after.0 as i64), &i64::from(limit)];
            cached_query(&conn, &sql, params).await?.iter().map(row_to_message).collect()
        })
        .await
    }

    async fn message(&self, id: ConversationId, seq: Seq) -> Result<Option<MessageRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                &format!("{SELECT_MESSAGE} WHERE conversation_id = $1 AND seq = $2"),
                &[&id.to_string(), &(seq.0 as i64)],
            )
            .await?;
            rows.first().map(row_to_message).transpose()
        })
        .await
    }

    async fn receipt(&self, id: ConversationId, user: UserId) -> Result<ReceiptRecord, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT delivered_seq, read_seq FROM receipts WHERE conversation_id = $1 AND user_id = $2",
                &[&id.to_string(), &user.to_string()],
            )
            .await?;
            let (delivered, read) = rows.first().map_or((0, 0), |r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
            Ok(ReceiptRecord { user, delivered: Seq(delivered as u64), read: Seq(read as u64) })
        })
        .await
    }

    async fn receipts(&self, id: ConversationId) -> Result<Vec<ReceiptRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT user_id, delivered_seq, read_seq FROM receipts WHERE conversation_id = $1 ORDER BY user_id",
                &[&id.to_string()],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ReceiptRecord {
                        user: UserId(parse_uuid(r.get(0))?),
                        delivered: Seq(r.get::<_, i64>(1) as u64),
                        read: Seq(r.get::<_, i64>(2) as u64),
                    })
                })
                .collect()
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.read(|conn| async move {
            let row = conn
                .query_one(
                    "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM users),
                            (SELECT COUNT(*) FROM conversations), (SELECT COUNT(*) FROM messages),
                            (SELECT COALESCE(MAX(position), 0) FROM events)",
                    &[],
                )
                .await?;
            let n = |i: usize| row.get::<_, i64>(i) as u64;
            Ok(StoreStats { events: n(0), users: n(1), conversations: n(2), messages: n(3), head: n(4) })
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        // An empty write transaction through the writer: lock, commit.
        self.write_plain(Work::Append(Vec::new())).await
    }

    async fn set_last_seen(&self, user: UserId, at: Millis) -> Result<(), StoreError> {
        self.write_plain(Work::LastSeen(user, at)).await
    }

    async fn presence_info(&self, users: Vec<UserId>) -> Result<Vec<PresenceRecord>, StoreError> {
        let users = &users;
        self.read(|conn| async move {
            // One round trip for all of them, planned for this array (not a
            // generic plan that may compare every row with every id).
            let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
            let rows = conn
                .query_typed(
                    "SELECT u.user_id, u.hide_last_seen, l.last_seen_ms FROM users u
                     LEFT JOIN last_seen l ON l.user_id = u.user_id WHERE u.user_id = ANY($1)",
                    &[(&ids, Type::TEXT_ARRAY)],
                )
                .await?;
            let mut found = HashMap::with_capacity(rows.len());
            for r in &rows {
                let seen: Option<i64> = r.get(2);
                found.insert(UserId(parse_uuid(r.get(0))?), (r.get::<_, bool>(1), seen.map(|s| Millis(s as u64))));
            }
            // In the order asked (as the embedded store answers); unknown users left out.
            Ok(users
                .iter()
                .filter_map(|&user| {
                    let &(hide_last_seen, last_seen) = found.get(&user)?;
                    Some(PresenceRecord { user, last_seen, hide_last_seen })
                })
                .collect())
        })
        .await
    }

    async fn contacts(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(
                &conn,
                "SELECT DISTINCT other.user_id FROM members me
                 JOIN members other ON other.conversation_id = me.conversation_id
                 WHERE me.user_id = $1 AND me.left_seq IS NULL AND other.left_seq IS NULL AND other.user_id <> $1",
                &[&user.to_string()],
            )
            .await?;
            rows.iter().map(|r| parse_uuid(r.get(0)).map(UserId)).collect()
        })
        .await
    }

    async fn share_conversation(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_SHARE_CONVERSATION, &[&a.to_string(), &b.to_string()]).await?;
            Ok(!rows.is_empty())
        })
        .await
    }

    async fn device_keys(&self, user: UserId) -> Result<Vec<DeviceKeyRecord>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, SELECT_DEVICE_KEYS, &[&user.to_string()]).await?;
            rows.iter().map(|r| device_key(r.get(0), r.get(1), r.get(2))).collect()
        })
        .await
    }

    async fn push_targets(
        &self,
        conversation: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<PushTarget>, StoreError> {
        let (conv, ids) = (conversation.to_string(), users.iter().map(ToString::to_string).collect::<Vec<_>>());
        let (conv, ids) = (&conv, &ids);
        self.read(|conn| async move {
            let rows = conn
                .query_typed(
                    "SELECT s.user_id, s.device_id, s.endpoint, s.p256dh, s.auth, u.push_show_text,
                            m.conversation_id, m.until_ms
                     FROM push_subscriptions s JOIN users u ON u.user_id = s.user_id
                     LEFT JOIN push_mutes m ON m.user_id = s.user_id AND m.conversation_id = $1
                     WHERE s.user_id = ANY($2) ORDER BY s.user_id, s.device_id",
                    &[(conv, Type::TEXT), (ids, Type::TEXT_ARRAY)],
                )
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let muted: Option<String> = r.get(6);
                let until: Option<i64> = r.get(7);
                out.push(PushTarget {
                    subscription: PushSubscriptionRecord {
                        user: UserId(parse_uuid(r.get(0))?),
                        device: DeviceId(parse_uuid(r.get(1))?),
                        endpoint: r.get(2),
                        p256dh: r.get(3),
                        auth: r.get(4),
                    },
                    show_text: r.get(5),
                    muted_until: muted.map(|_| until.map(|u| Millis(u as u64))),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn push_settings(&self, user: UserId, device: DeviceId) -> Result<PushSettings, StoreError> {
        let (user_s, device_s) = (user.to_string(), device.to_string());
        let (user_s, device_s) = (&user_s, &device_s);
        self.read(|conn| async move {
            let show_text = cached_query(&conn, "SELECT push_show_text FROM users WHERE user_id = $1", &[user_s])
                .await?
                .first()
                .is_none_or(|r| r.get::<_, bool>(0));
            let mut muted = Vec::new();
            for r in cached_query(
                &conn,
                "SELECT conversation_id, until_ms FROM push_mutes WHERE user_id = $1 ORDER BY conversation_id",
                &[user_s],
            )
            .await?
            {
                let until: Option<i64> = r.get(1);
                muted.push((ConversationId(parse_uuid(r.get(0))?), until.map(|u| Millis(u as u64))));
            }
            let subscription = cached_query(
                &conn,
                "SELECT endpoint, p256dh, auth FROM push_subscriptions WHERE device_id = $1 AND user_id = $2",
                &[device_s, user_s],
            )
            .await?
            .first()
            .map(|r| PushSubscriptionRecord {
                user,
                device,
                endpoint: r.get(0),
                p256dh: r.get(1),
                auth: r.get(2),
            });
            Ok(PushSettings { show_text, muted, subscription })
        })
        .await
    }

    async fn follower_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: Duration,
        advance: Option<Position>,
    ) -> Result<Option<Position>, StoreError> {
        let until = now.0.saturating_add(ttl.as_millis() as u64) as i64;
        let (advance, now) = (advance.unwrap_or(0) as i64, now.0 as i64);
        self.read(|conn| async move {
            // One statement, so atomic on its own: two nodes racing for an
            // expired lease serialize on the row, and one of them wins.
            let rows = cached_query(&conn, super::FOLLOWER_LEASE, &[&name, &holder, &until, &advance, &now]).await?;
            Ok(rows.first().map(|r| r.get::<_, i64>(0) as Position))
        })
        .await
    }

    async fn last_seen_all(&self) -> Result<Vec<(UserId, Millis)>, StoreError> {
        self.read(|conn| async move {
            let rows = cached_query(&conn, "SELECT user_id, last_seen_ms FROM last_seen ORDER BY user_id", &[]).await?;
            rows.iter().map(|r| Ok((UserId(parse_uuid(r.get(0))?), Millis(r.get::<_, i64>(1) as u64)))).collect()
        })
        .await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), StoreError> {
        self.write_plain(Work::Import(events)).await
    }

    async fn rebuild(&self) -> Result<(), StoreError> {
        self.write_plain(Work::Rebuild).await
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        self.cluster.clone().map(|c| c as Arc<dyn Cluster>)
    }

    async fn shutdown(&self) {
        // Dropping the sender lets the writer finish what is queued and stop.
        self.writer.lock().expect("writer lock").take();
        let writer = self.writer_task.lock().expect("writer task lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.stop.cancel();
        let tasks: Vec<_> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.leave().await {
                tracing::warn!(error = %e, "could not leave the cluster cleanly; other nodes expire this one");
            }
        }
        self.pool.close();
    }
}

/// A media row (the columns of `media_columns!`).
fn pg_media_row(r: &tokio_postgres::Row) -> MediaRow {
    MediaRow {
        id: r.get(0),
        uploader: r.get(1),
        conversation: r.get(2),
        sha256: r.get(3),
        size: r.get(4),
        mime_type: r.get(5),
        file_name: r.get(6),
        width: i64::from(r.get::<_, i32>(7)),
        height: i64::from(r.get::<_, i32>(8)),
        uploaded_at: r.get(9),
        first_seq: r.get(10),
        preview: r.get(11),
        preview_of: r.get(12),
        duration_ms: r.get(13),
    }
}
