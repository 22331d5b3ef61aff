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
    /// Serve natter-loadgen: no per-address sign-in limit, on a data directory
    /// of its own (default ./natter-loadtest-data) that holds only load-test
    /// data. Never serve people from it.
    #[arg(long)]
    pub load_test: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What natterd can do besides serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a configuration without starting: reads FILE and the NATTER_*
    /// variables as natterd would, validates them, and prints the effective
    /// configuration as TOML with secrets masked. Exits 1 when it is invalid.
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Print every configuration key, its default and its NATTER_* variable
    /// (Markdown; docs/configuration.md is this output).
    ConfigReference,
    /// Print a completion script for your shell.
    Completions { shell: clap_complete::Shell },
    /// Print natterd's manual page (roff: `natterd man | man -l -`).
    Man,
}

/// Where `--load-test` keeps its data unless told otherwise.
pub const LOAD_TEST_DATA_DIR: &str = "./natter-loadtest-data";

/// Runs natterd until SIGINT or SIGTERM.
///
/// # Errors
/// Bad configuration or a failed start.
pub fn main_entry() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::CheckConfig { file }) => {
            let config = Config::load(Some(file), std::env::vars())
                .with_context(|| format!("{} is not a configuration natterd runs with", file.display()))?;
            print!("{}", config.masked_toml());
            eprintln!("{}: valid", file.display());
            return Ok(());
        }
        Some(Command::ConfigReference) => {
            print!("{}", Config::reference());
            return Ok(());
        }
        Some(Command::Completions { shell }) => {
            let mut command = <Args as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "natterd", &mut std::io::stdout());
            return Ok(());
        }
        Some(Command::Man) => {
            return Ok(clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).render(&mut std::io::stdout())?);
        }
        None => {}
    }
    keep_large_allocations_mapped();
    // Held to the end: dropping it flushes what is still queued (for at most a
    // second, so a stuck reader cannot hold up the exit).
    let _log = init_logging()?;
    let mut config = Config::load(args.config.as_deref(), std::env::vars()).context("loading configuration")?;
    if args.load_test {
        config.load_test = true;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    } else if config.load_test && config.data_dir == Config::default().data_dir {
        config.data_dir = PathBuf::from(LOAD_TEST_DATA_DIR);
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(config))
}

/// Logs go to stderr from a thread of their own through a bounded queue:
/// a slow or stopped reader drops lines (the queue is lossy) instead of
/// blocking the server, and a closed pipe drops them too ([`Stderr`]), so
/// logging can neither stall a request nor break shutdown.
/// `NATTER_LOG_FORMAT=json` writes one JSON object per line (for a log
/// collector); `text` (the default) is for people.
///
/// # Errors
/// Another `NATTER_LOG_FORMAT`.
fn init_logging() -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let json = match std::env::var("NATTER_LOG_FORMAT").as_deref() {
        Err(_) | Ok("" | "text") => false,
        Ok("json") => true,
        Ok(other) => anyhow::bail!("NATTER_LOG_FORMAT={other}: expected text or json"),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("natterd-log")
        .finish(Stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NATTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(writer)
        .log_internal_errors(false);
    if json {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
    }
    Ok(guard)
}

/// stderr that never fails: a line that cannot be written (the pipe behind it
/// closed) is dropped. Reporting the failure would only mean writing to the
/// same broken stream.
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    use std::io::Write;
    // Signals first: from here on SIGINT and SIGTERM stop natterd, whatever
    // becomes of its output.
    let mut signals = Signals::install()?;
    let data_dir = config.data_dir.clone();
    let server = tokio::select! {
        started = crate::start(config) => started.context("starting natterd")?,
        () = signals.next() => return Ok(()),
    };
    // The one line operators and scripts read. A closed stdout does not stop
    // natterd (println! would panic).
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "natterd listening on {} fingerprint {}", server.local_addr(), server.fingerprint());
    let _ = out.flush();
    drop(out);
    tracing::info!(data_dir = %data_dir.display(), cert = %server.cert_path().display(), "serving");
    let token = server.shutdown_token();
    tokio::spawn(async move {
        signals.next().await;
        token.cancel();
        tracing::info!("shutting down: draining connections and flushing the log (a second signal stops at once)");
        signals.next().await;
        tracing::warn!("second signal: stopping without draining");
        std::process::exit(130);
    });
    server.wait().await;
    Ok(())
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
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
