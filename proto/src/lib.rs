//! natter-proto: the wire protocol (`natter.v1`), the event schema
//! (`natter.events.v1`), the frame codec, protocol limits and the error-code table.
//!
//! This crate is pure: no tokio, no sockets, no clock, no files. Everything here is
//! tested without a runtime. The normative description is `spec/protocol.md`.

pub mod codec;
pub mod error_code;
pub mod limits;
pub mod mls;
#[cfg(test)]
mod vectors;

pub use codec::{encode_frame, FrameDecoder, FrameError};
pub use error_code::ErrorCode;

/// The wire protocol spoken by clients and natterd (package `natter.v1`).
pub mod wire {
    #![allow(clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/natter.v1.rs"));
}

/// The payloads stored in the event log (package `natter.events.v1`).
/// Never imports [`wire`]: the log outlives protocol versions.
pub mod events {
    #![allow(clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/natter.events.v1.rs"));
}

/// ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"natter/1";

/// Default UDP port of natterd.
pub const DEFAULT_PORT: u16 = 7443;
