//! natter-admin: the operator's command line. See `natter-admin --help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
        Command::Stats { data_dir, json } => {
            let stats = runtime.block_on(natter_admin::stats(&data_dir))?;
            print!("{}", natter_admin::render_stats(&stats, json));
            Ok(())
        }
    }
}
