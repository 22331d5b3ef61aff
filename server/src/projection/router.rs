//! The router: follows the log's committed batches and hands each event to the
//! outbound queue of every connected session of every member it concerns.
//!
//! Queues are bounded. When one is full the session is not allowed to grow
//! memory: it is marked out of date and re-reads from the log from its cursor
//! (nothing is lost, the log has everything). The router also closes connections
//! whose session was revoked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::{ConversationId, DeviceId, Event, Millis, TokenHash, UserId};
use crate::metrics::Metrics;
use crate::store::{Cluster, CommittedEvent, RecordedEvent, Store};

/// Set when a session's queue overflowed (or the router itself lagged): the
/// session must resync from the log.
#[derive(Default)]
pub struct LagFlag {
    lagged: AtomicBool,
    notify: Notify,
}

impl LagFlag {
    fn mark(&self) {
        self.lagged.store(true, Ordering::Release);
        self.notify.notify_one();
    }
    /// Clears the flag, returning whether it was set.
    pub fn take(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
    /// Waits until marked (returns at once if a mark is pending).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// An ephemeral signal: never stored, dropped rather than queued when a
/// connection cannot keep up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ephemeral {
    Typing {
        conversation: ConversationId,
        user: UserId,
        ttl_ms: u32,
    },
    Presence {
        user: UserId,
        online: bool,
        last_seen: Option<Millis>,
    },
    /// A claim took `device`'s KeyPackage stock under its low-water mark (or
    /// took its last-resort package): the device should publish more.
    KeyPackageStock {
        device: DeviceId,
        remaining: u32,
        has_last_resort: bool,
    },
}

/// What a connection receives once its feed runs.
pub struct FeedAttachment {
    pub events: mpsc::Receiver<Arc<RecordedEvent>>,
    pub lag: Arc<LagFlag>,
    pub signals: mpsc::Receiver<Arc<Ephemeral>>,
}

/// Signals queued per connection; more are dropped (they are ephemeral).
const SIGNAL_QUEUE: usize = 64;

/// A running feed's two queues: log events, and ephemeral signals.
type FeedQueues = (mpsc::Sender<Arc<RecordedEvent>>, mpsc::Sender<Arc<Ephemeral>>);

/// One authenticated connection as the router sees it.
pub struct Subscriber {
    id: u64,
    user: UserId,
    token_hash: TokenHash,
    feed: OnceLock<FeedQueues>,
    lag: Arc<LagFlag>,
    /// Cancelled when the session is revoked.
    revoked: CancellationToken,
    /// When the connection last made a request (ms since the epoch), and
    /// the time last recorded for other nodes.
    active_ms: AtomicU64,
    reported_ms: AtomicU64,
}

/// Wall-clock milliseconds since the epoch.
fn wall_ms() -> u64 {
    crate::domain::Millis::now().0
}

/// How often a node records its users' activity for the other nodes.
const ACTIVITY_REPORT: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a connection registered; unregisters on drop.
pub struct Registration {
    router: Arc<Router>,
    sub: Arc<Subscriber>,
    released: bool,
}

impl Registration {
    /// Cancelled when the session this connection uses is revoked elsewhere.
    pub fn revoked(&self) -> CancellationToken {
        self.sub.revoked.clone()
    }

    /// Starts live delivery into a queue of `capacity` events. Once per
    /// registration; `None` if already attached.
    pub fn attach_feed(&self, capacity: usize) -> Option<FeedAttachment> {
        let (tx, events) = mpsc::channel(capacity);
        let (stx, signals) = mpsc::channel(SIGNAL_QUEUE);
        self.sub.feed.set((tx, stx)).ok()?;
        Some(FeedAttachment { events, lag: self.sub.lag.clone(), signals })
    }

    /// The connection made a request (what `[push] idle_after_ms` counts;
    /// feed acknowledgements, which clients send by themselves, do not count).
    pub fn touch(&self) {
        self.sub.active_ms.store(wall_ms(), Ordering::Relaxed);
    }

    /// Unregisters; true when this was the user's last connection (they went offline).
    pub fn release(mut self) -> bool {
        self.unregister()
    }

    fn unregister(&mut self) -> bool {
        if std::mem::replace(&mut self.released, true) {
            return false;
        }
        let mut sessions = self.router.sessions.lock().expect("router lock");
        let Some(list) = sessions.get_mut(&self.sub.user) else { return false };
        list.retain(|s| s.id != self.sub.id);
        if list.is_empty() {
            sessions.remove(&self.sub.user);
            return true;
        }
        false
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Fan-out of committed events to connected sessions.
pub struct Router {
    sessions: Mutex<HashMap<UserId, Vec<Arc<Subscriber>>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Other nodes on the same database, when the store is shared.
    cluster: Option<Arc<dyn Cluster>>,
    /// Serializes presence bookkeeping so the last update written is the latest state.
    presence: tokio::sync::Mutex<()>,
}

impl Router {
    /// Creates the router and starts following the store's commits.
    /// With `report_activity` (`[push] idle_after_ms` set), a cluster node
    /// records its users' last requests for the others every second.
    pub fn spawn(
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        report_activity: bool,
    ) -> Arc<Self> {
        let cluster = store.cluster();
        let router = Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            cluster: cluster.clone(),
            presence: tokio::sync::Mutex::new(()),
        });
        let rx = store.subscribe();
        if let Some(cluster) = cluster {
            tokio::spawn(router.clone().follow_cluster(cluster.messages(), shutdown.clone()));
            if report_activity {
                tokio::spawn(router.clone().report_activity(cluster, shutdown.clone()));
            }
        }
        tokio::spawn(router.clone().run(rx, shutdown));
        router
    }

    /// Registers an authenticated connection; the flag is true when it is the
    /// user's first (they came online).
    pub fn register(self: &Arc<Self>, user: UserId, token_hash: TokenHash) -> (Registration, bool) {
        let sub = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            token_hash,
            feed: OnceLock::new(),
            lag: Arc::new(LagFlag::default()),
            revoked: CancellationToken::new(),
            active_ms: AtomicU64::new(wall_ms()),
            reported_ms: AtomicU64::new(0),
        });
        let first = {
            let mut sessions = self.sessions.lock().expect("router lock");
            let list = sessions.entry(user).or_default();
            list.push(sub.clone());
            list.len() == 1
        };
        (Registration { router: self.clone(), sub, released: false }, first)
    }

    /// Events waiting in all outbound queues (for metrics).
    pub fn queued(&self) -> usize {
        let sessions = self.sessions.lock().expect("router lock");
        sessions.values().flatten().filter_map(|s| s.feed.get()).map(|(tx, _)| tx.max_capacity() - tx.capacity()).sum()
    }

    /// Whether the user has a connection to this node.
    fn is_online_here(&self, user: UserId) -> bool {
        self.sessions.lock().expect("router lock").contains_key(&user)
    }

    /// Those of `users` connected to this node or (in a cluster) to another one.
    pub async fn online_among(&self, users: &[UserId]) -> HashSet<UserId> {
        let mut online: HashSet<UserId> = users.iter().copied().filter(|u| self.is_online_here(*u)).collect();
        if let Some(cluster) = &self.cluster {
            let rest: Vec<UserId> = users.iter().copied().filter(|u| !online.contains(u)).collect();
            match cluster.online_elsewhere(&rest).await {
                Ok(elsewhere) => online.extend(elsewhere),
                Err(e) => tracing::warn!(error = %e, "presence on other nodes unknown; answering with this node's"),
            }
        }
        online
    }

    /// Those of `users` with a connection, to this node or (in a cluster)
    /// another one, that made a request in the last `within`.
    pub async fn active_among(&self, users: &[UserId], within: std::time::Duration) -> HashSet<UserId> {
        let since = wall_ms().saturating_sub(within.as_millis() as u64);
        let mut active: HashSet<UserId> = {
            let sessions = self.sessions.lock().expect("router lock");
            users
                .iter()
                .copied()
                .filter(|u| {
                    sessions
                        .get(u)
                        .is_some_and(|subs| subs.iter().any(|s| s.active_ms.load(Ordering::Relaxed) >= since))
                })
                .collect()
        };
        if let Some(cluster) = &self.cluster {
            let rest: Vec<UserId> = users.iter().copied().filter(|u| !active.contains(u)).collect();
            match cluster.active_elsewhere(&rest, since).await {
                Ok(elsewhere) => active.extend(elsewhere),
                Err(e) => tracing::warn!(error = %e, "activity on other nodes unknown; answering with this node's"),
            }
        }
        active
    }

    /// Records for the other nodes, every [`ACTIVITY_REPORT`], when each user
    /// connected here last made a request (only what changed since).
    async fn report_activity(self: Arc<Self>, cluster: Arc<dyn Cluster>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(ACTIVITY_REPORT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let changed: Vec<(UserId, u64)> = {
                let sessions = self.sessions.lock().expect("router lock");
                let mut changed = HashMap::new();
                for sub in sessions.values().flatten() {
                    let at = sub.active_ms.load(Ordering::Relaxed);
                    if sub.reported_ms.swap(at, Ordering::Relaxed) != at {
                        let latest = changed.entry(sub.user).or_insert(at);
                        *latest = (*latest).max(at);
                    }
                }
                changed.into_iter().collect()
            };
            if let Err(e) = cluster.record_activity(&changed).await {
                tracing::warn!(error = %e, "activity not recorded for other nodes");
            }
        }
    }

    /// Records whether `user` is connected to this node now (called after a
    /// first connection or a last disconnection) and says whether the user as a
    /// whole came online or went offline: not when another node still (or
    /// already) has them.
    pub async fn presence_changed(&self, user: UserId) -> bool {
        let Some(cluster) = &self.cluster else { return true };
        let _serial = self.presence.lock().await;
        let here = self.is_online_here(user);
        if let Err(e) = cluster.set_online(user, here).await {
            tracing::warn!(error = %e, "presence not recorded for other nodes");
        }
        match cluster.online_elsewhere(&[user]).await {
            Ok(elsewhere) => elsewhere.is_empty(),
            Err(_) => true,
        }
    }

    /// Hands an ephemeral signal to every connection of `users` whose feed runs,
    /// here and (in a cluster) on the other nodes. A full queue drops it:
    /// ephemeral signals are never worth memory.
    pub fn signal(&self, users: &[UserId], signal: Ephemeral) {
        if let Some(cluster) = &self.cluster {
            for message in cluster_messages(&signal, users) {
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    if let Err(e) = cluster.publish(message).await {
                        tracing::warn!(error = %e, "signal not sent to other nodes");
                    }
                });
            }
        }
        self.signal_here(users, Arc::new(signal));
    }

    fn signal_here(&self, users: &[UserId], signal: Arc<Ephemeral>) {
        let sessions = self.sessions.lock().expect("router lock");
        for sub in users.iter().filter_map(|u| sessions.get(u)).flatten() {
            if let Some((_, signals)) = sub.feed.get() {
                if signals.try_send(signal.clone()).is_err() {
                    self.metrics.signal_dropped();
                }
            }
        }
    }

    /// Number of registered connections.
    pub fn connected(&self) -> usize {
        self.sessions.lock().expect("router lock").values().map(Vec::len).sum()
    }

    /// Delivers the signals other nodes publish to this node's connections.
    async fn follow_cluster(self: Arc<Self>, mut rx: broadcast::Receiver<Arc<str>>, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = rx.recv() => m,
            };
            match message {
                Ok(message) => match parse_cluster_message(&message) {
                    Some((users, signal)) => self.signal_here(&users, Arc::new(signal)),
                    None => tracing::warn!(message = %message, "malformed cluster message ignored"),
                },
                // Ephemeral: what was missed is simply gone.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "cluster signals dropped");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    async fn run(
        self: Arc<Self>,
        mut rx: broadcast::Receiver<crate::store::CommittedBatch>,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = rx.recv() => b,
            };
            match batch {
                Ok(batch) => {
                    for ev in batch.iter() {
                        self.route(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped_batches = n, "router lagged; every session resyncs from the log");
                    for sub in self.sessions.lock().expect("router lock").values().flatten() {
                        sub.lag.mark();
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }

    fn route(&self, committed: &CommittedEvent) {
        let rec = &committed.event;
        if let Event::SessionRevoked { user_id, token_hash, .. } = &rec.event {
            if let Some(list) = self.sessions.lock().expect("router lock").get(user_id) {
                for sub in list.iter().filter(|s| s.token_hash == *token_hash) {
                    sub.revoked.cancel();
                }
            }
            return;
        }
        if committed.audience.is_empty() {
            return;
        }
        // The audience was fixed when the event committed (the members at that
        // moment), so a membership change racing this event cannot misroute it.
        let shared = Arc::new(rec.clone());
        let sessions = self.sessions.lock().expect("router lock");
        let mut delivered = 0;
        for user in &committed.audience {
            for sub in sessions.get(user).into_iter().flatten() {
                let Some((tx, _)) = sub.feed.get() else { continue };
                match tx.try_send(shared.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.metrics.overflowed();
                        sub.lag.mark();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        self.metrics.delivered(delivered);
    }
}

/// Room left for recipients in one cluster message, after the signal itself.
const CLUSTER_RECIPIENT_BYTES: usize = crate::store::postgres::MAX_CLUSTER_MESSAGE - 160;

/// Encodes a signal for other nodes: `T conv user ttl recipients` or
/// `P user 0|1 last_seen|- recipients`, recipients comma-separated, split into
/// as many messages as the size limit needs.
fn cluster_messages(signal: &Ephemeral, users: &[UserId]) -> Vec<String> {
    let head = match signal {
        Ephemeral::Typing { conversation, user, ttl_ms } => format!("T {conversation} {user} {ttl_ms}"),
        Ephemeral::Presence { user, online, last_seen } => {
            let seen = last_seen.map_or_else(|| "-".to_owned(), |m| m.0.to_string());
            format!("P {user} {} {seen}", u8::from(*online))
        }
        Ephemeral::KeyPackageStock { device, remaining, has_last_resort } => {
            format!("K {} {remaining} {}", device.0, u8::from(*has_last_resort))
        }
    };
    let per_message = (CLUSTER_RECIPIENT_BYTES / 37).max(1);
    users
        .chunks(per_message)
        .map(|chunk| {
            let list: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            format!("{head} {}", list.join(","))
        })
        .collect()
}

/// The inverse of [`cluster_messages`] for one message.
fn parse_cluster_message(message: &str) -> Option<(Vec<UserId>, Ephemeral)> {
    let parts: Vec<&str> = message.split(' ').collect();
    let users = |list: &str| -> Option<Vec<UserId>> { list.split(',').map(|u| UserId::parse(u).ok()).collect() };
    match parts.as_slice() {
        ["T", conversation, user, ttl, list] => Some((
            users(list)?,
            Ephemeral::Typing {
                conversation: ConversationId::parse(conversation).ok()?,
                user: UserId::parse(user).ok()?,
                ttl_ms: ttl.parse().ok()?,
            },
        )),
        ["P", user, online, seen, list] => Some((
            users(list)?,
            Ephemeral::Presence {
                user: UserId::parse(user).ok()?,
                online: match *online {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
                last_seen: match *seen {
                    "-" => None,
                    n => Some(Millis(n.parse().ok()?)),
                },
            },
        )),
        ["K", device, remaining, last_resort, list] => Some((
            users(list)?,
            Ephemeral::KeyPackageStock {
                device: DeviceId(uuid::Uuid::parse_str(device).ok()?),
                remaining: remaining.parse().ok()?,
                has_last_resort: match *last_resort {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
            },
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn cluster_messages_round_trip_and_split_under_the_limit() {
        let users: Vec<UserId> = (0..500u128).map(|i| UserId(Uuid::from_u128(i + 1))).collect();
        let signals = [
            Ephemeral::Typing { conversation: ConversationId(Uuid::from_u128(9)), user: users[0], ttl_ms: 6000 },
            Ephemeral::Presence { user: users[1], online: false, last_seen: Some(Millis(1234)) },
            Ephemeral::Presence { user: users[2], online: true, last_seen: None },
            Ephemeral::KeyPackageStock { device: DeviceId(Uuid::from_u128(7)), remaining: 3, has_last_resort: true },
        ];
        for signal in signals {
            let messages = cluster_messages(&signal, &users);
            assert!(messages.len() > 1, "500 recipients do not fit one NOTIFY");
            let mut seen = Vec::new();
            for m in &messages {
                assert!(m.len() + 37 <= crate::store::postgres::MAX_CLUSTER_MESSAGE, "{} bytes", m.len());
                let (to, back) = parse_cluster_message(m).expect("parses");
                assert_eq!(back, signal);
                seen.extend(to);
            }
            assert_eq!(seen, users);
        }
        assert_eq!(parse_cluster_message("T x y z"), None);
        assert_eq!(parse_cluster_message("P 00000000-0000-0000-0000-000000000001 2 - x"), None);
    }
}
