//! The `natterd` command line. Lives in the library so the integration tests can
//! build the very same entry point as a child process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::config::Config;

/// natterd: the natter chat server.
#[derive(Debug, Parser)]
#[command(name = "natterd", version, about)]
pub struct Args {
    /// Data directory (database, certificates). Default ./natter-data
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address to listen on. Default 0.0.0.0:7443
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// TOML configuration file; NATTER_* environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Runs natterd until SIGINT or SIGTERM.
///
/// # Errors
/// Bad configuration or a failed start.
pub fn main_entry() -> anyhow::Result<()> {
    let args = Args::parse();
    keep_large_allocations_mapped();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = Config::load(args.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let server = crate::start(config).await.context("starting natterd")?;
    // The one line operators and scripts read.
    println!("natterd listening on {} fingerprint {}", server.local_addr(), server.fingerprint());
    tracing::info!(data_dir = %data_dir.display(), cert = %server.cert_path().display(), "serving");
    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: draining connections and flushing the log");
        token.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// glibc raises its mmap threshold after large blocks are freed, after which
/// argon2's 19 MiB buffers come from the heap and stay resident. A fixed
/// threshold keeps them mapped, so they go back to the system when freed.
fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}
