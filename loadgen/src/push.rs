//! The push benchmark: how fast natterd's push worker notifies offline
//! people. Recipients register Web Push subscriptions whose endpoints are a
//! push sink in this process (an HTTP/1.1 listener on 127.0.0.1 that answers
//! every POST `201 Created`, as a push service does, and notes when each
//! arrived), then disconnect. Each round, every sender sends one message to
//! each of its recipients at once; the round's figures are how long the
//! worker took to hand all of them to the sink, and each notification's
//! latency from its message's acknowledgement. Rounds are `gap` apart, longer
//! than natterd's `push.coalesce_ms`, so every message is due a notification
//! of its own at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::{users, Target};

/// Arrivals at the sink: endpoint number → when.
#[derive(Default)]
struct Arrivals {
    at: HashMap<usize, Vec<Instant>>,
    total: usize,
}

/// The push sink: counts, never decrypts (the payload's encryption is natterd's
/// work and is measured; checking it is the tests' business).
struct Sink {
    addr: std::net::SocketAddr,
    arrivals: Arc<Mutex<Arrivals>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let a = arrivals.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, a.clone()));
            }
        });
        Ok(Self { addr, arrivals, task })
    }

    fn total(&self) -> usize {
        self.arrivals.lock().expect("arrivals").total
    }
}

/// Requests on one kept-alive connection: head, `Content-Length` body, `201`.
async fn serve(stream: tokio::net::TcpStream, arrivals: Arc<Mutex<Arrivals>>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let endpoint = line.split(' ').nth(1).and_then(|p| p.strip_prefix("/push/")).and_then(|n| n.parse().ok());
        let mut length = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length.min(64 * 1024)];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let now = Instant::now();
        if let Some(n) = endpoint {
            let mut a = arrivals.lock().expect("arrivals");
            a.at.entry(n).or_default().push(now);
            a.total += 1;
        }
        if write.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

/// What a run measured.
pub struct PushReport {
    pub recipients: usize,
    pub rounds: usize,
    /// Per round: notifications over the time from the first send to the last arrival.
    pub per_second: Vec<f64>,
    /// Message acknowledged → its notification at the sink, in µs.
    pub latency: Histogram<u64>,
}

impl PushReport {
    fn median_rate(&self) -> f64 {
        let mut r = self.per_second.clone();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    }

    pub fn table(&self) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "push: {} offline recipients, {} rounds of one message each\n\
             notifications/s (median round)   {:>10.0}   (rounds: {})\n\
             ack → notification  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
            self.recipients,
            self.rounds,
            self.median_rate(),
            self.per_second.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
            ms(0.5),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "push",
            "recipients": self.recipients,
            "rounds": self.rounds,
            "notifications_per_s": self.median_rate(),
            "per_round": self.per_second,
            "latency": {
                "p50_us": self.latency.value_at_quantile(0.5),
                "p99_us": self.latency.value_at_quantile(0.99),
                "max_us": self.latency.max(),
            },
        })
    }
}

/// A subscription's keys as a user agent makes them (only their shape
/// matters here: the sink does not decrypt).
fn keys() -> (Vec<u8>, Vec<u8>) {
    use web_push_native::p256;
    let secret =
        std::iter::repeat_with(rand_bytes).find_map(|b| p256::SecretKey::from_slice(&b).ok()).expect("a random scalar");
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    (point.as_bytes().to_vec(), rand_bytes()[..16].to_vec())
}

fn rand_bytes() -> [u8; 32] {
    let (a, b) = (uuid::Uuid::new_v4().into_bytes(), uuid::Uuid::new_v4().into_bytes());
    let mut out = [0; 32];
    out[..16].copy_from_slice(&a);
    out[16..].copy_from_slice(&b);
    out
}

/// The push sink, `senders` signed-in users, and for each `per_sender`
/// recipients subscribed to the sink (endpoint `/push/<i>`) and gone
/// offline, each in a direct conversation with its sender: conversation `i`
/// is sender `i / per_sender`'s. natterd must allow the sink's plain-http
/// loopback endpoints (`NATTER_PUSH_ALLOW_HTTP_LOOPBACK=1`).
async fn offline_recipients(
    target: &Target,
    senders: usize,
    per_sender: usize,
) -> anyhow::Result<(Sink, Vec<crate::User>, Vec<String>)> {
    let sink = Sink::start().await?;
    let from = users(target, "push-from", senders).await?;
    let to = users(target, "push-to", senders * per_sender).await?;
    let mut conversations = Vec::with_capacity(to.len());
    for (i, r) in to.iter().enumerate() {
        let (p256dh, auth) = keys();
        let endpoint = format!("http://{}/push/{i}", sink.addr);
        r.client.register_push(&endpoint, &p256dh, &auth).await.context(
            "registering a subscription to the load generator's push sink (start natterd with \
             NATTER_PUSH_ALLOW_HTTP_LOOPBACK=1)",
        )?;
        let sender = &from[i / per_sender];
        conversations.push(sender.client.open_direct(&r.email).await?.conversation_id);
    }
    for r in to {
        r.client.close().await;
    }
    // natterd has seen them go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((sink, from, conversations))
}

/// Runs the benchmark: `senders` users each write to `per_sender` offline
/// recipients, `rounds` times, `gap` apart. natterd must allow the sink's
/// plain-http loopback endpoints (`NATTER_PUSH_ALLOW_HTTP_LOOPBACK=1`).
///
/// # Errors
/// natterd refuses the subscriptions or the sends; a round's notifications do
/// not all arrive within a minute.
pub async fn push(
    target: &Target,
    senders: usize,
    per_sender: usize,
    rounds: usize,
    gap: Duration,
) -> anyhow::Result<PushReport> {
    let (sink, from, conversations) = offline_recipients(target, senders, per_sender).await?;
    let n = conversations.len();
    let mut report = PushReport { recipients: n, rounds, per_second: Vec::new(), latency: Histogram::new(3)? };
    for round in 0..rounds {
        tokio::time::sleep(gap).await;
        let before = sink.total();
        let started = Instant::now();
        let sends = from.iter().enumerate().map(|(s, sender)| {
            let conversations = &conversations;
            async move {
                let mut acks = Vec::with_capacity(per_sender);
                let first = s * per_sender;
                for (i, conversation) in conversations.iter().enumerate().skip(first).take(per_sender) {
                    let id = format!("push-{round}-{i}");
                    sender.client.send_text(conversation, &id, "are you there?").await?;
                    acks.push((i, Instant::now()));
                }
                anyhow::Ok(acks)
            }
        });
        let mut acked = Vec::with_capacity(n);
        for acks in futures::future::join_all(sends).await {
            acked.extend(acks?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while sink.total() < before + n {
            anyhow::ensure!(Instant::now() < deadline, "round {round}: {} of {n} notifications", sink.total() - before);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let arrivals = sink.arrivals.lock().expect("arrivals");
        let mut last = started;
        for (i, ack) in acked {
            let at = arrivals.at.get(&i).and_then(|v| v.get(round)).copied().context("an arrival per round")?;
            last = last.max(at);
            report.latency.record(at.saturating_duration_since(ack).as_micros() as u64)?;
        }
        report.per_second.push(n as f64 / last.duration_since(started).as_secs_f64());
    }
    Ok(report)
}

/// What a sustained run measured.
pub struct SustainedReport {
    pub recipients: usize,
    pub duration: Duration,
    pub sent: u64,
    pub notifications: usize,
    /// Per recipient: its last message's acknowledgement → the first
    /// notification after it, in µs (at most `push.coalesce_ms` plus the
    /// worker's lag).
    pub drain: Histogram<u64>,
}

impl SustainedReport {
    pub fn sends_per_second(&self) -> f64 {
        self.sent as f64 / self.duration.as_secs_f64()
    }

    pub fn table(&self) -> String {
        let ms = |q: f64| self.drain.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "push, sustained: {} offline recipients, senders closed loop for {:.0} s\n\
             messages/s (acknowledged)        {:>10.0}\n\
             notifications                    {:>10}   (coalesced per recipient)\n\
             last ack → its notification  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
            self.recipients,
            self.duration.as_secs_f64(),
            self.sends_per_second(),
            self.notifications,
            ms(0.5),
            ms(0.99),
            self.drain.max() as f64 / 1000.0,
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "push-sustained",
            "recipients": self.recipients,
            "duration_s": self.duration.as_secs_f64(),
            "sends_per_s": self.sends_per_second(),
            "notifications": self.notifications,
            "drain": {
                "p50_us": self.drain.value_at_quantile(0.5),
                "p99_us": self.drain.value_at_quantile(0.99),
                "max_us": self.drain.max(),
            },
        })
    }
}

/// Every recipient offline while their senders write as fast as natterd
/// acknowledges (each sender one message outstanding, to its recipients in
/// turn) for `duration`: the push worker follows an S1-rate log in which
/// every message is due a notification. Then how long each recipient's last
/// message took to be notified: what the worker's lag adds to
/// `push.coalesce_ms`.
///
/// # Errors
/// natterd refuses the subscriptions or the sends; a recipient's last
/// message is not notified within a minute.
pub async fn push_sustained(
    target: &Target,
    senders: usize,
    per_sender: usize,
    duration: Duration,
) -> anyhow::Result<SustainedReport> {
    anyhow::ensure!(senders > 0 && per_sender > 0, "--senders and --per-sender must be at least 1");
    let (sink, from, conversations) = offline_recipients(target, senders, per_sender).await?;
    let before = sink.total();
    let started = Instant::now();
    let stop = started + duration;
    let sends = from.iter().enumerate().map(|(s, sender)| {
        let conversations = &conversations;
        async move {
            let mut last_ack = vec![None; per_sender];
            let mut sent = 0u64;
            while Instant::now() < stop {
                let k = (sent as usize) % per_sender;
                let i = s * per_sender + k;
                sender.client.send_text(&conversations[i], &format!("sustained-{i}-{sent}"), "still there?").await?;
                last_ack[k] = Some(Instant::now());
                sent += 1;
            }
            anyhow::Ok((s, sent, last_ack))
        }
    });
    let mut last: Vec<Option<Instant>> = vec![None; conversations.len()];
    let mut sent = 0;
    for r in futures::future::join_all(sends).await {
        let (s, n, acks) = r?;
        sent += n;
        for (k, at) in acks.into_iter().enumerate() {
            last[s * per_sender + k] = at;
        }
    }
    let elapsed = started.elapsed();
    let mut drain = Histogram::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, ack) in last.iter().enumerate() {
        let Some(ack) = *ack else { continue };
        let at = loop {
            let found =
                sink.arrivals.lock().expect("arrivals").at.get(&i).and_then(|v| v.iter().find(|t| **t >= ack)).copied();
            if let Some(at) = found {
                break at;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "recipient {i}: the last message was not notified within a minute"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        drain.record(at.duration_since(ack).as_micros() as u64)?;
    }
    Ok(SustainedReport {
        recipients: conversations.len(),
        duration: elapsed,
        sent,
        notifications: sink.total() - before,
        drain,
    })
}
