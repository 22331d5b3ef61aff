//! The `natter` CLI entry point, built inside the test package so the CLI tests
//! can run it (`CARGO_BIN_EXE_natter-under-test`); it is the same code as `natter`.

fn main() {
    if let Err(e) = natter_client::cli::main_entry() {
        eprintln!("natter: {e:#}");
        std::process::exit(1);
    }
}
