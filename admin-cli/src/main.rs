//! natter-admin: the operator's command line. See `natter-admin --help`.

fn main() -> anyhow::Result<()> {
    natter_admin::cli::main_entry()
}
