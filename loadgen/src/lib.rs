//! natter-loadgen's scenarios, as a library so the integration tests run the
//! same code (a smoke run of each) as the binary.
//!
//! Everything goes through the client SDK over real QUIC; never a shortcut into
//! the server. Every run is bounded in time and ends by itself. Latencies are
//! measured in this process with one clock: a message carries its send time
//! (nanoseconds since the run started) in its text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use natter_client::{Client, ClientConfig, ClientEndpoint, Feed, FeedItem};

pub mod chaos;
pub mod e2ee;
pub mod media;
pub mod push;
pub mod relay;
pub mod search;

/// Password of the accounts a run creates.
const PASSWORD: &str = "loadgen password 0123456789";

/// Where to connect, and how many local UDP sockets to spread connections over.
#[derive(Clone)]
pub struct Target {
    pub config: ClientConfig,
    pub endpoints: usize,
}

impl Target {
    /// The local sockets to spread connections over.
    ///
    /// # Errors
    /// When a socket cannot be bound.
    pub fn endpoints(&self) -> anyhow::Result<Vec<ClientEndpoint>> {
        Ok((0..self.endpoints.max(1))
            .map(|_| ClientEndpoint::for_server(self.config.server))
            .collect::<Result<_, _>>()?)
    }
}

/// Phases shared by the throughput scenarios.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Live counters, for progress lines and the final figures.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub errors: AtomicU64,
}

/// Everything a throughput run measured.
pub struct Report {
    pub scenario: &'static str,
    /// The measured phase (warm-up excluded).
    pub elapsed: Duration,
    /// Sends acknowledged in the measured phase.
    pub sends: u64,
    /// Deliveries (of messages sent in the measured phase) to other members.
    pub deliveries: u64,
    /// All sends and deliveries, warm-up included (for consistency checks).
    pub total_sends: u64,
    pub total_deliveries: u64,
    /// Recipients per message (members other than the sender).
    pub fanout: u64,
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    pub fn sends_per_second(&self) -> f64 {
        self.sends as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn deliveries_per_second(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{}: {:.1} s measured, {} sends ({:.0}/s), {} deliveries ({:.0}/s), fan-out {}\n",
            self.scenario,
            self.elapsed.as_secs_f64(),
            self.sends,
            self.sends_per_second(),
            self.deliveries,
            self.deliveries_per_second(),
            self.fanout
        );
        out.push_str(&format!(
            "{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "max"
        ));
        for (name, h) in [("send→ack", &self.ack), ("send→deliver", &self.deliver)] {
            out.push_str(&format!(
                "{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
                name,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
        if self.errors.is_empty() {
            out.push_str("errors: none\n");
        } else {
            for (code, n) in &self.errors {
                out.push_str(&format!("errors: {code} × {n}\n"));
            }
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let pct = |h: &Histogram<u64>| {
            serde_json::json!({
                "count": h.len(), "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
                "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
            })
        };
        serde_json::json!({
            "scenario": self.scenario,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "sends": self.sends,
            "sends_per_s": self.sends_per_second(),
            "deliveries": self.deliveries,
            "deliveries_per_s": self.deliveries_per_second(),
            "fanout": self.fanout,
            "total_sends": self.total_sends,
            "total_deliveries": self.total_deliveries,
            "send_to_ack": pct(&self.ack),
            "send_to_deliver": pct(&self.deliver),
            "errors": self.errors,
        })
    }
}

/// Shared measuring state of one run.
struct Run {
    start: Instant,
    measure_from: Duration,
    ack: Mutex<Histogram<u64>>,
    deliver: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    counters: Arc<Counters>,
    measured_sends: AtomicU64,
    measured_deliveries: AtomicU64,
    text_size: usize,
}

impl Run {
    fn new(timing: Timing, counters: Arc<Counters>, text_size: usize) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            measure_from: timing.warmup,
            ack: Mutex::new(Histogram::new(3).expect("valid precision")),
            deliver: Mutex::new(Histogram::new(3).expect("valid precision")),
            errors: Mutex::new(BTreeMap::new()),
            counters,
            measured_sends: AtomicU64::new(0),
            measured_deliveries: AtomicU64::new(0),
            text_size: text_size.max(24),
        })
    }

    /// The text of a message sent now: its send time, padded to the size asked.
    fn text(&self) -> (String, Duration) {
        let at = self.start.elapsed();
        let mut t = format!("t{}:", at.as_nanos());
        while t.len() < self.text_size {
            t.push('x');
        }
        (t, at)
    }

    fn measuring(&self, at: Duration) -> bool {
        at >= self.measure_from
    }

    async fn send(&self, client: &Client, conv: &str, id: &str) {
        let (text, at) = self.text();
        let sent = client.send_text(conv, id, &text).await;
        self.acked(at, sent.map(|_| ()).map_err(|e| e.code().and_then(|c| c.name()).unwrap_or("transport").to_owned()));
    }

    /// Counts a send made at `at` that was acknowledged, or refused with a code.
    fn acked(&self, at: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                if self.measuring(at) {
                    self.measured_sends.fetch_add(1, Ordering::Relaxed);
                    let us = (self.start.elapsed() - at).as_micros() as u64;
                    let _ = self.ack.lock().expect("histogram lock").record(us.max(1));
                }
            }
            Err(code) => self.error(code),
        }
    }

    /// Counts a failure of some kind (its name in the report).
    fn error(&self, kind: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().expect("errors lock").entry(kind).or_default() += 1;
    }

    /// Counts a message that reached someone other than its sender.
    fn delivered(&self, text: &str) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let Some(ns) = text.strip_prefix('t').and_then(|t| t.split(':').next()).and_then(|n| n.parse::<u64>().ok())
        else {
            return;
        };
        let at = Duration::from_nanos(ns);
        if self.measuring(at) {
            self.measured_deliveries.fetch_add(1, Ordering::Relaxed);
            let us = (self.start.elapsed().saturating_sub(at)).as_micros() as u64;
            let _ = self.deliver.lock().expect("histogram lock").record(us.max(1));
        }
    }

    fn report(&self, scenario: &'static str, measured: Duration, fanout: u64) -> Report {
        Report {
            scenario,
            elapsed: measured,
            sends: self.measured_sends.load(Ordering::Relaxed),
            deliveries: self.measured_deliveries.load(Ordering::Relaxed),
            total_sends: self.counters.sent.load(Ordering::Relaxed),
            total_deliveries: self.counters.delivered.load(Ordering::Relaxed),
            fanout,
            ack: self.ack.lock().expect("histogram lock").clone(),
            deliver: self.deliver.lock().expect("histogram lock").clone(),
            errors: self.errors.lock().expect("errors lock").clone(),
        }
    }
}

/// A signed-in user of the run.
pub struct User {
    pub email: String,
    pub client: Client,
}

/// Creates `n` users (sign-up + log-in), spread over the target's endpoints.
///
/// # Errors
/// When the server refuses or cannot be reached.
pub async fn users(target: &Target, prefix: &str, n: usize) -> anyhow::Result<Vec<User>> {
    let endpoints = target.endpoints()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut out = Vec::with_capacity(n);
    // Sign-ups hash passwords on the server: a few at a time.
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let made = futures::future::join_all(chunk.iter().map(|&i| {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let email = format!("{prefix}-{run}-{i}@loadgen.invalid");
            let config = target.config.clone();
            async move {
                let client = Client::connect_on(&endpoint, &config).await?;
                client.signup(&email, PASSWORD, "").await.map_err(sign_in_refused)?;
                client.login(&email, PASSWORD, "loadgen").await.map_err(sign_in_refused)?;
                anyhow::Ok(User { email, client })
            }
        }))
        .await;
        for u in made {
            out.push(u.context("creating a load-generator user")?);
        }
    }
    Ok(out)
}

/// What to do when natterd throttles the load generator's sign-ins: they all
/// come from one address, which an ordinary natterd limits.
fn sign_in_refused(e: natter_client::ClientError) -> anyhow::Error {
    if e.code() == Some(natter_proto::ErrorCode::RATE_LIMITED) {
        anyhow::anyhow!(
            "natterd refused the load generator's sign-ins ({e}). natter-loadgen signs hundreds of users in from one \
             address: measure a natterd started for it, `natterd --load-test` (a data directory of its own, \
             ./natter-loadtest-data, and no per-address sign-in limit), or raise the limit with \
             NATTER_AUTH_ATTEMPTS_PER_MINUTE=1000000"
        )
    } else {
        e.into()
    }
}

/// Counts deliveries on a user's feed until told to stop.
fn receive(run: Arc<Run>, me: String, mut feed: Feed) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(item) = feed.next().await {
            if let Ok(FeedItem::Message { message, .. }) = item {
                if message.sender_user_id != me {
                    if let Some(natter_client::proto::content::Body::Text(t)) =
                        message.content.as_ref().and_then(|c| c.body.as_ref())
                    {
                        run.delivered(&t.body);
                    }
                }
            }
        }
    })
}

/// How sends are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Each sender keeps this many sends outstanding.
    Closed { in_flight: usize },
    /// This many sends per second over all senders, whatever the latency.
    Open { rate: f64 },
}

/// Sends from `client` into `conv` until the deadline.
async fn sender(run: Arc<Run>, client: Arc<Client>, conv: String, pace: Pace, senders: usize, until: Instant) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let next = Arc::new(AtomicU64::new(0));
    match pace {
        Pace::Closed { in_flight } => {
            let loops = (0..in_flight.max(1)).map(|_| {
                let (run, client, conv, next, tag) =
                    (run.clone(), client.clone(), conv.clone(), next.clone(), tag.clone());
                async move {
                    while Instant::now() < until {
                        let id = format!("{tag}-{}", next.fetch_add(1, Ordering::Relaxed));
                        run.send(&client, &conv, &id).await;
                    }
                }
            });
            futures::future::join_all(loops).await;
        }
        Pace::Open { rate } => {
            let per_sender = (rate / senders.max(1) as f64).max(0.001);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            while Instant::now() < until {
                tick.tick().await;
                let (run, client, conv) = (run.clone(), client.clone(), conv.clone());
                let id = format!("{tag}-{}", next.fetch_add(1, Ordering::Relaxed));
                tasks.spawn(async move { run.send(&client, &conv, &id).await });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// Waits (bounded) until every acknowledged send has reached its recipients.
async fn drain(run: &Run, fanout: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let want = run.counters.sent.load(Ordering::Relaxed) * fanout;
        if run.counters.delivered.load(Ordering::Relaxed) >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// S1: users in pairs, each sending to its partner.
///
/// # Errors
/// When setting up users or conversations fails.
pub async fn dm_pairs(
    target: &Target,
    users_n: usize,
    pace: Pace,
    timing: Timing,
    text_size: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<Report> {
    dm_pairs_with(target, users_n, pace, timing, text_size, counters, || {}).await
}

/// [`dm_pairs`], calling `ready` once everyone is set up, as sending starts.
///
/// # Errors
/// When setting up users or conversations fails.
pub async fn dm_pairs_with(
    target: &Target,
    users_n: usize,
    pace: Pace,
    timing: Timing,
    text_size: usize,
    counters: Arc<Counters>,
    ready: impl FnOnce(),
) -> anyhow::Result<Report> {
    if users_n < 2 || !users_n.is_multiple_of(2) {
        bail!("dm-pairs needs an even number of users, at least 2");
    }
    let people = users(target, "pair", users_n).await?;
    let run = Run::new(timing, counters, text_size);
    let mut receivers = Vec::new();
    let mut plans = Vec::new();
    let mut clients = Vec::new();
    for u in people {
        let me = u.client.identity().context("signed in")?.user_id;
        let (feed, _) = u.client.sync(None).await?;
        receivers.push(receive(run.clone(), me, feed));
        clients.push((u.email, Arc::new(u.client)));
    }
    for pair in clients.chunks(2) {
        let conv = pair[0].1.open_direct(&pair[1].0).await?.conversation_id;
        plans.push((pair[0].1.clone(), conv.clone()));
        plans.push((pair[1].1.clone(), conv));
    }
    let until = Instant::now() + timing.warmup + timing.duration;
    let measure_start = run.start + timing.warmup;
    ready();
    let senders = plans.len();
    let tasks = plans.into_iter().map(|(client, conv)| sender(run.clone(), client, conv, pace, senders, until));
    futures::future::join_all(tasks).await;
    let measured = Instant::now().saturating_duration_since(measure_start);
    drain(&run, 1).await;
    for r in receivers {
        r.abort();
    }
    Ok(run.report("dm-pairs", measured, 1))
}

/// S2: one group, every member connected; some members send.
///
/// # Errors
/// When setting up users or the group fails.
pub async fn group_fanout(
    target: &Target,
    members: usize,
    senders_n: usize,
    pace: Pace,
    timing: Timing,
    text_size: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<Report> {
    if members < 2 || senders_n == 0 || senders_n > members {
        bail!("group-fanout needs at least 2 members and 1..=members senders");
    }
    let people = users(target, "fan", members).await?;
    let emails: Vec<&str> = people[1..].iter().map(|u| u.email.as_str()).collect();
    let group = people[0].client.create_group("loadgen fan-out", &emails).await?.conversation_id;
    let run = Run::new(timing, counters, text_size);
    let mut receivers = Vec::new();
    let mut clients = Vec::new();
    for u in people {
        let me = u.client.identity().context("signed in")?.user_id;
        let (feed, _) = u.client.sync(None).await?;
        receivers.push(receive(run.clone(), me, feed));
        clients.push(Arc::new(u.client));
    }
    let until = Instant::now() + timing.warmup + timing.duration;
    let measure_start = run.start + timing.warmup;
    let tasks =
        clients.iter().take(senders_n).map(|c| sender(run.clone(), c.clone(), group.clone(), pace, senders_n, until));
    futures::future::join_all(tasks).await;
    let measured = Instant::now().saturating_duration_since(measure_start);
    let fanout = (members - 1) as u64;
    drain(&run, fanout).await;
    for r in receivers {
        r.abort();
    }
    Ok(run.report("group-fanout", measured, fanout))
}

/// What the idle scenario measured.
pub struct IdleReport {
    pub connections: usize,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

impl IdleReport {
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (b, a) = (self.rss_before?, self.rss_after?);
        Some(a.saturating_sub(b) as f64 / self.connections.max(1) as f64)
    }

    pub fn table(&self) -> String {
        let kib = |b: Option<u64>| b.map_or("?".into(), |b| format!("{} KiB", b / 1024));
        format!(
            "idle: {} authenticated connections; natterd RSS {} → {}; {} per connection\n",
            self.connections,
            kib(self.rss_before),
            kib(self.rss_after),
            self.bytes_per_connection().map_or("?".into(), |b| format!("{:.1} KiB", b / 1024.0))
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "idle", "connections": self.connections, "rss_before_bytes": self.rss_before,
            "rss_after_bytes": self.rss_after, "bytes_per_connection": self.bytes_per_connection(),
        })
    }
}

/// Resident memory of a process, from /proc (Linux).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// S3: `connections` authenticated connections with running feeds, held idle
/// for `hold`; natterd's memory before and after, when `server_pid` is given.
///
/// # Errors
/// When connecting fails.
pub async fn idle(
    target: &Target,
    connections: usize,
    hold: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<IdleReport> {
    let accounts = users(target, "idle", connections.clamp(1, 50)).await?;
    let mut tokens = Vec::new();
    for u in &accounts {
        let c = Client::connect(&target.config).await?;
        let (token, _) = c.login(&u.email, PASSWORD, "idle").await?;
        tokens.push(token);
    }
    drop(accounts);
    let endpoints = target.endpoints()?;
    let rss_before = server_pid.and_then(rss_of);
    let mut held = Vec::with_capacity(connections);
    for chunk in (0..connections).collect::<Vec<_>>().chunks(64) {
        let opened = futures::future::join_all(chunk.iter().map(|&i| {
            let mut config = target.config.clone();
            config.session_token = Some(tokens[i % tokens.len()].clone());
            let endpoint = endpoints[i % endpoints.len()].clone();
            async move {
                let c = Client::connect_on(&endpoint, &config).await?;
                let (feed, _) = c.sync(None).await?;
                anyhow::Ok((c, feed))
            }
        }))
        .await;
        for c in opened {
            held.push(c?);
        }
    }
    tokio::time::sleep(hold).await;
    let rss_after = server_pid.and_then(rss_of);
    Ok(IdleReport { connections: held.len(), rss_before, rss_after })
}

/// What the mixed scenario measured, per operation type.
pub struct MixedReport {
    pub elapsed: Duration,
    pub ops: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
}

impl MixedReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "mixed: {:.1} s\n{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            self.elapsed.as_secs_f64(),
            "op (µs)",
            "count/s",
            "p50",
            "p99",
            "p99.9",
            "max"
        );
        for (op, h) in &self.ops {
            out.push_str(&format!(
                "{:<12}{:>10.0}{:>10}{:>10}{:>10}{:>10}\n",
                op,
                h.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            ));
        }
        for (code, n) in &self.errors {
            out.push_str(&format!("errors: {code} × {n}\n"));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let ops: serde_json::Map<String, serde_json::Value> = self
            .ops
            .iter()
            .map(|(op, h)| {
                (
                    op.to_string(),
                    serde_json::json!({
                        "count": h.len(), "per_s": h.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
                        "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
                        "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
                    }),
                )
            })
            .collect();
        serde_json::json!({ "scenario": "mixed", "elapsed_s": self.elapsed.as_secs_f64(), "ops": ops, "errors": self.errors })
    }
}

/// Operations of the mixed scenario and their share (out of 100).
const MIX: &[(&str, u32)] = &[("send", 50), ("typing", 20), ("read", 15), ("history", 10), ("reconnect", 5)];

/// A realistic blend per user (messages, typing, read receipts, history pages,
/// reconnects) at `rate` operations per second in all, users in pairs.
///
/// # Errors
/// When setting up users fails.
pub async fn mixed(target: &Target, users_n: usize, rate: f64, duration: Duration) -> anyhow::Result<MixedReport> {
    if users_n < 2 || !users_n.is_multiple_of(2) {
        bail!("mixed needs an even number of users, at least 2");
    }
    let people = users(target, "mix", users_n).await?;
    let mut plans = Vec::new();
    for pair in people.chunks(2) {
        let conv = pair[0].client.open_direct(&pair[1].email).await?.conversation_id;
        for u in pair {
            let c = Client::connect(&target.config).await?;
            let (token, _) = c.login(&u.email, PASSWORD, "mixed").await?;
            c.close().await;
            plans.push((token, conv.clone()));
        }
    }
    drop(people);
    let ops: Arc<Mutex<BTreeMap<&'static str, Histogram<u64>>>> = Arc::default();
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let start = Instant::now();
    let until = start + duration;
    let per_user = (rate / users_n as f64).max(0.01);
    let tasks = plans.into_iter().enumerate().map(|(i, (token, conv))| {
        let (ops, errors, mut config) = (ops.clone(), errors.clone(), target.config.clone());
        config.session_token = Some(token);
        // Typing is throttled by the SDK; the blend wants every signal sent.
        config.typing_throttle = Duration::ZERO;
        async move {
            let mut client = Client::connect(&config).await?;
            let mut feed = client.sync(None).await?.0;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_user));
            let mut n: u64 = i as u64 * 7919;
            while Instant::now() < until {
                tick.tick().await;
                // Drain what arrived, as a client would.
                while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, feed.next()).await {}
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let mut pick = ((n >> 33) % 100) as u32;
                let op = MIX
                    .iter()
                    .find(|(_, w)| {
                        pick < *w || {
                            pick -= w;
                            false
                        }
                    })
                    .map_or("send", |(o, _)| *o);
                let t0 = Instant::now();
                let result = match op {
                    "send" => client.send_text(&conv, &uuid::Uuid::new_v4().to_string(), "mixed load").await.map(drop),
                    "typing" => client.typing(&conv).await.map(drop),
                    "read" => client.mark_read(&conv, u64::MAX >> 1).await.map(drop),
                    "history" => client
                        .history(natter_client::proto::GetHistory {
                            conversation_id: conv.clone(),
                            limit: 20,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    _ => match Client::connect(&config).await {
                        Ok(fresh) => {
                            // The old connection closes in the background, as an app would.
                            tokio::spawn(std::mem::replace(&mut client, fresh).close());
                            client.sync(None).await.map(|(f, _)| feed = f)
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(()) => {
                        let us = t0.elapsed().as_micros() as u64;
                        let mut ops = ops.lock().expect("ops lock");
                        let h = ops.entry(op).or_insert_with(|| Histogram::new(3).expect("valid precision"));
                        let _ = h.record(us.max(1));
                    }
                    Err(e) => {
                        let code = e.code().and_then(|c| c.name()).unwrap_or("transport");
                        *errors.lock().expect("errors lock").entry(format!("{op}: {code}")).or_default() += 1;
                    }
                }
            }
            anyhow::Ok(())
        }
    });
    for r in futures::future::join_all(tasks).await {
        r?;
    }
    let ops = ops.lock().expect("ops lock").clone();
    let errors = errors.lock().expect("errors lock").clone();
    Ok(MixedReport { elapsed: start.elapsed(), ops, errors })
}
