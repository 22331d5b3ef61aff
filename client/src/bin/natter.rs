//! natter: the terminal client. See `natter --help`.

fn main() {
    if let Err(e) = natter_client::cli::main_entry() {
        eprintln!("natter: {e:#}");
        std::process::exit(1);
    }
}
