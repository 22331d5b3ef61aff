//! `natter-loadgen chaos`: natterd killed with SIGKILL every few seconds and
//! restarted, under load, for a number of cycles; then proof that nothing
//! acknowledged was lost and nothing was stored or delivered twice.
//!
//! Users in pairs share a direct conversation and both send to it as fast as
//! acknowledgements come, each message with a fresh `client_msg_id`; a send
//! whose answer was lost to a kill is retried with the same id after
//! reconnecting (the retry must not make a second message). Every
//! acknowledgement (conversation, seq, client_msg_id) is recorded, and every
//! user's feed resumes from its last cursor after each reconnect. At the end:
//! each conversation's history must hold every acknowledged message at its
//! seq, no `client_msg_id` twice, and nothing unacknowledged more than once;
//! each feed must have delivered every message of the conversation exactly
//! once, in seq order, with no gap.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natter_client::{Client, ClientConfig, ClientError, FeedItem, Trust};
use natter_proto::wire;
use serde_json::json;

const PASSWORD: &str = "chaos-password-1";

/// How the run goes.
#[derive(Debug, Clone)]
pub struct ChaosPlan {
    pub natterd: PathBuf,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Users (in pairs).
    pub users: usize,
    pub cycles: usize,
    /// Time between kills.
    pub kill_every: Duration,
    /// More environment for natterd (besides this process's own).
    pub env: Vec<(String, String)>,
    /// natterd nodes on one database (more than one needs PostgreSQL in
    /// `env`): node i listens on `listen`'s port + i; each cycle kills the
    /// next one, and its users go on at another node meanwhile.
    pub nodes: usize,
    /// Every third cycle, this shell command runs too (e.g. restarting
    /// PostgreSQL): the nodes must ride it out.
    pub restart_database: Option<String>,
}

impl ChaosPlan {
    fn node_addr(&self, node: usize) -> SocketAddr {
        SocketAddr::new(self.listen.ip(), self.listen.port() + node as u16)
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.data_dir.join(format!("node-{node}"))
    }
}

/// What the run found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChaosReport {
    pub cycles: usize,
    /// Every send was eventually acknowledged (a send whose answer a kill took
    /// is retried with its id until it is): this many.
    pub acknowledged: u64,
    /// Sends retried after a kill took their answer (each must be stored once).
    pub retried: u64,
    /// Acknowledged messages missing from history or from a recipient's feed.
    pub lost: u64,
    /// A `client_msg_id` stored twice, or a message delivered twice.
    pub duplicated: u64,
    /// Feed deliveries out of seq order or with a gap.
    pub out_of_order: u64,
    pub delivered: u64,
    pub reconnects: u64,
    /// Times `restart_database` ran.
    pub database_restarts: usize,
    pub seconds: f64,
}

impl ChaosReport {
    pub fn table(&self) -> String {
        format!(
            "chaos: {} SIGKILL cycles ({} database restarts) in {:.1} s\n\
             acknowledged   {}\nretried        {}\nlost           {}\nduplicated     {}\n\
             out of order   {}\ndelivered      {}\nreconnects     {}\n",
            self.cycles,
            self.database_restarts,
            self.seconds,
            self.acknowledged,
            self.retried,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.delivered,
            self.reconnects
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "scenario": "chaos", "cycles": self.cycles, "acknowledged": self.acknowledged,
            "retried": self.retried, "lost": self.lost, "duplicated": self.duplicated,
            "out_of_order": self.out_of_order, "delivered": self.delivered, "reconnects": self.reconnects,
            "database_restarts": self.database_restarts, "seconds": self.seconds,
        })
    }
}

/// natterd as a child of the load generator.
struct Natterd {
    child: std::process::Child,
    fingerprint: String,
}

impl Natterd {
    /// Starts natterd in load-test mode on the plan's directory and address
    /// and waits for its "natterd listening on ADDR fingerprint FP" line.
    fn start(plan: &ChaosPlan, node: usize) -> anyhow::Result<Self> {
        // What natterd says goes to a log beside its data (each start appends).
        let log_path = plan.data_dir.join(format!("node-{node}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut child = std::process::Command::new(&plan.natterd)
            .arg("--load-test")
            .arg("--data-dir")
            .arg(plan.node_dir(node))
            .arg("--listen")
            .arg(plan.node_addr(node).to_string())
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", plan.natterd.display()))?;
        let stdout = child.stdout.take().context("natterd's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let fingerprint = line
            .trim()
            .strip_prefix("natterd listening on ")
            .and_then(|rest| rest.split_once(" fingerprint "))
            .map(|(_, fp)| fp.to_owned());
        match fingerprint {
            Some(fingerprint) => Ok(Self { child, fingerprint }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "natterd did not start (its first line was {line:?}; see {}): is {} a natterd data directory for --load-test?",
                    log_path.display(),
                    plan.node_dir(node).display()
                )
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Natterd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One message as a feed delivered it.
#[derive(Debug, Clone)]
struct Delivery {
    seq: u64,
}

#[derive(Default)]
struct Agent {
    /// client_msg_id → seq, of this user's acknowledged sends.
    acked: HashMap<String, u64>,
    /// What the feed delivered in the conversation, in order.
    delivered: Vec<Delivery>,
    cursor: u64,
    /// Sending is over (nothing pending); only the feed reads.
    idle: bool,
    /// Sends whose answer a broken connection took, sent again with their id.
    retried: u64,
}

struct Shared {
    /// One per node, same certificate.
    configs: Vec<ClientConfig>,
    /// No new sends.
    stop: AtomicBool,
    /// Checked: close.
    done: AtomicBool,
    reconnects: AtomicU64,
}

/// Connects with `token` to node `home`, or the next that answers while it
/// is down, retrying until `deadline`.
async fn resume(shared: &Shared, home: usize, token: &str, deadline: Instant) -> anyhow::Result<Client> {
    let n = shared.configs.len();
    let mut attempt = 0;
    loop {
        let mut config = shared.configs[(home + attempt) % n].clone();
        config.session_token = Some(token.to_owned());
        config.connect_timeout = Duration::from_secs(1);
        match Client::connect(&config).await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                attempt += 1;
                if attempt % n == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => return Err(e).context("natterd did not come back"),
        }
    }
}

/// One user: sends to the conversation and reads its feed, reconnecting
/// after every kill (the feed from its last cursor, an unanswered send with
/// its id again). When the run stops, a pending send is still finished; then
/// the feed keeps reading until `done`.
async fn agent(
    shared: Arc<Shared>,
    me: usize,
    token: String,
    conv: String,
    state: Arc<Mutex<Agent>>,
) -> anyhow::Result<()> {
    let mut next = 0u64;
    let mut pending: Option<String> = None;
    loop {
        state.lock().expect("agent").idle = false;
        let client = resume(&shared, me, &token, Instant::now() + Duration::from_secs(30)).await?;
        let cursor = state.lock().expect("agent").cursor;
        let Ok((mut feed, _)) = client.sync(Some(cursor)).await else {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let reader = {
            let (state, conv) = (state.clone(), conv.clone());
            tokio::spawn(async move {
                while let Some(Ok(item)) = feed.next().await {
                    let mut s = state.lock().expect("agent");
                    if let Some(c) = item.cursor() {
                        s.cursor = s.cursor.max(c);
                    }
                    if let FeedItem::Message { message, .. } = item {
                        if message.conversation_id == conv {
                            s.delivered.push(Delivery { seq: message.seq });
                        }
                    }
                }
            })
        };
        let mut broken = false;
        while !(shared.stop.load(Ordering::Relaxed) && pending.is_none()) {
            let id = pending.clone().unwrap_or_else(|| format!("u{me}-{next}"));
            pending = Some(id.clone());
            let text = format!("chaos {id}");
            let send = client.send_text(&conv, &id, &text);
            match tokio::time::timeout(Duration::from_secs(5), send).await {
                Ok(Ok(sent)) => {
                    state.lock().expect("agent").acked.insert(id, sent.seq);
                    pending = None;
                    next += 1;
                }
                // A typed refusal on a live connection (UNAVAILABLE while the
                // store starts, SHUTTING_DOWN, OVERLOADED): wait, same id again.
                Ok(Err(ClientError::Server { retry_after_ms, .. })) => {
                    let wait = Duration::from_millis(u64::from(retry_after_ms).clamp(20, 1000));
                    tokio::time::sleep(wait).await;
                }
                // The connection died with it, or it hung: reconnect, same id again.
                _ => {
                    broken = true;
                    state.lock().expect("agent").retried += 1;
                    break;
                }
            }
        }
        if !broken {
            state.lock().expect("agent").idle = true;
            while !reader.is_finished() {
                if shared.done.load(Ordering::Relaxed) {
                    reader.abort();
                    client.close().await;
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        reader.abort();
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every message of a conversation: client_msg_id and seq, ascending.
async fn history(client: &Client, conv: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut all = Vec::new();
    // Seq 1 is the conversation's start, never a message: after it is all
    // of them (`after_seq` 0 would mean "the newest page").
    let mut after = 1;
    loop {
        let page = client
            .history(wire::GetHistory { conversation_id: conv.into(), before_seq: 0, after_seq: after, limit: 500 })
            .await?;
        let Some(last) = page.messages.last() else { break };
        after = last.seq;
        all.extend(page.messages.iter().map(|m| (m.client_msg_id.clone(), m.seq)));
        if !page.has_more {
            break;
        }
    }
    Ok(all)
}

/// Runs the plan: starts natterd on a new load-test directory, kills and
/// restarts it `cycles` times under load, then checks.
///
/// # Errors
/// natterd cannot be started or does not come back, or a client fails in a
/// way the run cannot recover from.
pub async fn chaos(plan: &ChaosPlan) -> anyhow::Result<ChaosReport> {
    if plan.users < 2 || !plan.users.is_multiple_of(2) {
        bail!("--users must be an even number, at least 2 (they chat in pairs)");
    }
    if !is_new(&plan.data_dir) {
        bail!("{} is not empty: chaos starts from a new directory", plan.data_dir.display());
    }
    if plan.nodes == 0
        || (plan.nodes > 1 && !plan.env.iter().any(|(k, v)| k == "NATTER_STORE_BACKEND" && v == "postgres"))
    {
        bail!("several nodes share a PostgreSQL database: give NATTER_STORE_BACKEND=postgres and NATTER_STORE_URL");
    }
    let started = Instant::now();
    std::fs::create_dir_all(plan.node_dir(0))?;
    let mut nodes = vec![Natterd::start(plan, 0)?];
    // Every node serves the first one's certificate and server key (clients
    // pin one fingerprint; the database knows one key).
    for node in 1..plan.nodes {
        let dir = plan.node_dir(node);
        std::fs::create_dir_all(dir.join("tls"))?;
        // `LOAD-TEST` marks a load-test data directory (natter_server::LOAD_TEST_MARKER):
        // one holding keys but no mark is refused.
        for file in ["LOAD-TEST", "secret.key", "tls/ca.pem", "tls/cert.pem", "tls/key.pem"] {
            let from = plan.node_dir(0).join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(file)).with_context(|| format!("copying {}", from.display()))?;
            }
        }
        nodes.push(Natterd::start(plan, node)?);
    }
    let trust = Trust::pin(&nodes[0].fingerprint)?;
    let configs = (0..plan.nodes)
        .map(|node| {
            let mut config = ClientConfig::new(plan.node_addr(node), trust.clone());
            config.client_name = format!("natter-loadgen-chaos/{}", env!("CARGO_PKG_VERSION"));
            config
        })
        .collect();
    let shared = Arc::new(Shared {
        configs,
        stop: AtomicBool::new(false),
        done: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
    });

    // Users, their tokens, and a conversation per pair.
    let mut tokens = Vec::with_capacity(plan.users);
    let mut convs = Vec::with_capacity(plan.users);
    for pair in 0..plan.users / 2 {
        let (a, b) = (format!("chaos-{pair}-a@loadgen.invalid"), format!("chaos-{pair}-b@loadgen.invalid"));
        let mut ids = Vec::new();
        for email in [&a, &b] {
            let c = Client::connect(&shared.configs[0]).await?;
            c.signup(email, PASSWORD, "").await?;
            let (token, _) = c.login(email, PASSWORD, "chaos").await?;
            ids.push((c, token));
        }
        let conv = ids[0].0.open_direct(&b).await?.conversation_id;
        for (c, token) in ids {
            c.close().await;
            tokens.push(token);
            convs.push(conv.clone());
        }
    }
    let states: Vec<_> = (0..plan.users).map(|_| Arc::new(Mutex::new(Agent::default()))).collect();
    let agents: Vec<_> = (0..plan.users)
        .map(|i| tokio::spawn(agent(shared.clone(), i, tokens[i].clone(), convs[i].clone(), states[i].clone())))
        .collect();

    let mut database_restarts = 0;
    for cycle in 0..plan.cycles {
        tokio::time::sleep(plan.kill_every).await;
        let node = cycle % plan.nodes;
        nodes[node].kill9();
        if let Some(cmd) = plan.restart_database.as_deref().filter(|_| cycle % 3 == 2) {
            let status = tokio::process::Command::new("sh").arg("-c").arg(cmd).status().await?;
            if !status.success() {
                bail!("the database restart command failed ({status}): {cmd}");
            }
            database_restarts += 1;
        }
        nodes[node] = Natterd::start(plan, node)?;
    }
    tokio::time::sleep(plan.kill_every.min(Duration::from_secs(1))).await;
    shared.stop.store(true, Ordering::Relaxed);
    // Every agent finishes its pending send (natterd stays up now).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !states.iter().all(|s| s.lock().expect("agent").idle) {
        if Instant::now() > deadline {
            bail!("some senders never got an answer after natterd came back for good");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // History as natterd has it, read by each pair's first member.
    let mut histories: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for pair in 0..plan.users / 2 {
        let client = resume(&shared, 0, &tokens[pair * 2], Instant::now() + Duration::from_secs(30)).await?;
        histories.insert(convs[pair * 2].clone(), history(&client, &convs[pair * 2]).await?);
        client.close().await;
    }
    // The feeds catch up with it (or the check below says what is missing).
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught_up = |i: usize| {
        let newest = histories[&convs[i]].last().map_or(0, |(_, seq)| *seq);
        states[i].lock().expect("agent").delivered.iter().any(|d| d.seq == newest) || newest == 0
    };
    while !(0..plan.users).all(caught_up) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.done.store(true, Ordering::Relaxed);
    for a in agents {
        match tokio::time::timeout(Duration::from_secs(10), a).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context("a chaos user failed")),
            Ok(Err(e)) => bail!("a chaos user panicked: {e}"),
            Err(_) => bail!("a chaos user did not stop"),
        }
    }

    let mut report = ChaosReport { cycles: plan.cycles, database_restarts, ..ChaosReport::default() };
    report.reconnects = shared.reconnects.load(Ordering::Relaxed);
    for (i, state) in states.iter().enumerate() {
        let s = state.lock().expect("agent");
        let stored = &histories[&convs[i]];
        let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
        for (id, seq) in stored {
            by_id.entry(id.as_str()).or_default().push(*seq);
        }
        report.acknowledged += s.acked.len() as u64;
        report.retried += s.retried;
        for (id, seq) in &s.acked {
            match by_id.get(id.as_str()).map(Vec::as_slice) {
                Some([one]) if one == seq => {}
                Some([_]) | None => report.lost += 1,
                Some(_) => {}
            }
        }
        // Each pair's history is counted once, by its first member.
        if i % 2 == 0 {
            report.duplicated += by_id.values().map(|seqs| seqs.len() as u64 - 1).sum::<u64>();
        }
        // The feed: every stored message once, in order, no gap.
        report.delivered += s.delivered.len() as u64;
        let mut seen = std::collections::HashSet::new();
        let mut last = 0;
        for d in &s.delivered {
            if !seen.insert(d.seq) {
                report.duplicated += 1;
                continue;
            }
            if d.seq <= last {
                report.out_of_order += 1;
            }
            last = last.max(d.seq);
        }
        for (_, seq) in stored {
            if !seen.contains(seq) {
                report.lost += 1;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    drop(nodes);
    Ok(report)
}

fn is_new(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}
