//! `natter-admin media gc`: the collector natterd runs every
//! `media.gc_interval_secs`, run once by hand (or, with `--dry-run`, only
//! reported).
//!
//! On PostgreSQL it may run while natterd nodes serve: the collector and
//! uploads order themselves by the blob's stream (see
//! `natter_server::media::gc`). On the embedded store a dry run reads the
//! database read-only beside a running natterd; a real run takes the data
//! directory's lock, since only one process may write that log.

use anyhow::Context;
use natter_server::config::{Config, StoreBackend};
use natter_server::domain::Millis;
use natter_server::media::gc::{self, Policy, Report};
use std::fmt::Write as _;
use std::path::Path;

/// Runs one collector pass on the deployment `config` describes, as at `now`.
///
/// # Errors
/// A store or blob store that cannot be opened or fails; natterd running on
/// the embedded store (for a real run).
pub async fn gc(config: &Config, dry_run: bool, now: Millis) -> anyhow::Result<Report> {
    let data_dir = &config.data_dir;
    // Held until the run ends: natterd cannot start on the directory meanwhile.
    let mut _lock = None;
    if config.store.backend == StoreBackend::Sqlite && !dry_run {
        _lock = Some(natter_server::lock_data_dir(data_dir)?.with_context(|| busy(data_dir))?);
    }
    let store = crate::open_configured(config, dry_run).await?;
    let blobs = natter_server::blob::open(&config.blob, data_dir).context("opening the blob store")?;
    Ok(gc::run(store.as_ref(), blobs.as_ref(), Policy::from(&config.media), now, dry_run).await?)
}

fn busy(data_dir: &Path) -> String {
    format!(
        "natterd is running on {}: its own collector runs every media.gc_interval_secs; \
         stop it to collect by hand, or look with --dry-run",
        data_dir.display()
    )
}

/// The report as printed: a line per upload and blob, then the totals.
pub fn render(report: &Report, dry_run: bool) -> String {
    let mut out = String::new();
    let (discard, delete) = if dry_run { ("would discard", "would delete") } else { ("discarded", "deleted") };
    for m in &report.discarded {
        let what = if m.preview_of.is_some() { "preview" } else { "upload" };
        let _ = writeln!(
            out,
            "{discard} {what} {} ({:?}, {} bytes, uploaded at {} ms, never sent)",
            m.media_id, m.file_name, m.size, m.uploaded_at.0
        );
    }
    for b in &report.collected {
        let _ = writeln!(out, "{delete} blob {} ({} bytes, nothing refers to it)", b.blob, b.size);
    }
    let _ = writeln!(
        out,
        "{discard} {} uploads; {delete} {} blobs, {} bytes",
        report.discarded.len(),
        report.collected.len(),
        report.freed_bytes()
    );
    if report.raced > 0 {
        let _ = writeln!(out, "{} blobs left: an upload referred to them meanwhile", report.raced);
    }
    out
}
