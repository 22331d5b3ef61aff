//! `natter-loadgen dm-pairs --e2ee` and `e2ee-group`: the same loads over
//! end-to-end encrypted conversations, every message encrypted and decrypted
//! by the SDK's real MLS devices (their state in temporary directories).
//!
//! An MLS device's state is one SQLite file used by one thread at a time, so
//! the users are split over `SHARDS` threads, each a current-thread runtime
//! with its devices, clients and tasks (the plaintext scenarios use the
//! multi-threaded runtime's two workers: the same parallelism).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use natter_client::e2ee::{Durability, MlsDevice, Opened};
use natter_client::{Client, FeedItem};

use super::{users, Counters, Report, Run, Target, Timing};

/// Threads the devices are spread over.
const SHARDS: usize = 2;

/// A user with their MLS device, ready to encrypt.
struct Device {
    client: Rc<Client>,
    device: Rc<MlsDevice>,
    _dir: tempfile::TempDir,
}

async fn devices(
    target: &Target,
    prefix: &str,
    n: usize,
    durability: Durability,
) -> anyhow::Result<Vec<(String, Device)>> {
    let mut out = Vec::with_capacity(n);
    for u in users(target, prefix, n).await? {
        let dir = tempfile::tempdir()?;
        let id = u.client.identity().context("signed in")?;
        let device = MlsDevice::open_with(dir.path(), &id.user_id, &id.device_id, durability)?;
        device.register(&u.client).await?;
        device.top_up(&u.client).await?;
        out.push((u.email, Device { client: Rc::new(u.client), device: Rc::new(device), _dir: dir }));
    }
    Ok(out)
}

/// S1 over encrypted conversations: users in pairs, each sending to its
/// partner, `in_flight` sends outstanding per sender.
///
/// # Errors
/// When setting up users, devices or conversations fails.
pub async fn dm_pairs(
    target: &Target,
    users_n: usize,
    in_flight: usize,
    timing: Timing,
    text_size: usize,
    durability: Durability,
    counters: Arc<Counters>,
) -> anyhow::Result<Report> {
    if users_n < 2 * SHARDS || !users_n.is_multiple_of(2 * SHARDS) {
        bail!("dm-pairs --e2ee needs a number of users that is a multiple of {}", 2 * SHARDS);
    }
    // Two meeting points: every shard set up (devices, groups), then the run's
    // clock made, so that setting up never counts as load.
    let set_up = Arc::new(std::sync::Barrier::new(SHARDS + 1));
    let go = Arc::new(std::sync::Barrier::new(SHARDS + 1));
    let shared: Arc<std::sync::Mutex<Option<Arc<Run>>>> = Arc::default();
    // When the last sender stopped (draining the deliveries is not load).
    let ended: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        let (target, set_up, go, shared, ended) =
            (target.clone(), set_up.clone(), go.clone(), shared.clone(), ended.clone());
        shards.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let pairs = set_up_pairs(&target, shard, users_n / SHARDS, durability).await;
                set_up.wait();
                go.wait();
                let run = shared.lock().expect("run lock").clone().context("the run")?;
                load_pairs(pairs?, in_flight, &run, timing, &ended).await
            })
        }));
    }
    let wait = |b: Arc<std::sync::Barrier>| tokio::task::spawn_blocking(move || b.wait());
    wait(set_up).await?;
    let run = Run::new(timing, counters, text_size);
    *shared.lock().expect("run lock") = Some(run.clone());
    wait(go).await?;
    let measure_start = run.start + timing.warmup;
    for s in shards {
        tokio::task::spawn_blocking(move || s.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a load shard panicked"))??;
    }
    let last = ended.lock().expect("end lock").unwrap_or_else(Instant::now);
    let measured = last.saturating_duration_since(measure_start);
    Ok(run.report("dm-pairs-e2ee", measured, 1))
}

/// One shard's users and devices, paired in encrypted conversations.
struct Pairs {
    people: Vec<(String, Device)>,
    /// (sender, its device, conversation).
    plans: Vec<(Rc<Client>, Rc<MlsDevice>, String)>,
}

async fn set_up_pairs(target: &Target, shard: usize, n: usize, durability: Durability) -> anyhow::Result<Pairs> {
    let people = devices(target, &format!("e2ee{shard}"), n, durability).await?;
    let mut plans = Vec::new();
    for pair in people.chunks(2) {
        let (a, b) = (&pair[0].1, &pair[1].1);
        let conv = a.client.open_direct_with(&pair[1].0, true).await?;
        a.device.create_group(&a.client, &conv).await?;
        b.device.catch_up(&b.client, &conv.conversation_id).await?;
        plans.push((a.client.clone(), a.device.clone(), conv.conversation_id.clone()));
        plans.push((b.client.clone(), b.device.clone(), conv.conversation_id));
    }
    Ok(Pairs { people, plans })
}

async fn load_pairs(
    pairs: Pairs,
    in_flight: usize,
    run: &Arc<Run>,
    timing: Timing,
    ended: &std::sync::Mutex<Option<Instant>>,
) -> anyhow::Result<()> {
    // This shard's own counts: it stops receiving only when its own messages
    // all arrived (the run's counters mix both shards).
    let sent = Rc::new(std::cell::Cell::new(0u64));
    let delivered = Rc::new(std::cell::Cell::new(0u64));
    let receivers = decrypting_receivers(&pairs.people, run, &delivered).await?;
    let until = run.start + timing.warmup + timing.duration;
    send_until(pairs.plans, in_flight, run, until, &sent).await;
    {
        let mut last = ended.lock().expect("end lock");
        let now = Instant::now();
        *last = Some(last.map_or(now, |t| t.max(now)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.get() < sent.get() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in receivers {
        r.abort();
    }
    drop(pairs.people);
    Ok(())
}

/// A task per device that follows its feed and decrypts every message from
/// others, counting what it opened.
async fn decrypting_receivers(
    people: &[(String, Device)],
    run: &Arc<Run>,
    delivered: &Rc<std::cell::Cell<u64>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut receivers = Vec::new();
    for (_, d) in people {
        let me = d.client.identity().context("signed in")?.user_id;
        let (mut feed, _) = d.client.sync(None).await?;
        let (run, device, delivered) = (run.clone(), d.device.clone(), delivered.clone());
        receivers.push(tokio::task::spawn_local(async move {
            while let Some(item) = feed.next().await {
                let Ok(FeedItem::Message { message, .. }) = item else { continue };
                if message.sender_user_id == me {
                    continue;
                }
                match device.open_message(&message) {
                    Ok(Opened::Text { text, .. }) => {
                        delivered.set(delivered.get() + 1);
                        run.delivered(&text);
                    }
                    Ok(other) => run.error(format!("not a text: {other:?}")),
                    Err(e) => run.error(format!("decrypting: {e}")),
                }
            }
        }));
    }
    Ok(receivers)
}

/// Closed loop: `in_flight` encrypted sends outstanding per (sender,
/// conversation) until `until`.
async fn send_until(
    plans: Vec<(Rc<Client>, Rc<MlsDevice>, String)>,
    in_flight: usize,
    run: &Arc<Run>,
    until: Instant,
    sent: &Rc<std::cell::Cell<u64>>,
) {
    let senders = plans.into_iter().flat_map(|(client, device, conv)| {
        (0..in_flight.max(1)).map(move |_| {
            let (run, client, device, conv, sent) =
                (run.clone(), client.clone(), device.clone(), conv.clone(), sent.clone());
            async move {
                while Instant::now() < until {
                    let (text, at) = run.text();
                    let outcome = device.send_text(&client, &conv, &text).await;
                    if outcome.is_ok() {
                        sent.set(sent.get() + 1);
                    }
                    run.acked(at, outcome.map(|_| ()).map_err(|e| e.to_string()));
                }
            }
        })
    });
    futures::future::join_all(senders).await;
}

/// S2 over an encrypted group: `members` (one device each) in one group made
/// by the first, every member receiving and decrypting, the first
/// `senders_n` sending closed-loop with `in_flight` outstanding each. One
/// thread holds every device (a group's devices share its order).
///
/// # Errors
/// When setting up users, devices or the group fails.
#[allow(clippy::too_many_arguments)]
pub async fn group_fanout(
    target: &Target,
    members: usize,
    senders_n: usize,
    in_flight: usize,
    timing: Timing,
    text_size: usize,
    durability: Durability,
    counters: Arc<Counters>,
) -> anyhow::Result<Report> {
    if members < 2 || senders_n == 0 || senders_n > members {
        bail!("group-fanout --e2ee needs at least 2 members and 1..=members senders");
    }
    let target = target.clone();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let people = devices(&target, "e2eefan", members, durability).await?;
            let emails: Vec<&str> = people[1..].iter().map(|(e, _)| e.as_str()).collect();
            let creator = &people[0].1;
            let conv = creator.client.create_group_with("loadgen encrypted fan-out", &emails, true).await?;
            creator.device.create_group(&creator.client, &conv).await?;
            for (_, d) in &people[1..] {
                d.device.catch_up(&d.client, &conv.conversation_id).await?;
            }
            let run = Run::new(timing, counters, text_size);
            let sent = Rc::new(std::cell::Cell::new(0u64));
            let delivered = Rc::new(std::cell::Cell::new(0u64));
            let receivers = decrypting_receivers(&people, &run, &delivered).await?;
            let plans = people
                .iter()
                .take(senders_n)
                .map(|(_, d)| (d.client.clone(), d.device.clone(), conv.conversation_id.clone()))
                .collect();
            let measure_start = run.start + timing.warmup;
            send_until(plans, in_flight, &run, run.start + timing.warmup + timing.duration, &sent).await;
            let measured = Instant::now().saturating_duration_since(measure_start);
            let fanout = (members - 1) as u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while delivered.get() < sent.get() * fanout && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for r in receivers {
                r.abort();
            }
            Ok(run.report("group-fanout-e2ee", measured, fanout))
        })
        .await
}

/// What creating an encrypted group measured.
pub struct GroupCreateReport {
    pub members: usize,
    pub leaves: usize,
    /// Claiming every member's KeyPackage, making the group and natterd
    /// accepting the commit with its Welcome.
    pub create: Duration,
    /// The slowest member's join (processing the Welcome), after `create`.
    pub last_join: Duration,
}

impl GroupCreateReport {
    pub fn table(&self) -> String {
        format!(
            "e2ee-group: {} members ({} leaves)\ncreate (claim, commit, accepted): {:.1} ms\nall joined after: {:.1} ms\n",
            self.members,
            self.leaves,
            self.create.as_secs_f64() * 1e3,
            self.last_join.as_secs_f64() * 1e3
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": "e2ee-group", "members": self.members, "leaves": self.leaves,
            "create_ms": self.create.as_secs_f64() * 1e3, "all_joined_ms": self.last_join.as_secs_f64() * 1e3,
        })
    }
}

/// Times making an encrypted group of `members` (each with one device): the
/// creator's claims and commit, and every member joining by the Welcome.
///
/// # Errors
/// When setting up users or devices fails.
pub async fn group_create(target: &Target, members: usize) -> anyhow::Result<GroupCreateReport> {
    if members < 2 {
        bail!("e2ee-group needs at least 2 members");
    }
    let target = target.clone();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let people = devices(&target, "e2eegroup", members, Durability::Durable).await?;
            let emails: Vec<&str> = people[1..].iter().map(|(e, _)| e.as_str()).collect();
            let creator = &people[0].1;
            let conv = creator.client.create_group_with("loadgen encrypted", &emails, true).await?;
            let t0 = Instant::now();
            creator.device.create_group(&creator.client, &conv).await?;
            let create = t0.elapsed();
            let t1 = Instant::now();
            for (_, d) in &people[1..] {
                let joined = d.device.catch_up(&d.client, &conv.conversation_id).await?;
                if !joined.iter().any(|o| matches!(o, Opened::Joined { .. })) {
                    bail!("a member did not join: {joined:?}");
                }
            }
            let last_join = t1.elapsed();
            Ok(GroupCreateReport { members, leaves: members, create, last_join })
        })
        .await
}
