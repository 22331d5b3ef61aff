//! natterd: the natter chat server. See `natterd --help`.

fn main() -> anyhow::Result<()> {
    natter_server::cli::main_entry()
}
