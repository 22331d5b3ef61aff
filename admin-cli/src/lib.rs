//! natter-admin's commands, as a library so the integration tests run the same
//! code the binary does.
//!
//! `stats` reads a data directory directly and read-only (safe while natterd
//! runs). `copy-log` moves an embedded deployment's log into PostgreSQL;
//! `rebuild` replays a log into fresh read models. Both check their work by
//! asking both sides every read-model question and comparing the answers.

pub mod backup;
pub mod cli;
pub mod export;
pub mod media;
pub mod remote;
pub mod search;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use natter_server::domain::{ConversationId, Event, TokenHash, UserId};
use natter_server::store::postgres::{PostgresConfig, PostgresStore};
use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
use natter_server::store::{HistoryPage, Store, StoreStats};
use sha2::Digest;

/// Counts of a data directory's log and read models.
///
/// # Errors
/// When the directory holds no natter database.
pub async fn stats(data_dir: &Path) -> anyhow::Result<StoreStats> {
    let path = SqliteConfig::in_dir(data_dir).path;
    let store = SqliteStore::open_read_only(&path)
        .with_context(|| format!("opening {} (is this a natterd data directory?)", data_dir.display()))?;
    Ok(store.stats().await?)
}

/// `stats` as printed: a table, or one JSON object.
pub fn render_stats(s: &StoreStats, json: bool) -> String {
    if json {
        format!(
            "{{\"events\":{},\"users\":{},\"conversations\":{},\"messages\":{},\"head\":{}}}\n",
            s.events, s.users, s.conversations, s.messages, s.head
        )
    } else {
        format!(
            "events         {}\nusers          {}\nconversations  {}\nmessages       {}\nlog head       {}\n",
            s.events, s.users, s.conversations, s.messages, s.head
        )
    }
}

/// Where a deployment's log lives: a data directory (embedded) or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    DataDir(PathBuf),
    Postgres(String),
}

impl Location {
    /// `postgres://…` (or `postgresql://…`) is a database; anything else a directory.
    pub fn parse(s: &str) -> Self {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Self::Postgres(s.to_owned())
        } else {
            Self::DataDir(PathBuf::from(s))
        }
    }

    /// Opens the store for writing (migrating it if needed). A data directory
    /// must already hold a natter database.
    ///
    /// # Errors
    /// When the database cannot be opened or reached.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self {
            Self::DataDir(dir) => {
                let config = SqliteConfig::in_dir(dir);
                if !config.path.exists() {
                    bail!("{} holds no natter database (is this a natterd data directory?)", dir.display());
                }
                Arc::new(SqliteStore::open(&config).with_context(|| format!("opening {}", dir.display()))?)
            }
            Self::Postgres(url) => Arc::new(open_postgres(url).await?),
        })
    }
}

/// Grants `email`'s account the admin role on the store (natterd stopped on
/// a data directory: it holds the lock); answers whether it held it already.
///
/// # Errors
/// No such account, natterd running on the data directory, or the store failed.
pub async fn grant_admin(at: &Location, email: &str) -> anyhow::Result<bool> {
    let email = natter_server::domain::Email::parse(email).map_err(|e| anyhow::anyhow!("{email:?}: {e}"))?;
    let _lock = match at {
        Location::DataDir(dir) if SqliteConfig::in_dir(dir).path.exists() => Some(
            natter_server::lock_data_dir(dir)?
                .ok_or_else(|| anyhow::anyhow!("natterd is running on {}; stop it first", dir.display()))?,
        ),
        _ => None,
    };
    let store = at.open().await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let result =
        natter_server::session::admin::grant_offline(store.as_ref(), &email, natter_server::domain::Millis(now)).await;
    store.shutdown().await;
    Ok(result?)
}

/// The PostgreSQL store as the admin tool uses it: not a node (no tailer, no
/// heartbeat), a few readers.
/// The store natterd's `config` names: PostgreSQL, or the data directory's
/// SQLite database (read-only, or for writing; the caller holds the lock).
///
/// # Errors
/// No URL for PostgreSQL, no database in the data directory, or it cannot be opened.
pub(crate) async fn open_configured(
    config: &natter_server::config::Config,
    read_only: bool,
) -> anyhow::Result<std::sync::Arc<dyn natter_server::store::Store>> {
    use natter_server::config::StoreBackend;
    use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
    let data_dir = &config.data_dir;
    Ok(match config.store.backend {
        StoreBackend::Postgres => {
            let url = config.store.url.as_deref().context("store.backend is postgres but store.url is not set")?;
            std::sync::Arc::new(open_postgres(url).await?)
        }
        StoreBackend::Sqlite => {
            let sqlite = SqliteConfig::in_dir(data_dir);
            if !sqlite.path.exists() {
                anyhow::bail!("{} holds no natter database (is this a natterd data directory?)", data_dir.display());
            }
            if read_only {
                std::sync::Arc::new(SqliteStore::open_read_only(&sqlite.path)?)
            } else {
                std::sync::Arc::new(
                    SqliteStore::open(&sqlite).with_context(|| format!("opening {}", data_dir.display()))?,
                )
            }
        }
    })
}

pub(crate) async fn open_postgres(url: &str) -> anyhow::Result<PostgresStore> {
    let mut config = PostgresConfig::new(url);
    config.serve = false;
    config.readers = 4;
    PostgresStore::open(&config).await.context("connecting to PostgreSQL")
}

/// Every read-model answer of a store, by question: two stores that answer
/// every question alike hold the same read models.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub answers: BTreeMap<String, String>,
}

impl Snapshot {
    /// The first question the two answer differently, with both answers.
    pub fn first_difference(&self, other: &Snapshot) -> Option<(String, String, String)> {
        let keys: BTreeSet<&String> = self.answers.keys().chain(other.answers.keys()).collect();
        keys.into_iter().find_map(|k| {
            let (a, b) = (self.answers.get(k), other.answers.get(k));
            (a != b).then(|| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not asked)".into());
                (k.clone(), show(a), show(b))
            })
        })
    }
}

/// Page size for walking history and feeds.
const PAGE: u32 = 500;

/// Asks `store` every question the server asks of its read models, for every
/// user, session and conversation its log names.
///
/// # Errors
/// When the store fails.
pub async fn snapshot(store: &dyn Store) -> anyhow::Result<Snapshot> {
    let mut users = BTreeMap::new();
    let mut tokens: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut conversations: BTreeMap<ConversationId, BTreeSet<UserId>> = BTreeMap::new();
    let mut recovery_codes: BTreeSet<(UserId, [u8; 32])> = BTreeSet::new();
    let mut identities = BTreeSet::new();
    let mut devices: BTreeSet<(UserId, natter_server::domain::DeviceId)> = BTreeSet::new();
    let mut after = 0;
    loop {
        let events = store.read_all(after, 1000).await?;
        let Some(last) = events.last() else { break };
        after = last.position;
        for rec in &events {
            match &rec.event {
                Event::UserRegistered(u) => {
                    users.insert(u.user_id, Some(u.email.clone()));
                }
                Event::AccountOpened(a) => {
                    users.insert(a.user_id, a.email.clone());
                }
                Event::IdentityLinked { identity, .. } => {
                    identities.insert((identity.provider, identity.subject.clone()));
                }
                Event::SessionStarted(s) => {
                    tokens.insert(s.token_hash.0);
                    devices.insert((s.user_id, s.device_id));
                }
                Event::PushSubscribed(p) => {
                    devices.insert((p.user_id, p.device_id));
                }
                Event::TotpEnabled { user_id, recovery_codes: codes, .. }
                | Event::RecoveryCodesIssued { user_id, recovery_codes: codes, .. } => {
                    recovery_codes.extend(codes.iter().map(|c| (*user_id, *c)));
                }
                Event::DirectConversationStarted { conversation_id, members, .. } => {
                    conversations.entry(*conversation_id).or_default().extend(members);
                }
                Event::GroupCreated { conversation_id, members, .. }
                | Event::MembersAdded { conversation_id, members, .. } => {
                    conversations.entry(*conversation_id).or_default().extend(members.iter().map(|m| m.0));
                }
                _ => {}
            }
        }
    }
    let mut s = Snapshot::default();
    let mut put = |k: String, v: String| {
        s.answers.insert(k, compact(v));
    };
    put("stats".into(), format!("{:?}", store.stats().await?));
    put("head".into(), format!("{:?}", store.head().await?));
    put("last_seen".into(), format!("{:?}", store.last_seen_all().await?));
    put("users_page".into(), format!("{:?}", store.users_page(None, None, u32::MAX).await?));
    for (provider, subject) in &identities {
        let owner = store.user_by_identity(*provider, subject).await?.map(|u| u.user_id);
        put(format!("user_by_identity {} {subject}", provider.as_str()), format!("{owner:?}"));
    }
    for (user, email) in &users {
        put(format!("user_by_id {user}"), format!("{:?}", store.user_by_id(*user).await?));
        if let Some(email) = email {
            put(format!("user_by_email {email}"), format!("{:?}", store.user_by_email(email).await?));
        }
        put(format!("sessions_of {user}"), format!("{:?}", store.sessions_of(*user).await?));
        put(format!("identities_of {user}"), format!("{:?}", store.identities_of(*user).await?));
        put(format!("device_keys {user}"), format!("{:?}", store.device_keys(*user).await?));
        if let Some(phone) = store.user_by_id(*user).await?.and_then(|u| u.phone) {
            put(format!("user_by_phone {phone}"), format!("{:?}", store.user_by_phone(&phone).await?));
        }
        let mut contacts = store.contacts(*user).await?;
        contacts.sort_by_key(|u| u.0);
        put(format!("contacts {user}"), format!("{contacts:?}"));
        put(format!("presence {user}"), format!("{:?}", store.presence_info(vec![*user]).await?));
        let mut before = None;
        let mut page_no = 0;
        loop {
            let page = store.conversations_for_user(*user, before, 20).await?;
            put(format!("conversations {user} page {page_no}"), format!("{page:?}"));
            page_no += 1;
            match page.last() {
                Some(last) if page.len() == 20 => before = Some(last.activity),
                _ => break,
            }
        }
        let mut cursor = 0;
        let mut page_no = 0;
        loop {
            let feed = store.feed(*user, cursor, PAGE).await?;
            put(format!("feed {user} page {page_no}"), format!("{feed:?}"));
            page_no += 1;
            match feed.last() {
                Some(last) if feed.len() == PAGE as usize => cursor = last.position,
                _ => break,
            }
        }
    }
    for (user, device) in &devices {
        put(format!("push_settings {user} {device}"), format!("{:?}", store.push_settings(*user, *device).await?));
    }
    for token in &tokens {
        put(format!("session {}", hex_of(token)), format!("{:?}", store.session_by_token(TokenHash(*token)).await?));
    }
    for (user, code) in &recovery_codes {
        put(
            format!("recovery_code {user} {}", hex_of(code)),
            format!("{:?}", store.recovery_code_unused(*user, *code).await?),
        );
    }
    for (conv, members) in &conversations {
        put(format!("conversation {conv}"), format!("{:?}", store.conversation(*conv).await?));
        put(format!("receipts {conv}"), format!("{:?}", store.receipts(*conv).await?));
        let everyone: Vec<UserId> = members.iter().copied().collect();
        put(format!("push_targets {conv}"), format!("{:?}", store.push_targets(*conv, &everyone).await?));
        for user in members {
            put(format!("membership {conv} {user}"), format!("{:?}", store.membership(*conv, *user).await?));
            put(format!("summary {conv} {user}"), format!("{:?}", store.conversation_summary(*user, *conv).await?));
            put(format!("receipt {conv} {user}"), format!("{:?}", store.receipt(*conv, *user).await?));
        }
        let latest = store.messages(*conv, HistoryPage::Latest { limit: 10 }, None).await?;
        put(format!("latest {conv}"), format!("{latest:?}"));
        let mut seq = natter_server::domain::Seq(0);
        let mut page_no = 0;
        loop {
            let (page, more) = store.messages(*conv, HistoryPage::After { seq, limit: PAGE }, None).await?;
            put(format!("messages {conv} page {page_no}"), format!("{page:?} {more}"));
            page_no += 1;
            match page.last() {
                Some(last) if more => seq = last.seq,
                _ => break,
            }
        }
    }
    Ok(s)
}

/// Answers longer than this are kept as their start and a digest: a snapshot
/// of a large deployment (every feed page of every user) must fit in memory.
const KEEP_VERBATIM: usize = 512;

/// An answer as a snapshot keeps it: short ones whole, long ones as their
/// first bytes (to show in a difference), their length and SHA-256.
fn compact(answer: String) -> String {
    if answer.len() <= KEEP_VERBATIM {
        return answer;
    }
    let mut start = 200;
    while !answer.is_char_boundary(start) {
        start -= 1;
    }
    let digest = sha2::Sha256::digest(answer.as_bytes());
    format!("{}… ({} bytes, sha256 {})", &answer[..start], answer.len(), hex_of(&digest))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `copy-log` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Events written by this run (a resumed copy skips what was already there).
    pub copied: u64,
    /// The target's log head afterwards (equal to the source's).
    pub head: u64,
    /// Read-model questions asked of both sides, all answered alike.
    pub verified_answers: usize,
}

/// Copies an embedded deployment's log (natterd stopped) into `to`, keeping
/// positions, versions, ids and times, and rebuilding the read models there as
/// it goes; then checks that both answer every read-model question alike.
/// A copy that was interrupted resumes where it stopped.
///
/// # Errors
/// When the source is not a data directory, the target already holds a
/// different log, or the two disagree afterwards.
pub async fn copy_log(from: &Path, to: &Location, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<CopyReport> {
    let path = SqliteConfig::in_dir(from).path;
    let source: Arc<dyn Store> = Arc::new(
        SqliteStore::open_read_only(&path)
            .with_context(|| format!("opening {} (is this a natterd data directory?)", from.display()))?,
    );
    let target = to.open().await?;
    let result = copy_between(source.as_ref(), target.as_ref(), &mut progress).await;
    source.shutdown().await;
    target.shutdown().await;
    result
}

/// [`copy_log`] between two open stores.
///
/// # Errors
/// As [`copy_log`].
pub async fn copy_between(
    source: &dyn Store,
    target: &dyn Store,
    progress: &mut impl FnMut(u64, u64),
) -> anyhow::Result<CopyReport> {
    let source_head = source.head().await?;
    let mut after = target.head().await?;
    if after > 0 {
        // Resuming: the target must hold exactly the source's beginning.
        let theirs = target.read_all(after - 1, 1).await?;
        let ours = source.read_all(after - 1, 1).await?;
        if theirs.is_empty() || theirs != ours {
            bail!("the target already holds a different log (head {after}); copy into an empty database");
        }
    }
    let mut copied = 0;
    loop {
        let batch = source.read_all(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        copied += batch.len() as u64;
        target.import(batch).await.context("writing into the target")?;
        progress(after, source_head);
    }
    for (user, at) in source.last_seen_all().await? {
        target.set_last_seen(user, at).await?;
    }
    let (a, b) = (snapshot(source).await?, snapshot(target).await?);
    if let Some((question, ours, theirs)) = a.first_difference(&b) {
        bail!("after the copy the two disagree on {question}:\n  source: {ours}\n  target: {theirs}");
    }
    Ok(CopyReport { copied, head: target.head().await?, verified_answers: a.answers.len() })
}

/// Drops the read models of `at` and replays its whole log into them, then
/// checks every read-model answer is what it was before. For a data directory,
/// stop natterd first; a PostgreSQL deployment may keep running (the rebuild is
/// one transaction holding the log lock: writes wait for it).
///
/// # Errors
/// When the store fails or an answer changed.
pub async fn rebuild(at: &Location) -> anyhow::Result<usize> {
    let (store, _lock): (Arc<dyn Store>, _) = match at {
        Location::Postgres(url) => {
            // Nodes writing meanwhile would wait on the log lock for the whole
            // rebuild, and change answers between the before and after check.
            let store = open_postgres(url).await?;
            match store.live_nodes().await {
                Ok(0) => {}
                live => {
                    store.shutdown().await;
                    let n = live?;
                    bail!("{n} natterd node(s) are serving this database; stop them first (a killed node counts for 10 s)");
                }
            }
            (Arc::new(store), None)
        }
        // A data directory natterd is using is locked; the rebuild holds the
        // lock so natterd cannot start meanwhile.
        Location::DataDir(dir) => {
            let lock = if SqliteConfig::in_dir(dir).path.exists() {
                let lock = natter_server::lock_data_dir(dir)?;
                Some(lock.ok_or_else(|| anyhow::anyhow!("natterd is running on {}; stop it first", dir.display()))?)
            } else {
                None
            };
            (at.open().await?, lock)
        }
    };
    let result = rebuild_store(store.as_ref()).await;
    store.shutdown().await;
    result
}

/// [`rebuild`] on an open store; returns how many answers were compared.
///
/// # Errors
/// When the store fails or an answer changed.
pub async fn rebuild_store(store: &dyn Store) -> anyhow::Result<usize> {
    let before = snapshot(store).await?;
    store.rebuild().await?;
    let after = snapshot(store).await?;
    if let Some((question, old, new)) = before.first_difference(&after) {
        bail!("the rebuilt read models answer {question} differently:\n  before: {old}\n  after:  {new}");
    }
    Ok(before.answers.len())
}

/// The application server key (VAPID public key, base64url) natterd with
/// `config` signs push requests with.
///
/// # Errors
/// The server key (or push.vapid_key_file) cannot be read.
pub fn vapid_public_key(config: &natter_server::config::Config) -> anyhow::Result<String> {
    use base64::Engine as _;
    let server_key =
        natter_server::auth::server_key::ServerKey::load(&config.data_dir, config.auth.secret_key_file.as_deref())
            .context("the server key (natterd makes it on its first start)")?;
    let key = natter_server::push::vapid::VapidKey::load(config.push.vapid_key_file.as_deref(), &server_key)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_kept_small_and_still_told_apart() {
        let long = |last: char| format!("{}{last}", "é".repeat(2_000));
        let (a, b) = (compact(long('a')), compact(long('b')));
        assert!(a.len() < 400, "{} bytes kept", a.len());
        assert_ne!(a, b, "a difference at the very end still shows");
        assert_eq!(a, compact(long('a')));
        assert!(a.starts_with("éé") && a.contains("4001 bytes, sha256 "), "{a}");
        assert_eq!(compact("short".into()), "short");
        let snapshot = |v: String| Snapshot { answers: BTreeMap::from([("feed u page 0".to_owned(), v)]) };
        let diff = snapshot(a).first_difference(&snapshot(b)).expect("a difference");
        assert_eq!(diff.0, "feed u page 0");
    }
}
