//! natter-loadgen: drives natterd through the client SDK and reports throughput
//! and latency percentiles (HDR histograms) as a table and, with `--json`, as
//! JSON. See `natter-loadgen --help`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use natter_client::e2ee::Durability;
use natter_client::{ClientConfig, Trust};
use natter_loadgen::{Counters, Pace, Target, Timing};

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
    /// Local UDP sockets to spread connections over.
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, clap::Args)]
struct Load {
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Outstanding sends per sender (closed loop).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Total sends per second instead (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

/// `--device-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceState {
    Durable,
    Volatile,
}

#[derive(Debug, clap::Args)]
struct E2ee {
    /// End-to-end encrypted conversations: every message encrypted and
    /// decrypted by the SDK's MLS devices (closed loop only).
    #[arg(long)]
    e2ee: bool,
    /// With --e2ee: `volatile` keeps the devices' MLS state without fsync
    /// (the devices here stand for as many machines with a disk each), so the
    /// figure is natterd's and MLS's, not this machine's one disk.
    #[arg(long, value_enum, default_value_t = DeviceState::Durable)]
    device_state: DeviceState,
}

impl E2ee {
    /// The device state's durability when encrypted; an error for a
    /// plaintext run given a device state, or an open-loop encrypted one.
    fn durability(&self, load: &Load) -> anyhow::Result<Option<Durability>> {
        if !self.e2ee {
            if self.device_state != DeviceState::Durable {
                bail!("--device-state goes with --e2ee");
            }
            return Ok(None);
        }
        if load.rate.is_some() {
            bail!("--e2ee is closed-loop only (--in-flight)");
        }
        Ok(Some(match self.device_state {
            DeviceState::Durable => Durability::Durable,
            DeviceState::Volatile => Durability::Volatile,
        }))
    }
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// S1: users in pairs, each sending to its partner.
    DmPairs {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[command(flatten)]
        e2ee: E2ee,
        #[command(flatten)]
        load: Load,
    },
    /// The time to create an end-to-end encrypted group: the creator claims
    /// every member's KeyPackage and commits; every member joins.
    E2eeGroup {
        #[arg(long, default_value_t = 100)]
        members: usize,
    },
    /// S2: one group, every member connected and receiving; some send.
    GroupFanout {
        #[arg(long, default_value_t = 50)]
        members: usize,
        #[arg(long, default_value_t = 5)]
        senders: usize,
        #[command(flatten)]
        e2ee: E2ee,
        #[command(flatten)]
        load: Load,
    },
    /// Baseline: the dm-pairs load over a bare QUIC relay started in this
    /// process (no natter at all), for "what fraction of QUIC" comparisons.
    QuicRelay {
        #[arg(long, default_value_t = 100)]
        users: usize,
        #[command(flatten)]
        load: Load,
    },
    /// A realistic blend per user: messages, typing, read receipts, history
    /// pages and reconnects, at a total rate; figures per operation type.
    Mixed {
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// Operations per second over all users.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Transfers: upload and download throughput against raw QUIC, natterd's
    /// memory during an upload, and S1 chat latency with and without one.
    /// natterd must accept files of --size-mib (NATTER_MEDIA_MAX_FILE_BYTES,
    /// NATTER_MEDIA_QUOTA_BYTES).
    Media {
        /// MiB per transfer.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Chat users (in pairs), open loop at --rate sends per second.
        #[arg(long, default_value_t = 20)]
        users: usize,
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Unmeasured chat seconds first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Measured chat seconds: keep them inside the upload's time.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
        /// natterd's pid, to read its resident memory from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Web Push: offline recipients subscribed to a push sink in this
    /// process; each round every sender writes once to each of its
    /// recipients. Notifications per second and ack → notification latency.
    /// natterd must run with NATTER_PUSH_ALLOW_HTTP_LOOPBACK=1.
    Push {
        #[arg(long, default_value_t = 10)]
        senders: usize,
        /// Offline recipients per sender (one direct conversation each).
        #[arg(long, default_value_t = 50)]
        per_sender: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds between rounds: more than natterd's push.coalesce_ms.
        #[arg(long, default_value_t = 3.5)]
        gap: f64,
        /// Instead of rounds: every sender writes closed loop for this many
        /// seconds (S1's rate, every recipient offline); then how long each
        /// recipient's last message took to be notified.
        #[arg(long, value_name = "SECONDS", conflicts_with_all = ["rounds", "gap"])]
        sustained: Option<f64>,
    },
    /// Search: a corpus of --messages in --conversations groups written
    /// through natterd, then one member of --member-of of them searching:
    /// index catch-up and query latency by kind (word, two words, phrase,
    /// prefix).
    Search {
        #[arg(long, default_value_t = 1000)]
        conversations: usize,
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Groups the searcher is in.
        #[arg(long, default_value_t = 50)]
        member_of: usize,
        /// Users writing the corpus (each group has two of them).
        #[arg(long, default_value_t = 20)]
        writers: usize,
        /// Outstanding sends per writer.
        #[arg(long, default_value_t = 8)]
        in_flight: usize,
        #[arg(long, default_value_t = 2000)]
        queries: usize,
    },
    /// Chaos: natterd (started here, in load-test mode on a new --data-dir)
    /// is killed with SIGKILL every --kill-every seconds and restarted,
    /// --cycles times, while users in pairs send; then every acknowledged
    /// message must be in history once and in every feed once, in order.
    /// NATTER_* variables (e.g. NATTER_STORE_BACKEND and NATTER_STORE_URL
    /// for PostgreSQL) reach natterd. --server is where it listens.
    Chaos {
        /// The natterd binary.
        #[arg(long, value_name = "PATH")]
        natterd: PathBuf,
        /// A new directory for natterd's data.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        users: usize,
        #[arg(long, default_value_t = 10)]
        cycles: usize,
        /// Seconds between kills.
        #[arg(long, default_value_t = 2.0)]
        kill_every: f64,
        /// natterd nodes on one PostgreSQL database (NATTER_STORE_BACKEND=postgres,
        /// NATTER_STORE_URL), on --server's port and the next ones; each cycle
        /// kills the next node, whose users carry on at another.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// A shell command that restarts the database, run every third cycle
        /// (e.g. "pg_ctlcluster 15 main restart").
        #[arg(long, value_name = "COMMAND")]
        restart_database: Option<String>,
    },
    /// S3: authenticated idle connections; natterd's memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// natterd's pid, to read its resident memory from /proc.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

fn pace(load: &Load) -> Pace {
    match load.rate {
        Some(rate) => Pace::Open { rate },
        None => Pace::Closed { in_flight: load.in_flight },
    }
}

fn timing(load: &Load) -> Timing {
    Timing { warmup: Duration::from_secs_f64(load.warmup), duration: Duration::from_secs_f64(load.duration) }
}

/// Prints progress every second: a bar on a terminal, plain lines otherwise.
fn progress(counters: Arc<Counters>, total: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(total.as_secs().max(1));
            b.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
                    .expect("valid template"),
            );
            b
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut secs = 0;
        loop {
            tick.tick().await;
            secs += 1;
            let msg = format!(
                "sent {} delivered {} errors {}",
                counters.sent.load(Ordering::Relaxed),
                counters.delivered.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed)
            );
            match &bar {
                Some(b) => {
                    b.set_position(secs);
                    b.set_message(msg);
                }
                None => eprintln!("t={secs}s {msg}"),
            }
        }
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Scenario::QuicRelay { users, load } = &args.scenario {
        let (addr, cert, _relay) = natter_loadgen::relay::start_relay("127.0.0.1:0".parse()?)?;
        let r = natter_loadgen::relay::relay_pairs(addr, cert, *users, load.in_flight, timing(load), load.size).await?;
        print!("{}", r.table());
        if let Some(path) = &args.json {
            std::fs::write(path, r.json().to_string()).with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    if let Scenario::Chaos { natterd, data_dir, users, cycles, kill_every, nodes, restart_database } = &args.scenario {
        let plan = natter_loadgen::chaos::ChaosPlan {
            natterd: natterd.clone(),
            data_dir: data_dir.clone(),
            listen: args.server,
            users: *users,
            cycles: *cycles,
            kill_every: Duration::from_secs_f64(*kill_every),
            // natterd gets this process's environment (NATTER_STORE_URL…) as it is.
            env: std::env::vars().filter(|(k, _)| k.starts_with("NATTER_")).collect(),
            nodes: *nodes,
            restart_database: restart_database.clone(),
        };
        let r = natter_loadgen::chaos::chaos(&plan).await?;
        print!("{}", r.table());
        if let Some(path) = &args.json {
            std::fs::write(path, r.json().to_string()).with_context(|| format!("writing {}", path.display()))?;
        }
        if r.lost > 0 || r.duplicated > 0 || r.out_of_order > 0 {
            bail!("chaos found {} lost, {} duplicated, {} out of order", r.lost, r.duplicated, r.out_of_order);
        }
        return Ok(());
    }
    let trust = match (&args.pin, &args.ca) {
        (Some(pin), _) => Trust::pin(pin)?,
        (None, Some(ca)) => Trust::ca_file(ca)?,
        (None, None) => bail!("pass --pin sha256:… (printed by natterd) or --ca PEM"),
    };
    let mut config = ClientConfig::new(args.server, trust);
    config.client_name = format!("natter-loadgen/{}", env!("CARGO_PKG_VERSION"));
    let target = Target { config, endpoints: args.endpoints };
    let counters = Arc::new(Counters::default());
    let (table, json) = match args.scenario {
        Scenario::DmPairs { users, e2ee, load } if e2ee.e2ee => {
            let durability = e2ee.durability(&load)?.context("encrypted")?;
            let t = timing(&load);
            let p = progress(counters.clone(), t.warmup + t.duration);
            let r = natter_loadgen::e2ee::dm_pairs(&target, users, load.in_flight, t, load.size, durability, counters)
                .await?;
            p.abort();
            (r.table(), r.json())
        }
        Scenario::DmPairs { users, e2ee, load } => {
            e2ee.durability(&load)?;
            let t = timing(&load);
            let p = progress(counters.clone(), t.warmup + t.duration);
            let r = natter_loadgen::dm_pairs(&target, users, pace(&load), t, load.size, counters).await?;
            p.abort();
            (r.table(), r.json())
        }
        Scenario::E2eeGroup { members } => {
            let r = natter_loadgen::e2ee::group_create(&target, members).await?;
            (r.table(), r.json())
        }
        Scenario::GroupFanout { members, senders, e2ee, load } => {
            let durability = e2ee.durability(&load)?;
            let t = timing(&load);
            let p = progress(counters.clone(), t.warmup + t.duration);
            let r = match durability {
                Some(d) => {
                    natter_loadgen::e2ee::group_fanout(
                        &target,
                        members,
                        senders,
                        load.in_flight,
                        t,
                        load.size,
                        d,
                        counters,
                    )
                    .await?
                }
                None => {
                    natter_loadgen::group_fanout(&target, members, senders, pace(&load), t, load.size, counters).await?
                }
            };
            p.abort();
            (r.table(), r.json())
        }
        Scenario::QuicRelay { .. } | Scenario::Chaos { .. } => unreachable!("handled above"),
        Scenario::Mixed { users, rate, duration } => {
            let r = natter_loadgen::mixed(&target, users, rate, Duration::from_secs_f64(duration)).await?;
            (r.table(), r.json())
        }
        Scenario::Media { size_mib, users, rate, warmup, duration, server_pid } => {
            let t = Timing { warmup: Duration::from_secs_f64(warmup), duration: Duration::from_secs_f64(duration) };
            let r = natter_loadgen::media::media(&target, size_mib * 1024 * 1024, users, rate, t, server_pid, counters)
                .await?;
            (r.table(), r.json())
        }
        Scenario::Push { senders, per_sender, sustained: Some(seconds), .. } => {
            let r =
                natter_loadgen::push::push_sustained(&target, senders, per_sender, Duration::from_secs_f64(seconds))
                    .await?;
            (r.table(), r.json())
        }
        Scenario::Push { senders, per_sender, rounds, gap, sustained: None } => {
            let r =
                natter_loadgen::push::push(&target, senders, per_sender, rounds, Duration::from_secs_f64(gap)).await?;
            (r.table(), r.json())
        }
        Scenario::Search { conversations, messages, member_of, writers, in_flight, queries } => {
            let load =
                natter_loadgen::search::SearchLoad { conversations, messages, member_of, writers, in_flight, queries };
            let r = natter_loadgen::search::search(&target, load).await?;
            (r.table(), r.json())
        }
        Scenario::Idle { connections, duration, server_pid } => {
            let r = natter_loadgen::idle(&target, connections, Duration::from_secs_f64(duration), server_pid).await?;
            (r.table(), r.json())
        }
    };
    print!("{table}");
    if let Some(path) = args.json {
        std::fs::write(&path, json.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
