//! End-to-end encryption in the SDK (spec/protocol.md, "End-to-end
//! encryption"): this device's MLS identity, its KeyPackages, and what the
//! user knows of their contacts' keys.
//!
//! - [`MlsDevice`]: the device's Ed25519 signature key pair and openmls's
//!   state, kept in an SQLite file of the profile (openmls's
//!   `SqliteStorageProvider`) that never leaves the device. It registers its
//!   public key with natterd and keeps natterd's stock of its KeyPackages
//!   topped up; the private halves of those KeyPackages stay in the file.
//! - [`KnownKeys`]: trust on first use. The first time the client sees a
//!   contact's devices it remembers their keys; afterwards any change is
//!   reported ([`KeyCheck::Changed`]) for the user to see, loudly.
//! - [`safety_number`]: 60 digits two people compare (read aloud, or side by
//!   side) to know that natterd showed each of them the other's real keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use natter_proto::wire::{self, request::Body, response};
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage, OpenMlsProvider,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_sqlite_storage::{Codec, Connection, SqliteStorageProvider};
use openmls_traits::signatures::Signer as _;
use openmls_traits::types::SignatureScheme;
use rusqlite::OptionalExtension as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::{unexpected, Client, ClientError};

mod groups;
pub use groups::{is_stale_epoch, LocalHit, Opened};

/// The one ciphersuite natter speaks (`natter_proto::mls::CIPHERSUITE`).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// KeyPackages a device keeps in natterd's stock when it tops up.
pub const STOCK_TARGET: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error("the device's MLS state ({path}): {message}")]
    State { path: PathBuf, message: String },
    #[error("MLS: {0}")]
    Mls(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn mls(e: impl std::fmt::Display) -> E2eeError {
    E2eeError::Mls(e.to_string())
}

/// openmls's values as JSON in its SQLite tables.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// openmls's crypto (RustCrypto: no OpenSSL) with its state in the device's file.
pub struct Provider {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, Rc<Connection>>,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, Rc<Connection>>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

fn uuid_bytes(id: &str) -> Result<[u8; 16], E2eeError> {
    uuid::Uuid::parse_str(id).map(|u| *u.as_bytes()).map_err(|_| mls(format!("{id:?} is not an id")))
}

/// What a device signs to register its key (`natter_proto::mls`).
///
/// # Errors
/// Ids that are not UUIDs.
pub fn device_key_proof_message(user_id: &str, device_id: &str) -> Result<Vec<u8>, E2eeError> {
    Ok(natter_proto::mls::device_key_proof_message(&uuid_bytes(user_id)?, &uuid_bytes(device_id)?))
}

/// How a device's MLS state reaches its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every change fsynced before it is used (a person's device: a crash
    /// never makes it reuse a key or forget a group).
    Durable,
    /// Never fsynced: for load generation only, where many devices share one
    /// machine and one disk that stand for as many machines and disks.
    Volatile,
}

/// This device's MLS identity and state.
pub struct MlsDevice {
    provider: Provider,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    user_id: String,
    device_id: String,
    /// The state file's one connection, shared with openmls's provider, so
    /// that each change (openmls's tables and natter's: what this device
    /// decrypted, how far it read) is one transaction: all of it or none
    /// after a crash, and one fsync.
    local: Rc<Connection>,
    /// `<device id>.lock` beside the state: held while openmls's state changes.
    lock_path: PathBuf,
}

/// The device's own row: its signature key pair (openmls's tables hold the
/// rest); the plaintext (an `E2eePayload`) of each MLS message it decrypted or sent (MLS keys are
/// used once: a message cannot be decrypted twice); how far it processed each
/// conversation; a commit sent whose outcome is not known yet (the connection
/// went before the answer came); the epoch at which the device joined each
/// group (what was sent before has no keys for it); and the local search index of what it
/// decrypted (SQLite FTS5: natterd cannot index encrypted conversations).
const META: &str = "CREATE TABLE IF NOT EXISTS natter_device (
    device_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, signature_key_pair BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS natter_plaintext (
    conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, sender_user_id TEXT NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS natter_processed (conversation_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS natter_pending_commit (conversation_id TEXT PRIMARY KEY, commit_bytes BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS natter_joined (conversation_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS natter_search USING fts5(
    text, conversation_id UNINDEXED, seq UNINDEXED, sender_user_id UNINDEXED, at_ms UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2');";

impl MlsDevice {
    /// Opens (creating, with a fresh signature key pair) the state of
    /// `user_id`'s device `device_id` in `<dir>/<device_id>.db`.
    ///
    /// # Errors
    /// The file cannot be opened, or holds another device's state.
    pub fn open(dir: &Path, user_id: &str, device_id: &str) -> Result<Self, E2eeError> {
        Self::open_with(dir, user_id, device_id, Durability::Durable)
    }

    /// [`Self::open`], choosing how the state reaches the disk.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_with(dir: &Path, user_id: &str, device_id: &str, durability: Durability) -> Result<Self, E2eeError> {
        let synchronous = match durability {
            Durability::Durable => "FULL",
            Durability::Volatile => "OFF",
        };
        // The ids as natterd writes them (hyphenated, lower case): the
        // credential names them so.
        let user_id = uuid::Uuid::from_bytes(uuid_bytes(user_id)?).to_string();
        let device_id = uuid::Uuid::from_bytes(uuid_bytes(device_id)?).to_string();
        let (user_id, device_id) = (user_id.as_str(), device_id.as_str());
        let path = dir.join(format!("{device_id}.db"));
        let state = |message: String| E2eeError::State { path: path.clone(), message };
        std::fs::create_dir_all(dir).map_err(|e| state(e.to_string()))?;
        let conn = Connection::open(&path).map_err(|e| state(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| state(e.to_string()))?;
        }
        // `natter listen` and a `natter send` in another terminal share the file.
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| state(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| state(e.to_string()))?;
        conn.pragma_update(None, "synchronous", synchronous).map_err(|e| state(e.to_string()))?;
        conn.execute_batch(META).map_err(|e| state(e.to_string()))?;
        let known: Option<(String, Vec<u8>)> = conn
            .query_row("SELECT user_id, signature_key_pair FROM natter_device WHERE device_id = ?1", [device_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| state(e.to_string()))?;
        let signer = match known {
            Some((owner, ..)) if owner != user_id => {
                return Err(state(format!("it belongs to user {owner}, not {user_id}")));
            }
            Some((_, pair)) => serde_json::from_slice(&pair).map_err(|e| state(e.to_string()))?,
            None => {
                let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(mls)?;
                let pair = serde_json::to_vec(&signer).map_err(|e| state(e.to_string()))?;
                conn.execute(
                    "INSERT INTO natter_device (device_id, user_id, signature_key_pair) VALUES (?1, ?2, ?3)",
                    rusqlite::params![device_id, user_id, pair],
                )
                .map_err(|e| state(e.to_string()))?;
                signer
            }
        };
        // openmls's tables (its migrations want the connection to themselves).
        let mut migrating = SqliteStorageProvider::<JsonCodec, Connection>::new(conn);
        migrating.run_migrations().map_err(|e| state(e.to_string()))?;
        drop(migrating);
        let local = Rc::new(Connection::open(&path).map_err(|e| state(e.to_string()))?);
        // `natter listen` and a `natter send` in another terminal share the file.
        local.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| state(e.to_string()))?;
        local.pragma_update(None, "synchronous", synchronous).map_err(|e| state(e.to_string()))?;
        let storage = SqliteStorageProvider::<JsonCodec, Rc<Connection>>::new(local.clone());
        let provider = Provider { crypto: RustCrypto::default(), storage };
        let credential = CredentialWithKey {
            credential: BasicCredential::new(natter_proto::mls::credential_identity(user_id, device_id).into_bytes())
                .into(),
            signature_key: signer.public().into(),
        };
        Ok(Self {
            provider,
            signer,
            credential,
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            local,
            lock_path: dir.join(format!("{device_id}.lock")),
        })
    }

    /// The Ed25519 public key (32 bytes).
    pub fn signature_key(&self) -> &[u8] {
        self.signer.public()
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The `RegisterDeviceKey` request: the public key and the proof that
    /// this device holds its private half.
    ///
    /// # Errors
    /// Signing failed.
    pub fn register_request(&self) -> Result<wire::RegisterDeviceKey, E2eeError> {
        let message = device_key_proof_message(&self.user_id, &self.device_id)?;
        let proof = self.signer.sign(&message).map_err(|e| mls(format!("signing: {e:?}")))?;
        Ok(wire::RegisterDeviceKey { signature_key: self.signer.public().to_vec(), proof })
    }

    /// Registers this device's public key with natterd (nothing changes when
    /// it has it already). Returns whether natterd's record changed.
    ///
    /// # Errors
    /// What natterd answered.
    pub async fn register(&self, client: &Client) -> Result<bool, E2eeError> {
        match client.request(Body::RegisterDeviceKey(self.register_request()?)).await? {
            response::Result::DeviceKey(ok) => Ok(ok.changed),
            other => Err(unexpected(&other).into()),
        }
    }

    /// A fresh KeyPackage (TLS-serialized), its private keys kept in the
    /// device's state for the Welcome that will use it.
    ///
    /// # Errors
    /// openmls or the state file failed.
    pub fn key_package(&self, last_resort: bool) -> Result<Vec<u8>, E2eeError> {
        // Every leaf says it understands the last_resort extension: the
        // last-resort package carries it, and a package's extensions must be
        // in its leaf's capabilities.
        let builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
        let builder = if last_resort { builder.mark_as_last_resort() } else { builder };
        let bundle = builder.build(CIPHERSUITE, &self.provider, &self.signer, self.credential.clone()).map_err(mls)?;
        bundle.key_package().tls_serialize_detached().map_err(mls)
    }

    /// Brings natterd's stock of this device's KeyPackages up to
    /// [`STOCK_TARGET`] (at most its capacity) and makes sure it has a
    /// last-resort one. Returns the stock afterwards.
    ///
    /// # Errors
    /// What natterd answered, or openmls failed.
    pub async fn top_up(&self, client: &Client) -> Result<wire::KeyPackageStock, E2eeError> {
        let stock = key_package_stock(client).await?;
        let want = STOCK_TARGET.min(stock.capacity).saturating_sub(stock.remaining);
        if want < stock.low_water.max(1) && stock.remaining >= stock.low_water && stock.has_last_resort {
            return Ok(stock);
        }
        let key_packages = (0..want).map(|_| self.key_package(false)).collect::<Result<Vec<_>, _>>()?;
        let last_resort = if stock.has_last_resort { Vec::new() } else { self.key_package(true)? };
        if key_packages.is_empty() && last_resort.is_empty() {
            return Ok(stock);
        }
        Ok(publish_key_packages(client, key_packages, last_resort).await?)
    }
}

/// What every leaf of this SDK says it supports: the defaults, and the
/// last_resort extension.
fn capabilities() -> Capabilities {
    Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build()
}

/// # Errors
/// `NO_DEVICE_KEY`.
pub async fn key_package_stock(client: &Client) -> Result<wire::KeyPackageStock, ClientError> {
    match client.request(Body::GetKeyPackageStock(wire::GetKeyPackageStock {})).await? {
        response::Result::KeyPackageStock(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

/// # Errors
/// `NO_DEVICE_KEY`, `KEY_PACKAGE_INVALID`, `KEY_PACKAGES_FULL`.
pub async fn publish_key_packages(
    client: &Client,
    key_packages: Vec<Vec<u8>>,
    last_resort: Vec<u8>,
) -> Result<wire::KeyPackageStock, ClientError> {
    match client.request(Body::PublishKeyPackages(wire::PublishKeyPackages { key_packages, last_resort })).await? {
        response::Result::KeyPackageStock(s) => Ok(s),
        other => Err(unexpected(&other)),
    }
}

/// The device keys of `user_id` (the caller, or someone sharing a conversation).
///
/// # Errors
/// `NOT_FOUND`, `INVALID_ARGUMENT`.
pub async fn device_keys(client: &Client, user_id: &str) -> Result<wire::DeviceKeyList, ClientError> {
    match client.request(Body::ListDeviceKeys(wire::ListDeviceKeys { user_id: user_id.into() })).await? {
        response::Result::DeviceKeys(l) => Ok(l),
        other => Err(unexpected(&other)),
    }
}

/// One KeyPackage of each of `user_id`'s devices (not the calling one).
///
/// # Errors
/// `NOT_FOUND`, `RATE_LIMITED`.
pub async fn claim_key_packages(client: &Client, user_id: &str) -> Result<wire::ClaimedKeyPackages, ClientError> {
    match client.request(Body::ClaimKeyPackages(wire::ClaimKeyPackages { user_id: user_id.into() })).await? {
        response::Result::ClaimedKeyPackages(c) => Ok(c),
        other => Err(unexpected(&other)),
    }
}

/// The GroupInfo natterd keeps of an encrypted conversation (epoch 0 and
/// none when nobody started its group yet).
///
/// # Errors
/// `NOT_FOUND`, `NOT_A_MEMBER`, `ENCRYPTION_MISMATCH`.
pub async fn group_info(client: &Client, conversation_id: &str) -> Result<wire::GroupInfo, ClientError> {
    match client.request(Body::GetGroupInfo(wire::GetGroupInfo { conversation_id: conversation_id.into() })).await? {
        response::Result::GroupInfo(g) => Ok(g),
        other => Err(unexpected(&other)),
    }
}

/// 30 bytes that stand for a user's set of device keys: SHA-512, 5,200 times
/// over, of "natter-safety-v1", the user id's 16 bytes and each device's id
/// (16 bytes) and key, by device id.
///
/// # Errors
/// Ids that are not UUIDs.
pub fn fingerprint(user_id: &str, devices: &[(String, Vec<u8>)]) -> Result<[u8; 30], E2eeError> {
    let mut sorted: Vec<&(String, Vec<u8>)> = devices.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut input = b"natter-safety-v1".to_vec();
    input.extend_from_slice(&uuid_bytes(user_id)?);
    for (device, key) in sorted {
        input.extend_from_slice(&uuid_bytes(device)?);
        input.extend_from_slice(&(key.len() as u16).to_be_bytes());
        input.extend_from_slice(key);
    }
    let mut hash = Sha512::digest(&input).to_vec();
    for _ in 1..5200 {
        let mut h = Sha512::new();
        h.update(&hash);
        h.update(&input);
        hash = h.finalize().to_vec();
    }
    let mut out = [0u8; 30];
    out.copy_from_slice(&hash[..30]);
    Ok(out)
}

/// Six groups of five digits: each group is five bytes of the fingerprint,
/// big-endian, modulo 100,000.
fn digits(fp: &[u8; 30]) -> Vec<String> {
    fp.chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two users: the 30 digits of each one's
/// [`fingerprint`], the smaller user id's first, in twelve groups of five.
/// Both people see the same number.
///
/// # Errors
/// Ids that are not UUIDs.
pub fn safety_number(a: (&str, &[(String, Vec<u8>)]), b: (&str, &[(String, Vec<u8>)])) -> Result<String, E2eeError> {
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let mut groups = digits(&fingerprint(first.0, first.1)?);
    groups.extend(digits(&fingerprint(second.0, second.1)?));
    Ok(groups.join(" "))
}

/// What the client knew of a contact's keys, compared with what natterd shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Never seen before: remembered now.
    FirstSeen,
    /// As remembered.
    Same { verified: bool },
    /// Not as remembered: devices added, removed, or with another key. The
    /// new set is remembered; an earlier verification no longer holds.
    Changed { added: Vec<String>, removed: Vec<String>, rekeyed: Vec<String>, was_verified: bool },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct KnownUser {
    label: String,
    verified: bool,
    /// Device id → key, hex.
    devices: BTreeMap<String, String>,
}

/// The contacts' keys this profile has seen (`known-keys.toml`, mode 0600).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KnownKeys {
    users: BTreeMap<String, KnownUser>,
    #[serde(skip)]
    path: PathBuf,
}

impl KnownKeys {
    /// # Errors
    /// A file that is there but unreadable.
    pub fn load(path: &Path) -> Result<Self, E2eeError> {
        let state = |message: String| E2eeError::State { path: path.to_owned(), message };
        let mut known: KnownKeys = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| state(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KnownKeys::default(),
            Err(e) => return Err(state(e.to_string())),
        };
        known.path = path.to_owned();
        Ok(known)
    }

    /// Compares `devices` (id, key) of `user_id` with what was seen before,
    /// and remembers them.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn check(&mut self, user_id: &str, label: &str, devices: &[(String, Vec<u8>)]) -> Result<KeyCheck, E2eeError> {
        let now: BTreeMap<String, String> = devices.iter().map(|(d, k)| (d.clone(), hex::encode(k))).collect();
        let answer = match self.users.get(user_id) {
            None => KeyCheck::FirstSeen,
            Some(before) if before.devices == now => return Ok(KeyCheck::Same { verified: before.verified }),
            Some(before) => KeyCheck::Changed {
                added: now.keys().filter(|d| !before.devices.contains_key(*d)).cloned().collect(),
                removed: before.devices.keys().filter(|d| !now.contains_key(*d)).cloned().collect(),
                rekeyed: now
                    .iter()
                    .filter(|(d, k)| before.devices.get(*d).is_some_and(|old| old != *k))
                    .map(|(d, _)| d.clone())
                    .collect(),
                was_verified: before.verified,
            },
        };
        self.users.insert(user_id.to_owned(), KnownUser { label: label.to_owned(), verified: false, devices: now });
        self.save()?;
        Ok(answer)
    }

    /// Marks the remembered keys of `user_id` as compared in person.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn mark_verified(&mut self, user_id: &str) -> Result<(), E2eeError> {
        if let Some(u) = self.users.get_mut(user_id) {
            u.verified = true;
        }
        self.save()
    }

    fn save(&self) -> Result<(), E2eeError> {
        let state = |message: String| E2eeError::State { path: self.path.clone(), message };
        let text = toml::to_string(self).map_err(|e| state(e.to_string()))?;
        let tmp = self.path.with_extension("toml.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        use std::io::Write as _;
        let mut f = opts.open(&tmp).map_err(|e| state(e.to_string()))?;
        f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| state(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| state(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "6a1f0c2e-8d4b-4e7a-9c3f-1b2d3e4f5a6b";
    const BOB: &str = "7b2e1d3f-9e5c-4f8b-8d40-2c3e4f5a6b7c";

    fn devices(n: u8) -> Vec<(String, Vec<u8>)> {
        vec![
            ("3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into(), vec![n; 32]),
            ("1c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into(), vec![n + 1; 32]),
        ]
    }

    #[test]
    fn the_ciphersuite_is_the_protocols() {
        assert_eq!(u16::from(CIPHERSUITE), natter_proto::mls::CIPHERSUITE);
    }

    #[test]
    fn the_safety_number_is_the_spec_vector_the_same_both_ways_and_changes_with_a_key() {
        let a = devices(1);
        let b = devices(7);
        let number = safety_number((ALICE, &a), (BOB, &b)).unwrap();
        // spec/protocol.md section 5.28 gives this vector.
        assert_eq!(number, "42042 07797 75144 38705 14394 99857 07180 77075 63285 07228 11843 92345");
        assert_eq!(safety_number((BOB, &b), (ALICE, &a)).unwrap(), number);
        let mut reordered = a.clone();
        reordered.reverse();
        assert_eq!(safety_number((ALICE, &reordered), (BOB, &b)).unwrap(), number, "device order does not count");
        assert_ne!(safety_number((ALICE, &devices(2)), (BOB, &b)).unwrap(), number);
        assert!(safety_number(("nope", &a), (BOB, &b)).is_err());
    }

    #[test]
    fn known_keys_remember_the_first_set_and_report_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-keys.toml");
        let mut known = KnownKeys::load(&path).unwrap();
        assert_eq!(known.check(BOB, "bob", &devices(1)).unwrap(), KeyCheck::FirstSeen);
        known.mark_verified(BOB).unwrap();
        let mut known = KnownKeys::load(&path).unwrap();
        assert_eq!(known.check(BOB, "bob", &devices(1)).unwrap(), KeyCheck::Same { verified: true });
        let mut changed = devices(1);
        changed[0].1 = vec![9; 32];
        changed.remove(1);
        changed.push(("5c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into(), vec![3; 32]));
        let check = known.check(BOB, "bob", &changed).unwrap();
        assert_eq!(
            check,
            KeyCheck::Changed {
                added: vec!["5c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into()],
                removed: vec!["1c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into()],
                rekeyed: vec!["3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f".into()],
                was_verified: true,
            }
        );
        assert_eq!(known.check(BOB, "bob", &changed).unwrap(), KeyCheck::Same { verified: false });
    }
}
