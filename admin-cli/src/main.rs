//! natter-admin: the operator's command line.
//!
//! `stats` reads a data directory directly (read-only; safe while natterd runs).
//! Commands that change a running deployment go through the client SDK.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
use natter_server::store::Store;

/// natter-admin: operate a natter deployment.
#[derive(Debug, Parser)]
#[command(name = "natter-admin", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print event, user, conversation and message counts of a data directory.
    Stats {
        /// natterd's data directory.
        #[arg(long, value_name = "DIR", default_value = "./natter-data")]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.command {
        Command::Stats { data_dir, json } => runtime.block_on(async {
            let path = SqliteConfig::in_dir(&data_dir).path;
            let store = SqliteStore::open_read_only(&path)
                .with_context(|| format!("opening {} (is this a natterd data directory?)", data_dir.display()))?;
            let s = store.stats().await?;
            if json {
                println!(
                    "{{\"events\":{},\"users\":{},\"conversations\":{},\"messages\":{},\"head\":{}}}",
                    s.events, s.users, s.conversations, s.messages, s.head
                );
            } else {
                println!("events         {}", s.events);
                println!("users          {}", s.users);
                println!("conversations  {}", s.conversations);
                println!("messages       {}", s.messages);
                println!("log head       {}", s.head);
            }
            Ok(())
        }),
    }
}
