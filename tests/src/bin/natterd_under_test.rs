//! The natterd entry point, built inside the test package so the crash tests can
//! start it as a child process (`CARGO_BIN_EXE_natterd-under-test`); it is the
//! same code as `natterd`.

fn main() -> anyhow::Result<()> {
    natter_server::cli::main_entry()
}
