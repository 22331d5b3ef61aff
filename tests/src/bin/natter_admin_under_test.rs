//! natter-admin built inside the test package, so tests can run the binary
//! (`CARGO_BIN_EXE_natter-admin-under-test`); it is the same code.

fn main() -> anyhow::Result<()> {
    natter_admin::cli::main_entry()
}
