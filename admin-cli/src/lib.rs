//! natter-admin's commands, as a library so the integration tests run the same
//! code the binary does.
//!
//! `stats` reads a data directory directly and read-only (safe while natterd
//! runs). Commands that change a running deployment go through the client SDK.

use std::path::Path;

use anyhow::Context;
use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
use natter_server::store::{Store, StoreStats};

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
