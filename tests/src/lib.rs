//! The harness of natter's integration tests: real natterd servers on
//! 127.0.0.1:0 with their own temporary data directories, in-process or as child
//! processes, and helpers to make signed-in clients. Nothing is shared between
//! tests, so they run in parallel.

pub mod github_fake;
mod http_fake;
pub mod oidc_provider;
pub mod push_service;
pub mod seaweed;
pub mod smtp_sink;
pub mod twilio_fake;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use natter_client::{Client, ClientConfig, Feed, FeedItem, Trust};
use natter_server::config::Config;
use natter_server::RunningServer;

/// Accepts TCP connections for a harness server (the SMTP sink, the Twilio
/// fake): at most `max` at once, each served by `serve` on its own task, all
/// aborted when the returned future is dropped. A client that goes away
/// mid-session is not the server's problem.
pub(crate) async fn accept_loop<F, Fut>(listener: tokio::net::TcpListener, max: usize, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let served = serve(stream);
        connections.spawn(async move {
            let _slot = slot;
            served.await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// The TOTP secret an authenticator app reads from a typed key (RFC 4648
/// base32, upper case, no padding; spaces ignored), to compute codes as the
/// app would.
pub fn totp_secret(base32: &str) -> natter_server::auth::totp::TotpSecret {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut value, mut out) = (0u32, 0u32, Vec::new());
    for c in base32.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let digit = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase()).expect("a base32 character");
        value = (value << 5) | digit as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((value >> bits) as u8);
            value &= (1 << bits) - 1;
        }
    }
    natter_server::auth::totp::TotpSecret::from_bytes(&out).expect("a 160-bit secret")
}

impl TestServer {
    /// natterd mailing through a fresh SMTP sink (the default console
    /// provider writes codes to natterd's log, which a test cannot read).
    pub async fn start_with_mail() -> (Self, smtp_sink::SmtpSink) {
        let sink = smtp_sink::SmtpSink::start(smtp_sink::SinkConfig::default()).await;
        let mail = sink.mail_config();
        (Self::start_with(move |c| c.mail = mail).await, sink)
    }
}

/// An HTTP client as the harness builds them: rustls with ring (no roots:
/// the test servers speak plain HTTP on loopback), redirects not followed,
/// a browser's name.
pub fn http_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .user_agent("Mozilla/5.0 (natter tests)")
        .build()
        .expect("http client")
}

/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// The configuration tests start natterd with: a free port, and cheap argon2
/// parameters (tests exercise the real hashing path, just faster).
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::load(None, Vec::new()).expect("default config");
    config.data_dir = data_dir.to_owned();
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.auth.argon2_memory_kib = Some(256);
    config.auth.argon2_iterations = Some(1);
    // Every test client comes from 127.0.0.1: the per-address limit is tested on its own.
    config.auth.attempts_per_minute = Some(100_000);
    config.shutdown_grace_ms = 2_000;
    config
}

/// Environment for a natterd child process: the same cheap hashing.
pub const CHILD_ENV: &[(&str, &str)] = &[
    ("NATTER_AUTH_ARGON2_MEMORY_KIB", "256"),
    ("NATTER_AUTH_ARGON2_ITERATIONS", "1"),
    ("NATTER_AUTH_ATTEMPTS_PER_MINUTE", "100000"),
    ("NATTER_LOG", "warn"),
];

/// natterd running inside the test process.
pub struct TestServer {
    server: Option<RunningServer>,
    /// What it was started with (a restart reuses it: same store, same tweaks).
    config: Config,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    fingerprint: String,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test config adjusted by `tweak`.
    /// Starts on a PostgreSQL database (several may share one: a cluster).
    pub async fn start_postgres(db: &PgDatabase) -> Self {
        Self::start_postgres_with(db, |_| {}).await
    }

    /// A node on `db` (with the database's shared server key), adjusted by `tweak`.
    pub async fn start_postgres_with(db: &PgDatabase, tweak: impl FnOnce(&mut Config)) -> Self {
        let url = db.url().to_owned();
        let key = db.secret_key_file();
        Self::start_with(move |c| {
            c.store.backend = natter_server::config::StoreBackend::Postgres;
            c.store.url = Some(url);
            c.auth.secret_key_file = Some(key);
            tweak(c);
        })
        .await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let server = natter_server::start(config.clone()).await.expect("natterd starts");
        Self {
            addr: server.local_addr(),
            fingerprint: server.fingerprint().to_owned(),
            server: Some(server),
            config,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where `/metrics` is served, when the test enabled it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(RunningServer::metrics_addr)
    }

    /// What it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, Trust::pin(&self.fingerprint).expect("pin"))
    }

    /// A connected, signed-out client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.client_config()).await.expect("connect")
    }

    /// Signs `email` up and returns a signed-in client plus its session token.
    pub async fn new_user(&self, email: &str) -> (Client, String) {
        let c = self.client().await;
        c.signup(email, PASSWORD, "").await.expect("signup");
        let (token, _) = c.login(email, PASSWORD, "device-1").await.expect("login");
        (c, token)
    }

    /// Another device of an existing user: a fresh login.
    pub async fn new_device(&self, email: &str, device: &str) -> (Client, String) {
        let c = self.client().await;
        let (token, _) = c.login(email, PASSWORD, device).await.expect("login");
        (c, token)
    }

    /// A connection resuming `token`.
    pub async fn resume(&self, token: &str) -> Client {
        let mut config = self.client_config();
        config.session_token = Some(token.to_owned());
        Client::connect(&config).await.expect("resume")
    }

    /// Graceful stop; the data directory stays until the value is dropped.
    /// Graceful stop; returns once the data directory's lock is free (what
    /// comes next, natterd or `natter-admin`, may take it at once).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
            wait_until_free(&self.config.data_dir).await;
        }
    }

    /// Stops gracefully and starts again with the same configuration (data
    /// directory, store) on the same port when it can be had again: the tests
    /// of one binary share the machine's ports, and another test's bind to an
    /// ephemeral port can take the one just released. natterd then restarts on
    /// a fresh port, and [`TestServer::addr`] says which.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut config = self.config.clone();
        config.listen = self.addr;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let server = loop {
            match start_when_free(config.clone()).await {
                Err(natter_server::StartError::Transport(natter_server::transport::TransportError::Bind(e)))
                    if e.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        eprintln!("port {} was taken while natterd was stopped: restarting on another", self.addr);
                        config.listen.set_port(0);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                started => break started.expect("natterd restarts"),
            }
        };
        assert_eq!(server.fingerprint(), self.fingerprint, "the certificate is kept across restarts");
        self.addr = server.local_addr();
        self.server = Some(server);
    }
}

/// `natter_server::start` on a data directory an in-process natterd of this
/// test just released. Its lock is closed, but a child process that another
/// test forks at that moment shares the lock's open file until it execs
/// (close-on-exec), so the lock can outlive the stop by a moment; nothing
/// signals its release, so this waits for it, for at most 5 s.
///
/// # Errors
/// Whatever `start` says once the directory is free (or still in use after 5 s).
pub async fn start_when_free(config: Config) -> Result<RunningServer, natter_server::StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match natter_server::start(config.clone()).await {
            Err(natter_server::StartError::DataDirInUse(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            started => return started,
        }
    }
}

/// Waits (at most 5 s) until no process holds `data_dir`'s lock: a stopped
/// in-process natterd's lock can outlive it while a child process another test
/// forked shares its open file (see [`start_when_free`]).
async fn wait_until_free(data_dir: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if matches!(natter_server::lock_data_dir(data_dir), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// natterd as a child process (for crash tests), killed on drop.
pub struct ChildServer {
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl ChildServer {
    /// Starts `natterd --data-dir DIR --listen ADDR` and waits for its
    /// "natterd listening on ADDR fingerprint FP" line.
    /// `natterd` is the binary (the test target passes its
    /// `CARGO_BIN_EXE_natterd-under-test`, which only test targets can see).
    pub fn spawn(natterd: &Path, data_dir: &Path, listen: SocketAddr) -> Self {
        Self::spawn_with_env(natterd, data_dir, listen, &[])
    }

    /// [`ChildServer::spawn`] with more environment (e.g. `NATTER_STORE_URL`).
    pub fn spawn_with_env(natterd: &Path, data_dir: &Path, listen: SocketAddr, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(natterd);
        // natterd reads `NATTER_*` variables as configuration: the child gets
        // only the ones the test names, never the developer's or CI's.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("NATTER_") && n != "NATTER_LOG") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("--data-dir").arg(data_dir).arg("--listen").arg(listen.to_string());
        for (k, v) in CHILD_ENV.iter().chain(env) {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn natterd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read natterd's first line");
        let (addr, fingerprint) =
            parse_listening_line(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self { child, addr, fingerprint }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, Trust::pin(&self.fingerprint).expect("pin"))
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill natterd");
        self.child.wait().expect("reap natterd");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
        self.child.wait().expect("wait natterd")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses "natterd listening on ADDR fingerprint FP".
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.trim().strip_prefix("natterd listening on ")?;
    let (addr, fp) = rest.split_once(" fingerprint ")?;
    Some((addr.parse().ok()?, fp.to_owned()))
}

/// Reads feed items until `pred` says stop, failing after `timeout` (a
/// deadline on the wait for an event, not a sleep).
/// Waits until `observer` sees `user_id` offline (natterd has handled the
/// close of their last connection), or panics after 20 s.
pub async fn wait_offline(observer: &Client, user_id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while observer.presence(&[user_id]).await.expect("presence").iter().any(|p| p.online) {
        assert!(tokio::time::Instant::now() < deadline, "{user_id} still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn feed_until(feed: &mut Feed, timeout: Duration, mut pred: impl FnMut(&FeedItem) -> bool) -> Vec<FeedItem> {
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let item = tokio::time::timeout_at(deadline, feed.next())
            .await
            .unwrap_or_else(|_| panic!("feed: no matching event in {timeout:?}; got {items:#?}"))
            .expect("feed ended")
            .expect("feed error");
        let stop = pred(&item);
        items.push(item);
        if stop {
            return items;
        }
    }
}

/// The texts of the message items, in order.
pub fn texts(items: &[FeedItem]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            FeedItem::Message { message, .. } => text_of(message),
            _ => None,
        })
        .collect()
}

/// Every file under `dir` (recursively) whose bytes contain `needle`: how the
/// end-to-end encryption tests show natterd's files never held a plaintext.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// The texts of messages (a history page), in order.
pub fn message_texts(messages: &[natter_client::proto::Message]) -> Vec<String> {
    messages.iter().filter_map(text_of).collect()
}

fn text_of(message: &natter_client::proto::Message) -> Option<String> {
    match message.content.as_ref()?.body.as_ref()? {
        natter_client::proto::content::Body::Text(t) => Some(t.body.clone()),
        natter_client::proto::content::Body::Media(_)
        | natter_client::proto::content::Body::Mls(_)
        | natter_client::proto::content::Body::MlsCommit(_)
        | natter_client::proto::content::Body::Erased(_) => None,
    }
}

/// The PostgreSQL server tests use: `NATTERTEST_PG_URL`, else the local one.
fn pg_base_url() -> String {
    std::env::var("NATTERTEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether a missing PostgreSQL fails the tests (CI) instead of skipping them.
fn pg_required() -> bool {
    std::env::var_os("NATTERTEST_REQUIRE_PG").is_some_and(|v| v != "0")
}

/// A fresh PostgreSQL database for one test, dropped when the value is.
pub struct PgDatabase {
    url: String,
    name: String,
    /// The server key every node on this database shares (as an operator
    /// gives every node the same `auth.secret_key_file`).
    key_dir: tempfile::TempDir,
}

impl PgDatabase {
    /// Creates `natter_test_<random>` on the test server. Without a reachable
    /// server: `None` after saying (once, past the test harness's capture) that
    /// the PostgreSQL suite is skipped, or a panic when `NATTERTEST_REQUIRE_PG` is set.
    pub async fn create() -> Option<Self> {
        let base = pg_base_url();
        let (client, connection) = match tokio_postgres::connect(&base, tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => {
                if pg_required() {
                    panic!("NATTERTEST_REQUIRE_PG is set but PostgreSQL at {base} is unreachable: {e}");
                }
                announce_pg_skipped(&base, &e.to_string());
                return None;
            }
        };
        let driver = tokio::spawn(connection);
        let name = format!("natter_test_{}", uuid::Uuid::new_v4().simple());
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        drop(client);
        let _ = driver.await;
        let url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("NATTERTEST_PG_URL {base:?} names no database"),
        };
        let key_dir = tempfile::tempdir().expect("tempdir");
        let key: [u8; 32] = rand_bytes();
        let key_file = key_dir.path().join("secret.key");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file).expect("key file");
            writeln!(f, "{}", hex::encode(key)).expect("write key");
        }
        Some(Self { url, name, key_dir })
    }

    /// `postgres://…/natter_test_<random>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server key file for every node on this database.
    pub fn secret_key_file(&self) -> std::path::PathBuf {
        self.key_dir.path().join("secret.key")
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(16) {
        chunk.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    }
    out
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop may run inside a runtime: use a thread with its own.
        let (base, name) = (pg_base_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await?;
                let driver = tokio::spawn(connection);
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
                drop(client);
                let _ = driver.await;
                Ok::<_, tokio_postgres::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Says once per test binary, on the real stderr, that PostgreSQL tests are skipped.
fn announce_pg_skipped(base: &str, why: &str) {
    use std::io::Write;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\n*** PostgreSQL suite SKIPPED: cannot reach {base} ({why}).\n\
             *** Start PostgreSQL (or set NATTERTEST_PG_URL) to run it; NATTERTEST_REQUIRE_PG=1 makes this a failure.\n"
        );
    });
}

/// A TCP relay in front of a test database that fails the way a database
/// restart or a network blip does: [`PgRelay::cut`] kills every connection it
/// carries at its next request (it looked fine in the pool until then), and
/// while [`PgRelay::set_down`] holds, new connections are dropped at once.
pub struct PgRelay {
    url: String,
    generation: Arc<std::sync::atomic::AtomicU64>,
    down: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PgRelay {
    /// Relays to `db`'s server; [`PgRelay::url`] names `db` through the relay.
    pub async fn start(db: &PgDatabase) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pg: tokio_postgres::Config = db.url().parse().expect("database url");
        let host = match &pg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the PostgreSQL tests need a TCP url, not {other:?}"),
        };
        let upstream = format!("{host}:{}", pg.get_ports().first().copied().unwrap_or(5432));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let url = db.url().replacen(&upstream, &addr.to_string(), 1);
        assert_ne!(url, db.url(), "the url names {upstream}");
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (current, is_down) = (generation.clone(), down.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if is_down.load(Ordering::SeqCst) {
                    continue;
                }
                let born = current.load(Ordering::SeqCst);
                let (current, upstream) = (current.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    // As the database driver does: no Nagle delay on pipelined requests.
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (mut from_client, mut from_server) = ([0u8; 16384], [0u8; 16384]);
                    loop {
                        tokio::select! {
                            n = client.read(&mut from_client) => {
                                let Ok(n @ 1..) = n else { return };
                                // Cut since: the request goes nowhere and the client sees EOF.
                                if current.load(Ordering::SeqCst) != born { return }
                                if server.write_all(&from_client[..n]).await.is_err() { return }
                            }
                            n = server.read(&mut from_server) => {
                                let Ok(n @ 1..) = n else { return };
                                if client.write_all(&from_server[..n]).await.is_err() { return }
                            }
                        }
                    }
                });
            }
        });
        Self { url, generation, down, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every connection made so far dies at its next request.
    pub fn cut(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Down: every connection is cut and new ones are dropped; up: they work again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut();
        }
    }
}

impl Drop for PgRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small PDF (the type natterd detects from its first bytes) holding
/// `marker`, padded to about 40 KiB.
pub fn pdf_with(marker: &str) -> Vec<u8> {
    let mut bytes = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n".to_vec();
    bytes.extend_from_slice(marker.as_bytes());
    bytes.extend(std::iter::repeat_n(b'x', 40_000));
    bytes.extend_from_slice(b"\n%%EOF\n");
    bytes
}

/// Uploads `bytes` as `file_name` for `conversation` and returns the media.
pub async fn upload_bytes(
    client: &Client,
    conversation: &str,
    file_name: &str,
    bytes: &[u8],
) -> natter_client::proto::Media {
    use sha2::Digest as _;
    let spec = natter_client::transfer::UploadSpec {
        conversation_id: conversation.into(),
        file_name: file_name.into(),
        size: bytes.len() as u64,
        sha256: sha2::Sha256::digest(bytes).into(),
        upload_id: None,
    };
    client.upload(&spec, &mut std::io::Cursor::new(bytes.to_vec()), |_| {}).await.expect("upload")
}
