//! natter's one integration test binary: every test starts real servers (see
//! the harness in `natter_tests`) and talks to them through the client SDK.

mod account;
mod admin;
mod auth;
mod backup;
mod blob;
mod cli;
mod crash;
mod disk;
mod dm;
mod e2ee;
mod erasure;
mod export;
mod floods;
mod groups;
mod loadgen;
mod mail;
mod media;
mod media_gc;
mod metrics;
mod natterd;
mod nodes;
mod oauth;
mod operate;
mod phone;
mod presence;
mod protocol;
mod push;
mod readme;
mod receipts;
mod retention;
mod search;
mod sms;
mod store;

use std::path::PathBuf;

/// The natterd binary built with these tests.
pub fn natterd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_natterd-under-test"))
}
