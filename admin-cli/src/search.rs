//! `natter-admin reindex`: drops a node's search index and builds it again
//! from the log, with progress. natterd must be stopped on that data
//! directory (it rebuilds a missing index by itself at start-up, serving
//! meanwhile; this is the offline way, and it says how fast it went).

use anyhow::Context;
use natter_server::config::Config;
use natter_server::search::{self, ReindexReport};
use natter_server::store::Position;

/// Rebuilds the index of the node `config` describes, calling `progress`
/// (position, head) as it goes.
///
/// # Errors
/// natterd runs on the data directory; the store or the index fails.
pub async fn reindex(config: &Config, progress: impl FnMut(Position, Position)) -> anyhow::Result<ReindexReport> {
    let data_dir = &config.data_dir;
    // Held until the end: natterd cannot start on the directory meanwhile.
    let _lock = natter_server::lock_data_dir(data_dir)?.with_context(|| {
        format!(
            "natterd is running on {}: stop it first (or delete {}/search and restart natterd, which \
             rebuilds the index while it serves)",
            data_dir.display(),
            data_dir.display()
        )
    })?;
    let store = crate::open_configured(config, true).await?;
    Ok(search::reindex(store.as_ref(), &config.search, data_dir, progress).await?)
}
