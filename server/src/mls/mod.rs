//! End-to-end encryption's server side (spec/protocol.md, "End-to-end
//! encryption"): natterd is MLS's delivery service (RFC 9420, RFC 9750). It
//! keeps each device's signature public key (a log event,
//! `DeviceKeyRegistered`, projected into `device_keys`) and each device's
//! stock of KeyPackages (a [`KeyPackageStore`]: `sqlite`, a database file of
//! its own, or `postgres`, tables every node shares), and never a private key.
//!
//! KeyPackages are not in the log: each ordinary one is handed out once and
//! deleted as it is claimed (an atomic claim in the store, so two nodes never
//! hand out the same one), and only the device's last-resort package stays
//! until replaced. Losing the stock (a restored backup) costs the device a
//! top-up, which [`KeyPackageStock`] tells it to do.
//!
//! Every KeyPackage is checked with openmls before it is stored ([`check`]):
//! its signatures, the ciphersuite, a BasicCredential naming the device, the
//! device's registered signature key, its lifetime and its last-resort marking.

pub mod delivery;
pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, ContentType, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion,
    PublicMessageIn,
};
use serde::{Deserialize, Serialize};

use crate::domain::{ConversationId, DeviceId, Millis, UserId};
use crate::store::StoreError;

/// The one ciphersuite natter speaks (`natter_proto::mls::CIPHERSUITE`).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// `[mls]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlsConfig {
    /// Ordinary KeyPackages a device may have in stock.
    pub stock_capacity: u32,
    /// Under this many the device is told to top up.
    pub low_water: u32,
    /// The largest KeyPackage accepted, in bytes.
    pub max_key_package_bytes: usize,
    /// A KeyPackage's lifetime may end at most this many days from now.
    pub max_lifetime_days: u32,
    /// `ClaimKeyPackages` a user may make per hour, whoever they claim from.
    pub claims_per_caller_per_hour: u32,
    /// `ClaimKeyPackages` naming one user as target per hour, from everyone
    /// together (draining someone's stock takes many callers, then).
    pub claims_per_target_per_hour: u32,
}

impl Default for MlsConfig {
    fn default() -> Self {
        Self {
            stock_capacity: 200,
            low_water: 20,
            max_key_package_bytes: 8192,
            // openmls's default lifetime is 12 weeks and an hour.
            max_lifetime_days: 92,
            claims_per_caller_per_hour: 2000,
            claims_per_target_per_hour: 300,
        }
    }
}

impl MlsConfig {
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.stock_capacity == 0 || self.low_water > self.stock_capacity {
            return Err("mls.stock_capacity must be at least 1 and at least mls.low_water".into());
        }
        if self.max_key_package_bytes < 256 || self.max_lifetime_days == 0 {
            return Err("mls.max_key_package_bytes must be at least 256 and mls.max_lifetime_days at least 1".into());
        }
        if self.claims_per_caller_per_hour == 0 || self.claims_per_target_per_hour == 0 {
            return Err("mls.claims_per_caller_per_hour and mls.claims_per_target_per_hour must be at least 1".into());
        }
        Ok(())
    }
}

/// The BasicCredential identity of a device (`natter_proto::mls`).
pub fn credential_identity(user: UserId, device: DeviceId) -> String {
    natter_proto::mls::credential_identity(&user.to_string(), &device.0.to_string())
}

/// What a device signs to register its key (`natter_proto::mls`).
pub fn device_key_proof_message(user: UserId, device: DeviceId) -> Vec<u8> {
    natter_proto::mls::device_key_proof_message(user.0.as_bytes(), device.0.as_bytes())
}

/// Checks a `RegisterDeviceKey`.
///
/// # Errors
/// Which field is wrong, and why.
pub fn check_device_key(
    key: &[u8],
    proof: &[u8],
    user: UserId,
    device: DeviceId,
) -> Result<(), (&'static str, &'static str)> {
    if key.len() != 32 {
        return Err(("signature_key", "must be an Ed25519 public key (32 bytes)"));
    }
    if proof.len() != 64 {
        return Err(("proof", "must be an Ed25519 signature (64 bytes)"));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&device_key_proof_message(user, device), proof)
        .map_err(|_| ("proof", "is not the key's signature of this user and device"))
}

/// A KeyPackage that passed [`check`], as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPackage {
    /// Its KeyPackageRef (RFC 9420 section 5.2): the stock's key.
    pub package_ref: Vec<u8>,
    pub last_resort: bool,
    /// When its lifetime ends.
    pub not_after: Millis,
    /// The TLS-serialized KeyPackage, exactly as published.
    pub bytes: Vec<u8>,
}

/// Checks one published KeyPackage for `user`'s `device`, whose registered
/// signature key is `signature_key`, at `now`.
///
/// # Errors
/// Why it does not validate, in words for the publisher.
pub fn check(
    bytes: &[u8],
    user: UserId,
    device: DeviceId,
    signature_key: &[u8],
    last_resort: bool,
    now: Millis,
    config: &MlsConfig,
) -> Result<CheckedPackage, String> {
    if bytes.len() > config.max_key_package_bytes {
        return Err(format!("is {} bytes, more than {}", bytes.len(), config.max_key_package_bytes));
    }
    let mut rest = bytes;
    let package = KeyPackageIn::tls_deserialize(&mut rest).map_err(|e| format!("is not a KeyPackage: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("has {} bytes after the KeyPackage", rest.len()));
    }
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let package = package.validate(&crypto, ProtocolVersion::Mls10).map_err(|e| format!("does not validate: {e}"))?;
    if package.ciphersuite() != CIPHERSUITE {
        return Err(format!("uses {:?}; natter speaks {CIPHERSUITE:?} only", package.ciphersuite()));
    }
    let leaf = package.leaf_node();
    if leaf.signature_key().as_slice() != signature_key {
        return Err("is not signed with the device's registered signature key".into());
    }
    let credential =
        BasicCredential::try_from(leaf.credential().clone()).map_err(|_| "has no BasicCredential".to_owned())?;
    if credential.identity() != credential_identity(user, device).as_bytes() {
        return Err("has a credential that does not name this user and device (\"<user_id>/<device_id>\")".into());
    }
    let lifetime = package.life_time();
    let latest = now.0 / 1000 + u64::from(config.max_lifetime_days) * 86_400;
    if lifetime.not_after() > latest {
        return Err(format!("has a lifetime beyond {} days", config.max_lifetime_days));
    }
    if package.last_resort() != last_resort {
        return Err(if last_resort {
            "lacks the last_resort extension".into()
        } else {
            "is marked last_resort; publish it as the last-resort package".into()
        });
    }
    let package_ref = package.hash_ref(&crypto).map_err(|e| format!("has no reference: {e}"))?;
    Ok(CheckedPackage {
        package_ref: package_ref.as_slice().to_vec(),
        last_resort,
        not_after: Millis(lifetime.not_after().saturating_mul(1000)),
        bytes: bytes.to_vec(),
    })
}

/// One MLSMessage, decoded completely (no bytes after it).
fn mls_message(bytes: &[u8], what: &str) -> Result<MlsMessageBodyIn, String> {
    let mut rest = bytes;
    let message = MlsMessageIn::tls_deserialize(&mut rest).map_err(|e| format!("{what} is not an MLSMessage: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{what} has {} bytes after the MLSMessage", rest.len()));
    }
    Ok(message.extract())
}

fn check_group(group_id: &[u8], conversation: ConversationId, what: &str) -> Result<(), String> {
    if group_id != conversation.0.as_bytes() {
        return Err(format!("{what} is for another group (an MLS group's id is its conversation id's 16 bytes)"));
    }
    Ok(())
}

/// Checks an application message for `conversation` and returns its epoch:
/// an MLSMessage holding a PrivateMessage of the conversation's group.
///
/// # Errors
/// What is wrong, in words for the sender.
pub fn check_application(bytes: &[u8], conversation: ConversationId) -> Result<u64, String> {
    match mls_message(bytes, "the message")? {
        MlsMessageBodyIn::PrivateMessage(m) => {
            check_group(m.group_id().as_slice(), conversation, "the message")?;
            if m.content_type() != ContentType::Application {
                return Err("a handshake message goes in an MlsCommit (as a PublicMessage)".into());
            }
            Ok(m.epoch().as_u64())
        }
        _ => Err("the message is not a PrivateMessage".into()),
    }
}

/// A commit that passed [`check_commit`]'s framing checks, decoded once for
/// [`delivery::changes`].
pub struct FramedCommit {
    /// The epoch it was made in.
    pub epoch: u64,
    pub(crate) message: PublicMessageIn,
}

/// Checks a commit for `conversation` and returns it with the epoch it was
/// made in: a PublicMessage commit of the conversation's group, a Welcome (if
/// any) and the GroupInfo of the next epoch of the same group.
///
/// # Errors
/// What is wrong, in words for the sender.
pub fn check_commit(
    commit: &[u8],
    welcome: &[u8],
    group_info: &[u8],
    conversation: ConversationId,
) -> Result<FramedCommit, String> {
    let message = match mls_message(commit, "the commit")? {
        MlsMessageBodyIn::PublicMessage(m) => {
            check_group(m.group_id().as_slice(), conversation, "the commit")?;
            if m.content_type() != ContentType::Commit {
                return Err("the commit's content is not a Commit".into());
            }
            m
        }
        _ => return Err("the commit is not a PublicMessage (natterd checks membership changes)".into()),
    };
    let epoch = message.epoch().as_u64();
    if !welcome.is_empty() && !matches!(mls_message(welcome, "the welcome")?, MlsMessageBodyIn::Welcome(_)) {
        return Err("the welcome is not a Welcome".into());
    }
    match mls_message(group_info, "the group_info")? {
        MlsMessageBodyIn::GroupInfo(info) => {
            check_group(info.group_id().as_slice(), conversation, "the group_info")?;
            if info.epoch().as_u64() != epoch + 1 {
                return Err(format!("the group_info is for epoch {}, not {}", info.epoch().as_u64(), epoch + 1));
            }
        }
        _ => return Err("the group_info is not a GroupInfo".into()),
    }
    Ok(FramedCommit { epoch, message })
}

/// A device's stock, as `KeyPackageStock` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    /// Ordinary KeyPackages not yet expired.
    pub remaining: u32,
    pub has_last_resort: bool,
}

/// One claimed KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub bytes: Vec<u8>,
    pub last_resort: bool,
    /// The device's stock after the claim.
    pub stock: Stock,
}

/// What a device publishes: packages checked against its `signature_key`.
#[derive(Debug, Clone)]
pub struct Publication {
    pub user: UserId,
    pub device: DeviceId,
    pub signature_key: Vec<u8>,
    pub packages: Vec<CheckedPackage>,
    pub last_resort: Option<CheckedPackage>,
}

/// Why a publication was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The stock would hold more than the capacity (nothing was added).
    #[error("the stock would hold {would} KeyPackages, more than {capacity}")]
    Full { would: u32, capacity: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The KeyPackages devices published, waiting to be claimed.
#[async_trait]
pub trait KeyPackageStore: Send + Sync {
    /// Adds `packages` (ordinary, all checked against `signature_key`) to
    /// `device`'s stock and, if given, replaces its last-resort package, in
    /// one transaction: packages already in stock are left as they are, and a
    /// stock that would exceed `capacity` refuses all of them. Packages of
    /// another signature key (the device's earlier one) are dropped.
    async fn publish(&self, publication: Publication, capacity: u32, now: Millis) -> Result<Stock, PublishError>;

    /// `device`'s stock of packages signed with `signature_key` at `now`.
    async fn stock(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Stock, StoreError>;

    /// Takes the oldest unexpired ordinary package of `device` signed with
    /// `signature_key` (deleting it: no two claims, on any node, get the same
    /// one), or else its unexpired last-resort package (which stays).
    async fn claim(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Option<Claimed>, StoreError>;

    /// Forgets the packages whose lifetime ended before `now`. Returns how
    /// many went.
    async fn sweep(&self, now: Millis) -> Result<u64, StoreError>;

    /// An erased account: forgets every package of its devices.
    async fn forget(&self, user: crate::domain::UserId) -> Result<(), StoreError>;
}

/// How long the claim counters' windows are.
pub const CLAIM_WINDOW: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    #[test]
    fn the_ciphersuite_is_the_protocols() {
        assert_eq!(u16::from(super::CIPHERSUITE), natter_proto::mls::CIPHERSUITE);
    }
}
