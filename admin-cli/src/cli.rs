//! natter-admin's command line (the binary's `main` and the tests' copy call this).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// natter-admin: operate a natter deployment.
#[derive(Debug, Parser)]
#[command(name = "natter-admin", version, about)]
struct Args {
    #[command(flatten)]
    remote: crate::remote::Remote,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Remote(crate::remote::RemoteCommand),
    /// Grant an account the admin role on the store itself (stop natterd on
    /// a data directory first; PostgreSQL may be serving). The first admin
    /// is made this way, or named in [admin] bootstrap.
    GrantAdmin {
        /// The account's email.
        email: String,
        /// A data directory or a `postgres://` URL.
        #[arg(long, value_name = "DIR|URL", default_value = "./natter-data")]
        store: String,
    },
    /// Back up a deployment while natterd serves it: the store as of one
    /// commit, the server key and certificate, the media its messages refer
    /// to, and a manifest with checksums.
    Backup {
        /// natterd's configuration file (its store, blob store and keys);
        /// NATTER_* environment variables override it, as for natterd.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// natterd's data directory. Default: the configuration's (./natter-data)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// A new (or empty) directory for the backup.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
    /// Restore a backup into a new data directory or an empty PostgreSQL
    /// database (never over data), check every file's checksum first and the
    /// log and every read-model answer after.
    Restore {
        /// The backup directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The new data directory (must not exist, or be empty), for a backup
        /// of the embedded store; with --to-url, where fs media go.
        #[arg(long, value_name = "DIR", required_unless_present = "to_url")]
        data_dir: Option<PathBuf>,
        /// An empty PostgreSQL database, for a backup of a PostgreSQL deployment.
        #[arg(long, value_name = "URL")]
        to_url: Option<String>,
        /// A configuration whose [blob] store receives the media (default:
        /// files in the data directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print a completion script for your shell.
    Completions { shell: clap_complete::Shell },
    /// Print natter-admin's manual page (roff: `natter-admin man | man -l -`).
    Man,
    /// Print event, user, conversation and message counts of a data directory.
    Stats {
        /// natterd's data directory.
        #[arg(long, value_name = "DIR", default_value = "./natter-data")]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Copy an embedded deployment's log (stop natterd first) into PostgreSQL,
    /// rebuilding the read models there, then check both give the same answers.
    CopyLog {
        /// natterd's data directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database, `postgres://user@host:port/database`.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Drop the read models and rebuild them by replaying the log, then check
    /// every answer is unchanged.
    Rebuild {
        /// A data directory (stop natterd first) or a `postgres://` URL.
        #[arg(long, value_name = "DIR|URL", default_value = "./natter-data")]
        store: String,
    },
    /// Drop this node's search index and build it again from the log (stop
    /// natterd on the data directory first).
    Reindex {
        /// natterd's configuration file (its store and search settings);
        /// NATTER_* environment variables override it, as for natterd.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// natterd's data directory. Default: the configuration's (./natter-data)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Uploads and stored bytes.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
    },
    /// The VAPID key natterd signs Web Push requests with.
    Vapid {
        #[command(subcommand)]
        command: VapidCommand,
    },
}

#[derive(Debug, Subcommand)]
enum VapidCommand {
    /// Print the public key (the application server key web clients subscribe
    /// with), base64url, as natterd's configuration gives it.
    Show {
        /// natterd's configuration file (push.vapid_key_file, auth.secret_key_file);
        /// NATTER_* environment variables override it, as for natterd.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// natterd's data directory. Default: the configuration's (./natter-data)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MediaCommand {
    /// Discard uploads no message sent within media.unsent_ttl_secs and delete
    /// the stored bytes nothing refers to (what natterd does every
    /// media.gc_interval_secs).
    Gc {
        /// natterd's configuration file (its store and blob store); NATTER_*
        /// environment variables override it, as for natterd.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// natterd's data directory. Default: the configuration's (./natter-data)
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Only report what would be discarded and deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Parses the arguments and runs the command.
///
/// # Errors
/// Whatever the command failed with (printed by `main`).
pub fn main_entry() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.command {
        Command::Remote(command) => runtime.block_on(crate::remote::run(&args.remote, command)),
        Command::GrantAdmin { email, store } => {
            let already = runtime.block_on(crate::grant_admin(&crate::Location::parse(&store), &email))?;
            if already {
                println!("{email} was an admin already");
            } else {
                println!(
                    "{email} is an admin: `natter-admin --server HOST:PORT --pin … login --email {email}` signs in"
                );
            }
            Ok(())
        }
        Command::Backup { config, data_dir, to } => {
            let config = load_config(config, data_dir)?;
            let r = runtime.block_on(crate::backup::backup(&config, &to))?;
            println!(
                "backed up to {} at log position {}: {} files, {} blobs ({} bytes), {} read-model answers recorded",
                to.display(),
                r.position,
                r.files,
                r.blobs,
                r.blob_bytes,
                r.answers
            );
            Ok(())
        }
        Command::Restore { from, data_dir, to_url, config } => {
            let (blob, config_dir) = match config {
                Some(file) => {
                    let c = load_config(Some(file), None)?;
                    (c.blob, c.data_dir)
                }
                None => (natter_server::blob::BlobConfig::default(), PathBuf::from("./natter-data")),
            };
            let (target, media_dir, shown) = match (to_url, data_dir) {
                (Some(url), dir) => (crate::backup::Target::Postgres(url), dir.unwrap_or(config_dir), "the database"),
                (None, Some(dir)) => (crate::backup::Target::DataDir(dir.clone()), dir, "the data directory"),
                (None, None) => anyhow::bail!("restore into what? pass --data-dir NEW or --to-url postgres://…"),
            };
            let r = runtime.block_on(crate::backup::restore(&from, &target, &blob, &media_dir))?;
            println!(
                "restored {} into {shown} at log position {} ({} events, as backed up): {} files and {} blobs \
                 checked; all {} read-model answers as they should be",
                from.display(),
                r.position,
                r.events,
                r.files,
                r.blobs,
                r.answers
            );
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = <Args as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "natter-admin", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            Ok(clap_mangen::Man::new(<Args as clap::CommandFactory>::command()).render(&mut std::io::stdout())?)
        }
        Command::Stats { data_dir, json } => {
            let stats = runtime.block_on(crate::stats(&data_dir))?;
            print!("{}", crate::render_stats(&stats, json));
            Ok(())
        }
        Command::CopyLog { from, to } => {
            let to = crate::Location::parse(&to);
            if !matches!(to, crate::Location::Postgres(_)) {
                anyhow::bail!("--to must be a postgres:// URL");
            }
            let mut progress = Progress::new("copied");
            let report = runtime.block_on(crate::copy_log(&from, &to, |at, of| progress.show(at, of)))?;
            progress.done();
            println!(
                "copied {} events (log head {}); {} read-model answers identical on both sides",
                report.copied, report.head, report.verified_answers
            );
            Ok(())
        }
        Command::Rebuild { store } => {
            let answers = runtime.block_on(crate::rebuild(&crate::Location::parse(&store)))?;
            println!("read models rebuilt from the log; {answers} answers identical before and after");
            Ok(())
        }
        Command::Reindex { config, data_dir } => {
            let config = load_config(config, data_dir)?;
            let mut progress = Progress::new("indexed");
            let report = runtime.block_on(crate::search::reindex(&config, |at, of| progress.show(at, of)))?;
            progress.done();
            let secs = report.took.as_secs_f64().max(1e-9);
            println!(
                "search index rebuilt: {} messages of {} events in {:.2} s ({:.0} messages/s, {:.0} events/s), up to position {}",
                report.messages,
                report.events,
                secs,
                report.messages as f64 / secs,
                report.events as f64 / secs,
                report.position
            );
            Ok(())
        }
        Command::Vapid { command: VapidCommand::Show { config, data_dir } } => {
            let config = load_config(config, data_dir)?;
            println!("{}", crate::vapid_public_key(&config)?);
            Ok(())
        }
        Command::Media { command: MediaCommand::Gc { config, data_dir, dry_run } } => {
            let config = load_config(config, data_dir)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?;
            let now = natter_server::domain::Millis(now.as_millis() as u64);
            let report = runtime.block_on(crate::media::gc(&config, dry_run, now))?;
            print!("{}", crate::media::render(&report, dry_run));
            Ok(())
        }
    }
}

/// natterd's configuration as natterd would load it, with `--data-dir` on top.
pub(crate) fn load_config(
    file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<natter_server::config::Config> {
    let mut config =
        natter_server::config::Config::load(file.as_deref(), std::env::vars()).context("loading configuration")?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    Ok(config)
}

/// Progress through the log on stderr: on a terminal one line that counts
/// up, in a log a line per tenth.
struct Progress {
    verb: &'static str,
    terminal: bool,
    shown: u64,
}

impl Progress {
    fn new(verb: &'static str) -> Self {
        Self { verb, terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()), shown: 0 }
    }

    fn show(&mut self, at: u64, of: u64) {
        if self.terminal {
            eprint!("\r{} up to position {at} of {of}", self.verb);
        } else if at == of || at * 10 / of.max(1) > self.shown {
            self.shown = at * 10 / of.max(1);
            eprintln!("{} up to position {at} of {of}", self.verb);
        }
    }

    fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
