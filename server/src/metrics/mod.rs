//! Prometheus metrics and the health endpoint, served over plain HTTP on a
//! separate listener (`[metrics] listen`, off when unset).
//!
//! Label sets are bounded: request kinds and error-code names come from fixed
//! tables, never from users. The HTTP side is deliberately tiny: GET only,
//! bounded request size, a connection cap, a read timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Why a connection closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CloseReason {
    /// The client closed or vanished.
    Peer,
    /// The client finished its control stream.
    Normal,
    Shutdown,
    /// The server closed it with an error code.
    Error,
    /// Refused at the connection cap.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    reason: CloseReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    /// `upload` or `download`.
    direction: &'static str,
    /// `ok` or the error code's name.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The request type (`send_message`, `login`, …).
    kind: &'static str,
    /// `ok` or the error code's name.
    result: &'static str,
}

/// Every metric natterd keeps. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    connections_current: Gauge,
    connections_opened: Counter,
    handshake_retries: Counter,
    connections_closed: Family<CloseLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    messages_appended: Counter,
    events_appended: Counter,
    commit_batch_jobs: Histogram,
    commit_seconds: Histogram,
    fsync_seconds: Histogram,
    deliveries: Counter,
    outbound_overflows: Counter,
    outbound_queued: Gauge,
    datagrams_sent: Counter,
    signals_on_stream: Counter,
    signals_dropped: Counter,
    resident_bytes: Gauge,
    transfers_active: Gauge,
    transfers: Family<TransferLabels, Counter>,
    transfer_bytes: Family<DirectionLabels, Counter>,
    media_discarded: Counter,
    messages_erased: Family<CauseLabels, Counter>,
    blobs_collected: Counter,
    blob_bytes_collected: Counter,
    previews: Family<ResultLabels, Counter>,
    search_position: Gauge,
    search_lag: Gauge,
    search_commits: Counter,
    search_documents: Counter,
    pushes: Family<ResultLabels, Counter>,
    push_retries: Counter,
    push_subscriptions_removed: Counter,
    push_position: Gauge,
    push_lag: Gauge,
    data_free_bytes: Gauge,
    /// The data directory, whose filesystem's free space is read at scrape time.
    data_dir: std::sync::OnceLock<std::path::PathBuf>,
}

/// Why messages lost their content: `account` (deleted), `retention`, `group` (deleted).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("natter");
        let m = Self {
            connections_current: Gauge::default(),
            connections_opened: Counter::default(),
            handshake_retries: Counter::default(),
            connections_closed: Family::default(),
            requests: Family::default(),
            messages_appended: Counter::default(),
            events_appended: Counter::default(),
            commit_batch_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            deliveries: Counter::default(),
            outbound_overflows: Counter::default(),
            outbound_queued: Gauge::default(),
            datagrams_sent: Counter::default(),
            signals_on_stream: Counter::default(),
            signals_dropped: Counter::default(),
            resident_bytes: Gauge::default(),
            transfers_active: Gauge::default(),
            transfers: Family::default(),
            transfer_bytes: Family::default(),
            media_discarded: Counter::default(),
            messages_erased: Family::default(),
            blobs_collected: Counter::default(),
            blob_bytes_collected: Counter::default(),
            previews: Family::default(),
            search_position: Gauge::default(),
            search_lag: Gauge::default(),
            search_commits: Counter::default(),
            search_documents: Counter::default(),
            pushes: Family::default(),
            push_retries: Counter::default(),
            push_subscriptions_removed: Counter::default(),
            push_position: Gauge::default(),
            push_lag: Gauge::default(),
            data_free_bytes: Gauge::default(),
            data_dir: std::sync::OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register("connections", "Connections open now", m.connections_current.clone());
        registry.register("connections_opened", "Connections accepted", m.connections_opened.clone());
        registry.register(
            "handshake_retries",
            "Handshakes answered with a QUIC Retry (address validation while many were in progress)",
            m.handshake_retries.clone(),
        );
        registry.register("connections_closed", "Connections closed, by reason", m.connections_closed.clone());
        registry.register("requests", "Requests answered, by type and result", m.requests.clone());
        registry.register("messages_appended", "Messages durably appended", m.messages_appended.clone());
        registry.register("events_appended", "Events durably appended", m.events_appended.clone());
        registry.register("commit_batch_jobs", "Appends per group commit", m.commit_batch_jobs.clone());
        registry.register("commit_seconds", "Group commit latency including fsync", m.commit_seconds.clone());
        registry.register(
            "commit_fsync_seconds",
            "The COMMIT step of a group commit: WAL write and fsync",
            m.fsync_seconds.clone(),
        );
        registry.register("deliveries", "Events handed to connections' outbound queues", m.deliveries.clone());
        registry.register(
            "outbound_overflows",
            "Outbound queues that overflowed (the connection resyncs from the log)",
            m.outbound_overflows.clone(),
        );
        registry.register("outbound_queued", "Events waiting in outbound queues", m.outbound_queued.clone());
        registry.register("datagrams_sent", "Ephemeral signals sent as datagrams", m.datagrams_sent.clone());
        registry.register(
            "signals_on_stream",
            "Ephemeral signals sent on the feed stream (peer without datagrams)",
            m.signals_on_stream.clone(),
        );
        registry.register("signals_dropped", "Ephemeral signals dropped (queue full)", m.signals_dropped.clone());
        registry.register("process_resident_bytes", "Resident memory of natterd", m.resident_bytes.clone());
        registry.register("media_transfers_active", "Uploads and downloads running now", m.transfers_active.clone());
        registry.register(
            "media_transfers",
            "Uploads and downloads ended, by direction and result (store failures: UNAVAILABLE, INTERNAL)",
            m.transfers.clone(),
        );
        registry.register("media_transfer_bytes", "File bytes received and sent", m.transfer_bytes.clone());
        registry.register("media_discarded", "Uploads discarded, never sent in time", m.media_discarded.clone());
        registry.register(
            "messages_erased",
            "Messages whose content was erased from the log, by cause (account, retention, group)",
            m.messages_erased.clone(),
        );
        registry.register(
            "media_blobs_collected",
            "Blobs deleted, nothing referring to them",
            m.blobs_collected.clone(),
        );
        registry.register("media_blob_collected_bytes", "Bytes of the blobs deleted", m.blob_bytes_collected.clone());
        registry.register(
            "media_previews",
            "Images looked at for a preview, by result (made, small, too_many_pixels, undecodable)",
            m.previews.clone(),
        );
        registry.register(
            "search_indexed_position",
            "The log position the search index holds everything up to",
            m.search_position.clone(),
        );
        registry.register(
            "search_lag_events",
            "Log positions the search index is behind the newest it has seen",
            m.search_lag.clone(),
        );
        registry.register("search_commits", "Search index commits", m.search_commits.clone());
        registry.register(
            "push_notifications",
            "Web Push requests ended, by result (delivered, gone, too_large, gave_up, refused)",
            m.pushes.clone(),
        );
        registry.register("push_retries", "Web Push requests tried again (429, 5xx, timeouts)", m.push_retries.clone());
        registry.register(
            "push_subscriptions_removed",
            "Push subscriptions deleted because the push service said 404 or 410",
            m.push_subscriptions_removed.clone(),
        );
        registry.register(
            "push_handled_position",
            "The log position the push worker has handled everything up to",
            m.push_position.clone(),
        );
        registry.register(
            "push_lag_events",
            "Log positions the push worker is behind the newest it has seen",
            m.push_lag.clone(),
        );
        registry.register("search_documents", "Messages added to the search index", m.search_documents.clone());
        registry.register(
            "data_dir_free_bytes",
            "Space left for an unprivileged writer on the data directory's filesystem",
            m.data_free_bytes.clone(),
        );
        // The label values known in advance start at zero: a dashboard shows
        // them, and an alert on a rate has a baseline, before the first one.
        for result in ["delivered", "gone", "too_large", "gave_up", "refused"] {
            let _ = m.pushes.get_or_create(&ResultLabels { result });
        }
        for result in ["made", "small", "too_many_pixels", "undecodable"] {
            let _ = m.previews.get_or_create(&ResultLabels { result });
        }
        for cause in ["account", "retention", "group"] {
            let _ = m.messages_erased.get_or_create(&CauseLabels { cause });
        }
        for direction in ["upload", "download"] {
            let _ = m.transfer_bytes.get_or_create(&DirectionLabels { direction });
            let _ = m.transfers.get_or_create(&TransferLabels { direction, result: "ok" });
        }
        for reason in
            [CloseReason::Peer, CloseReason::Normal, CloseReason::Shutdown, CloseReason::Error, CloseReason::Refused]
        {
            let _ = m.connections_closed.get_or_create(&CloseLabels { reason });
        }
        Arc::new(Self { registry, ..m })
    }

    /// The search projection added `documents` and stands at `indexed` of `seen`.
    pub fn search_progress(&self, documents: u64, indexed: u64, seen: u64, committed: bool) {
        self.search_documents.inc_by(documents);
        if committed {
            self.search_commits.inc();
        }
        self.search_position.set(i64::try_from(indexed).unwrap_or(i64::MAX));
        self.search_lag.set(i64::try_from(seen.saturating_sub(indexed)).unwrap_or(i64::MAX));
    }

    /// A Web Push request ended with `result`.
    pub fn push(&self, result: &'static str) {
        self.pushes.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn push_retry(&self) {
        self.push_retries.inc();
    }

    pub fn push_subscription_removed(&self) {
        self.push_subscriptions_removed.inc();
    }

    /// The push worker has handled everything up to `handled` of `seen`.
    pub fn push_progress(&self, handled: u64, seen: u64) {
        self.push_position.set(i64::try_from(handled).unwrap_or(i64::MAX));
        self.push_lag.set(i64::try_from(seen.saturating_sub(handled)).unwrap_or(i64::MAX));
    }

    /// Connections open now (what `natter-admin status` shows).
    pub fn connections_open(&self) -> u64 {
        u64::try_from(self.connections_current.get()).unwrap_or(0)
    }

    pub fn connection_opened(&self) {
        self.connections_opened.inc();
        self.connections_current.inc();
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        self.connections_current.dec();
        self.connections_closed.get_or_create(&CloseLabels { reason }).inc();
    }

    pub fn handshake_retried(&self) {
        self.handshake_retries.inc();
    }

    pub fn connection_refused(&self) {
        self.connections_closed.get_or_create(&CloseLabels { reason: CloseReason::Refused }).inc();
    }

    pub fn request(&self, kind: &'static str, result: &'static str) {
        self.requests.get_or_create(&RequestLabels { kind, result }).inc();
    }

    /// One group commit: how many appends it carried, events and messages in
    /// it, how long the transaction took, and of that the COMMIT (WAL write + fsync).
    pub fn committed(&self, jobs: usize, events: usize, messages: usize, took: Duration, fsync: Duration) {
        self.commit_batch_jobs.observe(jobs as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        self.fsync_seconds.observe(fsync.as_secs_f64());
        self.events_appended.inc_by(events as u64);
        self.messages_appended.inc_by(messages as u64);
    }

    pub fn delivered(&self, n: u64) {
        self.deliveries.inc_by(n);
    }

    pub fn overflowed(&self) {
        self.outbound_overflows.inc();
    }

    pub fn datagram_sent(&self) {
        self.datagrams_sent.inc();
    }

    pub fn signal_on_stream(&self) {
        self.signals_on_stream.inc();
    }

    /// One collector pass.
    /// Messages erased by an account's deletion, retention or a group's deletion.
    pub fn messages_erased(&self, cause: &'static str, n: u64) {
        self.messages_erased.get_or_create(&CauseLabels { cause }).inc_by(n);
    }

    pub fn media_collected(&self, discarded: u64, blobs: u64, bytes: u64) {
        self.media_discarded.inc_by(discarded);
        self.blobs_collected.inc_by(blobs);
        self.blob_bytes_collected.inc_by(bytes);
    }

    /// An image looked at for a preview.
    pub fn preview(&self, result: &'static str) {
        self.previews.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn transfer_started(&self) {
        self.transfers_active.inc();
    }

    /// A transfer ended: which way, how (`ok` or an error code's name), and
    /// the file bytes it moved.
    pub fn transfer_ended(&self, direction: &'static str, result: &'static str, bytes: u64) {
        self.transfers_active.dec();
        self.transfers.get_or_create(&TransferLabels { direction, result }).inc();
        self.transfer_bytes.get_or_create(&DirectionLabels { direction }).inc_by(bytes);
    }

    pub fn signal_dropped(&self) {
        self.signals_dropped.inc();
    }

    /// Where natterd keeps its files: `natter_data_dir_free_bytes` reports
    /// its filesystem. Once; later calls change nothing.
    pub fn watch_data_dir(&self, dir: &std::path::Path) {
        let _ = self.data_dir.set(dir.to_path_buf());
    }

    /// The exposition text, with the gauges read at scrape time refreshed.
    pub fn render(&self, outbound_queued: usize) -> String {
        self.outbound_queued.set(outbound_queued as i64);
        self.resident_bytes.set(resident_bytes().unwrap_or(0) as i64);
        if let Some(free) = self.data_dir.get().and_then(|d| free_bytes(d)) {
            self.data_free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem (statvfs).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the
    // right type, written by statvfs(3) when it returns 0.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Resident set size from /proc (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Largest HTTP request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Scrapers served at once.
const MAX_HTTP_CONNECTIONS: usize = 16;
/// How long one scrape connection may take, however slow its client.
const HTTP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `/metrics` and `/healthz` over HTTP/1.1 (hyper) until `shutdown`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    queued: Arc<dyn Fn() -> usize + Send + Sync>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let cap = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                s = listener.accept() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        continue;
                    }
                },
            };
            // Over the cap the connection is dropped at once: a scraper retries.
            let Ok(permit) = cap.clone().try_acquire_owned() else { continue };
            let (metrics, store, queued) = (metrics.clone(), store.clone(), queued.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (metrics, store, queued) = (metrics.clone(), store.clone(), queued.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics, &*store, &*queued).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(MAX_REQUEST)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(HTTP_CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    });
    Ok(addr)
}

type Body = http_body_util::Full<bytes::Bytes>;

async fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    metrics: &Metrics,
    store: &dyn Store,
    queued: &(dyn Fn() -> usize + Send + Sync),
) -> hyper::Response<Body> {
    use hyper::StatusCode;
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(queued()),
        ),
        "/healthz" => match store.health().await {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ok: the store is writable\n".into()),
            Err(e) => {
                tracing::error!(error = %e, "health check: the store is not writable");
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("store not writable: {e}\n"))
            }
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "try /metrics or /healthz\n".into()),
    }
}

fn respond(status: hyper::StatusCode, content_type: &'static str, body: String) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
