//! natter-server: the library behind `natterd`.
//!
//! Data flows one way: `transport` (quinn, one task per connection) → `session`
//! (authenticated state, dispatch) → `domain` (pure rules) → `store` (log + read
//! models) → `projection` (router fan-out) → back to `transport` for delivery.
//! `auth`, `tls` and `config` are siblings. See ARCHITECTURE.md.

pub mod auth;
pub mod blob;
pub mod cli;
pub mod config;
pub mod domain;
pub mod media;
pub mod metrics;
pub mod mls;
pub mod projection;
pub mod push;
pub mod retention;
pub mod search;
pub mod session;
pub mod store;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreBackend};
use crate::store::postgres::{PostgresConfig, PostgresStore};
use crate::store::sqlite::{SqliteConfig, SqliteStore};
use crate::store::{CommitHook, Store};

/// Why natterd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The cause is the source, not in the message: error reports print the
    // chain once (`Caused by:`), not twice.
    #[error("data directory {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("data directory {0} is in use by another natterd")]
    DataDirInUse(PathBuf),
    #[error("TLS")]
    Tls(#[from] tls::TlsError),
    #[error("store")]
    Store(#[from] store::StoreError),
    #[error("store.backend \"postgres\" needs store.url")]
    NoStoreUrl,
    #[error("auth")]
    Auth(#[from] auth::AuthError),
    #[error("transport")]
    Transport(#[from] transport::TransportError),
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    #[error("server key")]
    ServerKey(#[from] auth::server_key::ServerKeyError),
    #[error(
        "the server key is not this deployment's (auth.secret_key_file, or <data_dir>/secret.key, differs from \
         the one that sealed its TOTP secrets and codes): restore the original key, and give every node on a \
         shared database the same auth.secret_key_file; natterd will not start and silently turn two-factor \
         sign-in off"
    )]
    WrongServerKey,
    #[error("mail")]
    Mail(#[from] auth::mail::MailConfigError),
    #[error("sms")]
    Sms(#[from] auth::sms::SmsConfigError),
    #[error("sign-in providers: {0}")]
    OAuth(String),
    #[error("media store: {0}")]
    Blob(#[from] blob::BlobConfigError),
    #[error("search: {0}")]
    Search(#[from] search::SearchError),
    #[error("push: {0}")]
    Push(String),
    #[error(
        "data directory {0} holds load-test data (it has {LOAD_TEST_MARKER}): start natterd --load-test on it, or \
         use another --data-dir for people"
    )]
    LoadTestData(PathBuf),
    #[error(
        "--load-test needs a data directory of its own, and {0} already holds other data: use \
         --data-dir on an empty or new directory"
    )]
    NotLoadTestData(PathBuf),
}

/// The file that marks a data directory as a load-test one.
pub const LOAD_TEST_MARKER: &str = "LOAD-TEST";

/// Keeps load-test data and people's data apart: `--load-test` marks a new
/// (or empty) data directory and refuses any other; an ordinary natterd
/// refuses a marked one.
fn check_load_test_dir(data_dir: &std::path::Path, load_test: bool) -> Result<(), StartError> {
    let marker = data_dir.join(LOAD_TEST_MARKER);
    let dir_err = |source| StartError::DataDir { path: data_dir.to_owned(), source };
    let marked = marker.exists();
    match (load_test, marked) {
        (false, true) => Err(StartError::LoadTestData(data_dir.to_owned())),
        (false, false) | (true, true) => Ok(()),
        (true, false) => {
            let holds_data = std::fs::read_dir(data_dir)
                .map_err(dir_err)?
                .filter_map(Result::ok)
                .any(|entry| entry.file_name() != DATA_DIR_LOCK);
            if holds_data {
                return Err(StartError::NotLoadTestData(data_dir.to_owned()));
            }
            std::fs::write(&marker, "natterd --load-test data: users and messages made by natter-loadgen\n")
                .map_err(dir_err)
        }
    }
}

/// A started natterd: serving until [`RunningServer::shutdown`].
pub struct RunningServer {
    local_addr: SocketAddr,
    fingerprint: String,
    cert_path: PathBuf,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `sha256:<hex>` of the server certificate, for clients to pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The PEM chain served (leaf first).
    pub fn cert_path(&self) -> &PathBuf {
        &self.cert_path
    }

    /// Where `/metrics` and `/healthz` are served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// A token that triggers graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, drains connections, flushes the log, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the server has stopped (after its shutdown token fired).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The file natterd holds an exclusive lock on while it runs.
pub const DATA_DIR_LOCK: &str = "natterd.lock";

/// Takes the data directory's lock (`natterd.lock`): `None` when another
/// process holds it. The operating system releases it when the holder exits,
/// however it exits.
///
/// # Errors
/// When the lock file cannot be opened.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<Option<std::fs::File>, StartError> {
    let path = data_dir.join(DATA_DIR_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir { path, source }),
    }
}

/// Starts natterd with `config` on the current tokio runtime.
///
/// # Errors
/// When the data directory, certificate, store or socket cannot be set up.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let data_dir = &config.data_dir;
    let dir_err = |source| StartError::DataDir { path: data_dir.clone(), source };
    if !data_dir.exists() {
        // It will hold password hashes and keys: owner only.
        std::fs::create_dir_all(data_dir).map_err(dir_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
    }
    let lock = lock_data_dir(data_dir)?.ok_or_else(|| StartError::DataDirInUse(data_dir.clone()))?;
    check_load_test_dir(data_dir, config.load_test)?;
    let mut login_guard = config.auth.guard();
    if config.load_test {
        // Hundreds of users sign in from the load generator's one address.
        login_guard.attempts_per_minute = u32::MAX;
        tracing::warn!(data_dir = %data_dir.display(), "load-test mode: no per-address sign-in limit; never serve people from it");
    }
    let identity = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => tls::load(cert, key)?,
        _ => tls::load_or_generate(&data_dir.join("tls"), &config.tls.names)?,
    };
    let fingerprint = identity.fingerprint();
    let cert_path = identity.cert_path.clone();

    let metrics = metrics::Metrics::new();
    metrics.watch_data_dir(data_dir);
    let m = metrics.clone();
    let on_commit: CommitHook = Arc::new(move |s| m.committed(s.jobs, s.events, s.messages, s.took, s.commit_took));
    let store: Arc<dyn Store> = match config.store.backend {
        StoreBackend::Postgres => {
            let url = config.store.url.as_deref().ok_or(StartError::NoStoreUrl)?;
            let mut pg = PostgresConfig::new(url);
            pg.readers = config.store.readers;
            pg.max_batch = config.store.max_batch;
            pg.on_commit = Some(on_commit);
            Arc::new(PostgresStore::open(&pg).await?)
        }
        StoreBackend::Sqlite => {
            let mut sqlite = SqliteConfig::in_dir(data_dir);
            sqlite.readers = config.store.readers;
            sqlite.max_batch = config.store.max_batch;
            sqlite.on_commit = Some(on_commit);
            Arc::new(SqliteStore::open(&sqlite)?)
        }
    };
    let hasher = auth::PasswordHasherArgon2::new(config.auth.argon2())?;
    let server_key =
        Arc::new(auth::server_key::ServerKey::load_or_generate(data_dir, config.auth.secret_key_file.as_deref())?);
    let auth_state: Arc<dyn store::auth_state::AuthState> = match config.store.backend {
        StoreBackend::Postgres => Arc::new(store::auth_state::postgres::PostgresAuthState::new(
            config.store.url.as_deref().ok_or(StartError::NoStoreUrl)?,
        )?),
        StoreBackend::Sqlite => Arc::new(store::auth_state::sqlite::SqliteAuthState::open(data_dir)?),
    };
    let key_packages: Arc<dyn mls::KeyPackageStore> = match config.store.backend {
        StoreBackend::Postgres => Arc::new(mls::postgres::PostgresKeyPackages::new(
            config.store.url.as_deref().ok_or(StartError::NoStoreUrl)?,
        )?),
        StoreBackend::Sqlite => Arc::new(mls::sqlite::SqliteKeyPackages::open(data_dir)?),
    };
    if !auth_state.check_key_id(&server_key.key_id()).await? {
        return Err(StartError::WrongServerKey);
    }
    let mailer = auth::mail::mailer(&config.mail)?;
    let sms = auth::sms::sms_provider(&config.sms)?;
    let oauth = auth::oauth::Providers::from_config(&config.google, &config.github).map_err(StartError::OAuth)?;
    let blobs = blob::open(&config.blob, &config.data_dir)?;

    let shutdown = CancellationToken::new();
    let tracks_activity = config.push.enabled && config.push.idle_after_ms > 0;
    let router = projection::router::Router::spawn(store.clone(), shutdown.clone(), metrics.clone(), tracks_activity);
    let metrics_addr = match config.metrics.listen {
        Some(listen) => {
            let r = router.clone();
            let queued: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || r.queued());
            let addr = metrics::serve(listen, metrics.clone(), store.clone(), queued, shutdown.clone())
                .await
                .map_err(StartError::Metrics)?;
            Some(addr)
        }
        None => None,
    };
    let (search, indexer) =
        match search::start(&config.search, data_dir, store.clone(), shutdown.clone(), metrics.clone()).await? {
            Some((handle, task)) => (Some(handle), Some(task)),
            None => (None, None),
        };
    let push = if config.push.enabled {
        config.push.validate().map_err(StartError::Push)?;
        let vapid = Arc::new(
            push::vapid::VapidKey::load(config.push.vapid_key_file.as_deref(), &server_key)
                .map_err(|e| StartError::Push(e.to_string()))?,
        );
        let service = push::webpush::WebPush::new(
            vapid.clone(),
            config.push.subject.clone(),
            Duration::from_millis(config.push.request_timeout_ms.max(1)),
        )
        .map_err(StartError::Push)?;
        let worker = push::worker::Worker::new(
            store.clone(),
            Arc::new(service),
            router.clone(),
            config.push.clone(),
            push_holder(data_dir),
            metrics.clone(),
        );
        tokio::spawn(worker.run(shutdown.clone()));
        Some(session::push::PushSetup { vapid, allow_http_loopback: config.push.allow_http_loopback })
    } else {
        None
    };
    let (session_idle, session_lifetime) = config.auth.session_limits();
    let service = session::Service::new(
        store.clone(),
        hasher,
        router,
        session::ServiceConfig {
            server_name: config.server_name.clone(),
            max_frame_bytes: config.max_frame_bytes,
            outbound_queue: config.delivery.outbound_queue,
            max_group_members: config.max_group_members,
            typing_ttl_ms: config.ephemeral.typing_ttl_ms,
            typing_per_second: config.ephemeral.typing_per_second,
            typing_burst: config.ephemeral.typing_burst,
            login_guard,
            session_idle,
            session_lifetime,
            retention_max_age_secs: config.retention.max_age_secs,
        },
        session::Security { auth_state: auth_state.clone(), server_key, mailer, sms, oauth },
        session::Capabilities {
            media: session::media::MediaService::new(blobs.clone(), config.media.clone(), metrics.clone()),
            search,
            push,
            mls: session::mls::MlsSetup { key_packages: key_packages.clone(), config: config.mls.clone() },
            admin: session::admin::AdminSetup {
                bootstrap: config.admin.bootstrap.iter().filter_map(|e| domain::Email::parse(e).ok()).collect(),
                require_totp: config.admin.require_totp,
                started: std::time::Instant::now(),
                metrics: metrics.clone(),
                store_kind: match config.store.backend {
                    StoreBackend::Sqlite => "sqlite",
                    StoreBackend::Postgres => "postgres",
                },
            },
        },
    );
    // The load generator opens thousands of connections, flat out, from one address.
    let unlimited = config.load_test;
    let transport_config = transport::TransportConfig {
        max_connections: config.max_connections,
        max_frame_bytes: config.max_frame_bytes,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        max_per_address: (config.max_connections_per_address > 0 && !unlimited)
            .then_some(config.max_connections_per_address),
        retry_above_handshakes: config.retry_above_handshakes,
        request_rate: (config.requests_per_second > 0.0 && !unlimited)
            .then_some((config.requests_per_second, config.request_burst)),
    };
    let endpoint = transport::endpoint(identity, config.listen, &transport_config)?;
    let local_addr = endpoint.local_addr().map_err(transport::TransportError::Bind)?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    tokio::spawn(sweep_auth_state(auth_state, shutdown.clone()));
    tokio::spawn(sweep_key_packages(key_packages, shutdown.clone()));
    tokio::spawn(sweep_stale_uploads(blobs.clone(), shutdown.clone()));
    tokio::spawn(retention::every_interval(
        store.clone(),
        blobs.clone(),
        config.retention.clone(),
        shutdown.clone(),
        metrics.clone(),
    ));
    tokio::spawn(media::gc::every_interval(
        store.clone(),
        blobs,
        config.media.clone(),
        shutdown.clone(),
        metrics.clone(),
    ));
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        // Held until the log is closed: one natterd per data directory.
        let _lock = lock;
        transport::serve(endpoint.clone(), service.clone(), transport_config, token, grace, metrics).await;
        // Every connection is closed; what their sessions left behind (users'
        // last-seen times) goes to the log before it is flushed and closed.
        service.drain_background(grace.max(Duration::from_secs(1))).await;
        // The search projection commits what it indexed (or indexes it again
        // from its checkpoint at the next start).
        if let Some(indexer) = indexer {
            let _ = tokio::time::timeout(Duration::from_secs(5), indexer).await;
        }
        store.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        tracing::info!("natterd stopped");
    });
    Ok(RunningServer { local_addr, fingerprint, cert_path, metrics_addr, shutdown, task })
}

/// Who holds the push worker's lease: this host and data directory, the same
/// after a restart (which so takes its own lease back at once).
fn push_holder(data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into());
    let dir = data_dir.canonicalize().unwrap_or_else(|_| data_dir.to_owned());
    format!("{}:{}", host.trim(), dir.display())
}

/// Drops the short-lived auth state that can no longer matter (expired codes
/// and challenges, old counters) at start and every 10 minutes, until shutdown.
/// Every node does it; the deletes are idempotent.
async fn sweep_auth_state(state: Arc<dyn store::auth_state::AuthState>, shutdown: CancellationToken) {
    sweep_every(Duration::from_secs(600), shutdown, "expired auth state", move |now| {
        let state = state.clone();
        async move { state.sweep(now).await }
    })
    .await;
}

/// Drops expired KeyPackages at start and every hour, until shutdown. Every
/// node does it; the deletes are idempotent.
async fn sweep_key_packages(store: Arc<dyn mls::KeyPackageStore>, shutdown: CancellationToken) {
    sweep_every(Duration::from_secs(3600), shutdown, "expired KeyPackages", move |now| {
        let store = store.clone();
        async move { store.sweep(now).await }
    })
    .await;
}

/// Runs `sweep` (given the time) at start and every `interval` until shutdown,
/// logging what it removed.
async fn sweep_every<F, Fut>(interval: Duration, shutdown: CancellationToken, what: &str, sweep: F)
where
    F: Fn(domain::Millis) -> Fut,
    Fut: std::future::Future<Output = Result<u64, store::StoreError>>,
{
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                match sweep(domain::Millis(now)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "{what} swept"),
                    Err(e) => tracing::warn!(error = %e, "{what} not swept"),
                }
            }
        }
    }
}

/// Drops uploads nobody finished within `blob.partial_ttl_secs`, every 10
/// minutes until shutdown.
async fn sweep_stale_uploads(blobs: Arc<dyn blob::BlobStore>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => match blobs.sweep_stale_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "stale uploads removed"),
                Err(e) => tracing::warn!(error = %e, "stale uploads not swept"),
            },
        }
    }
}
