//! natter-loadgen: drives natterd through the client SDK (never a shortcut into
//! the server) and reports throughput and latency percentiles.
//!
//! Today it has one scenario, `seq-send`: one sender, one recipient, sequential
//! sends (each waits for its durable acknowledgement), measuring send→ack and
//! send→deliver latency. Every run is bounded by `--messages` and `--max-seconds`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use natter_client::{Client, ClientConfig, FeedItem, Trust};

#[derive(Debug, Parser)]
#[command(name = "natter-loadgen", version, about)]
struct Args {
    /// natterd address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    server: SocketAddr,
    /// The fingerprint natterd printed.
    #[arg(long, value_name = "sha256:HEX", conflicts_with = "ca")]
    pin: Option<String>,
    /// A CA certificate to trust instead.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Also write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Sequential sends from one client to one recipient.
    SeqSend {
        /// Messages to send after the warm-up.
        #[arg(long, default_value_t = 2000)]
        messages: u64,
        /// Unmeasured messages sent first.
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        /// Stop after this long even if not all messages were sent.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

const PASSWORD: &str = "loadgen password 0123456789";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let trust = match (&args.pin, &args.ca) {
        (Some(pin), _) => Trust::pin(pin)?,
        (None, Some(ca)) => Trust::ca_file(ca)?,
        (None, None) => bail!("pass --pin sha256:… (printed by natterd) or --ca PEM"),
    };
    let mut config = ClientConfig::new(args.server, trust);
    config.client_name = format!("natter-loadgen/{}", env!("CARGO_PKG_VERSION"));
    match args.scenario {
        Scenario::SeqSend { messages, warmup, max_seconds, size } => {
            let report = seq_send(&config, messages, warmup, Duration::from_secs(max_seconds), size).await?;
            print!("{}", report.table());
            if let Some(path) = args.json {
                std::fs::write(&path, report.json().to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

async fn signed_in(config: &ClientConfig, email: &str) -> anyhow::Result<Client> {
    let c = Client::connect(config).await?;
    c.signup(email, PASSWORD, "").await?;
    c.login(email, PASSWORD, "loadgen").await?;
    Ok(c)
}

struct Report {
    sent: u64,
    elapsed: Duration,
    ack: Histogram<u64>,
    deliver: Histogram<u64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }

    fn table(&self) -> String {
        let mut out = format!(
            "seq-send: {} messages in {:.2} s = {:.0} msg/s\n{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.rate(),
            "latency (µs)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        );
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
        out
    }

    fn json(&self) -> serde_json::Value {
        let pct = |h: &Histogram<u64>| {
            serde_json::json!({
                "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
                "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
                "count": h.len(),
            })
        };
        serde_json::json!({
            "scenario": "seq-send",
            "messages": self.sent,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "messages_per_s": self.rate(),
            "send_to_ack": pct(&self.ack),
            "send_to_deliver": pct(&self.deliver),
        })
    }
}

async fn seq_send(
    config: &ClientConfig,
    messages: u64,
    warmup: u64,
    max: Duration,
    size: usize,
) -> anyhow::Result<Report> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (a, b) = (format!("lg-{run}-a@loadgen.invalid"), format!("lg-{run}-b@loadgen.invalid"));
    let sender = signed_in(config, &a).await?;
    let recipient = signed_in(config, &b).await?;
    let conv = sender.open_direct(&b).await?;
    let (mut feed, _) = recipient.sync(None).await?;
    // The recipient notes when each seq arrives; the sender does not wait for it.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(u64::MAX);
    let receiver = tokio::spawn(async move {
        let mut arrivals = std::collections::HashMap::new();
        let mut newest = 0;
        loop {
            if newest >= *done_rx.borrow() {
                break;
            }
            tokio::select! {
                item = feed.next() => match item {
                    Some(Ok(FeedItem::Message { message, .. })) => {
                        newest = newest.max(message.seq);
                        arrivals.insert(message.seq, Instant::now());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => bail!("the recipient's feed ended"),
                },
                _ = done_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => bail!("no delivery for 10 s"),
            }
        }
        Ok(arrivals)
    });
    let text = "x".repeat(size.max(1));
    let mut ack = Histogram::<u64>::new(3)?;
    let mut deliver = Histogram::<u64>::new(3)?;
    let mut sends = Vec::new();
    let deadline = Instant::now() + max;
    let mut start = Instant::now();
    let mut last_seq = 0;
    for i in 0..warmup + messages {
        if i == warmup {
            start = Instant::now();
        }
        let t0 = Instant::now();
        let s = sender.send_text(&conv.conversation_id, &format!("{run}-{i}"), &text).await?;
        last_seq = s.seq;
        if i >= warmup {
            ack.record(t0.elapsed().as_micros() as u64)?;
            sends.push((s.seq, t0));
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let elapsed = start.elapsed();
    let _ = done_tx.send(last_seq);
    let arrivals = receiver.await??;
    for (seq, t0) in &sends {
        let at = arrivals.get(seq).with_context(|| format!("message {seq} was never delivered"))?;
        deliver.record(at.duration_since(*t0).as_micros() as u64)?;
    }
    Ok(Report { sent: sends.len() as u64, elapsed, ack, deliver })
}
