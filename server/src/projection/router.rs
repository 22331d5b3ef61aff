//! The router: follows the log's committed batches and hands each event to the
//! outbound queue of every connected session of every member it concerns.
//!
//! Queues are bounded. When one is full the session is not allowed to grow
//! memory: it is marked out of date and re-reads from the log from its cursor
//! (nothing is lost, the log has everything). The router also closes connections
//! whose session was revoked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::domain::{ConversationId, Event, Millis, TokenHash, UserId};
use crate::metrics::Metrics;
use crate::store::{CommittedEvent, RecordedEvent, Store};

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
    Typing { conversation: ConversationId, user: UserId, ttl_ms: u32 },
    Presence { user: UserId, online: bool, last_seen: Option<Millis> },
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
}

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
}

impl Router {
    /// Creates the router and starts following the store's commits.
    pub fn spawn(store: Arc<dyn Store>, shutdown: CancellationToken, metrics: Arc<Metrics>) -> Arc<Self> {
        let router = Arc::new(Self { sessions: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), metrics });
        let rx = store.subscribe();
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
    pub fn is_online(&self, user: UserId) -> bool {
        self.sessions.lock().expect("router lock").contains_key(&user)
    }

    /// Hands an ephemeral signal to every connection of `users` whose feed runs.
    /// A full queue drops it: ephemeral signals are never worth memory.
    pub fn signal(&self, users: &[UserId], signal: Ephemeral) {
        let signal = Arc::new(signal);
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
