//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/natter/v1/wire.proto", "proto/natter/events/v1/events.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
