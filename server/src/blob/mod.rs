//! Media bytes: the [`BlobStore`] seam, its configuration (`[blob]`), and one
//! module per backend: `fs` (the default: content-addressed files under
//! `<data_dir>/blobs/`) and `s3` (any S3-compatible store: AWS, MinIO,
//! SeaweedFS, Garage).
//!
//! A blob is named by the SHA-256 of its bytes ([`BlobId`]), so identical bytes
//! are stored once; the store only knows put-if-absent and delete (who still
//! refers to a blob is the read models' business, not this module's). Bytes
//! arrive through a resumable upload: [`BlobStore::begin_upload`] with the
//! declared size and SHA-256, any number of [`BlobStore::append`]s (each answers
//! the offset that is durable, which is where a client resumes after a lost
//! connection or a natterd restart), then [`BlobStore::finish_upload`], which
//! checks size and SHA-256 before the blob becomes visible. A mismatch is a
//! typed error and leaves nothing visible.
//!
//! Both backends stage an upload under `<data_dir>/blobs/partial/` (`partial`):
//! the fs backend the whole object, the s3 backend the part being filled (full
//! parts go to the store as multipart parts). The backend is chosen once, by
//! [`open`]. This module never logs or shows the S3 secret key: not in errors,
//! not in `Debug` output.

pub mod fs;
mod partial;
pub mod s3;
mod sha256;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use fs::FsBlobStore;
pub use s3::S3BlobStore;

/// The smallest S3 multipart part (all but the last part must be at least this).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// The largest S3 part.
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// The most parts one S3 multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// The largest S3 object.
pub const MAX_S3_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// What a blob is called: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }

    /// 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads 64 hexadecimal digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        if text.len() != 64 {
            return None;
        }
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for BlobId {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.to_hex())
    }
}

/// An upload in progress: 32 lowercase hexadecimal digits (a random UUID),
/// also its file name under `<data_dir>/blobs/partial/`. Parsed, never taken
/// as given, because a client names it when it resumes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId(String);

impl UploadId {
    pub(crate) fn random() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Reads an id that [`BlobStore::begin_upload`] made; `None` for anything
    /// that is not 32 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub upload: UploadId,
    /// The declared SHA-256.
    pub blob: BlobId,
    /// The declared size.
    pub size: u64,
    /// Bytes received and durable (fsynced, or stored as parts): the next
    /// [`BlobStore::append`] starts here, after a reconnect or a restart too.
    pub offset: u64,
}

/// A finished upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOutcome {
    pub blob: BlobId,
    pub size: u64,
    /// The blob was already stored (by this upload, or by another with the same
    /// bytes), so nothing was written. A finish retried after a lost answer
    /// says `true` as well.
    pub deduplicated: bool,
}

/// A stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    pub blob: BlobId,
    pub size: u64,
    /// When its bytes were last written, in milliseconds since the epoch (the
    /// collector leaves young blobs alone).
    pub stored_at_ms: u64,
}

/// Bytes `offset..offset + len` of a blob. A range that runs past the end is
/// cut at the end (a player asks for "up to N bytes from here"); one that
/// starts past the end is [`BlobError::RangeNotSatisfiable`]; one that starts
/// exactly at the end (or has `len` 0) reads nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

impl ByteRange {
    /// The bytes of a `size`-byte blob this range reads: `(offset, len)`.
    ///
    /// # Errors
    /// [`BlobError::RangeNotSatisfiable`] when it starts past the end.
    pub fn resolve(range: Option<ByteRange>, size: u64) -> Result<(u64, u64), BlobError> {
        match range {
            None => Ok((0, size)),
            Some(r) if r.offset > size => Err(BlobError::RangeNotSatisfiable { offset: r.offset, size }),
            Some(r) => Ok((r.offset, r.len.min(size - r.offset))),
        }
    }
}

/// A blob being read.
pub struct BlobRead {
    /// The whole blob's size.
    pub total_size: u64,
    /// Where `body` starts.
    pub offset: u64,
    /// How many bytes `body` yields.
    pub len: u64,
    pub body: Pin<Box<dyn AsyncRead + Send>>,
}

impl BlobRead {
    /// Reads the whole body into memory (tests, small blobs).
    ///
    /// # Errors
    /// The store failed mid-read, or the body was shorter than `len`.
    pub async fn into_bytes(mut self) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(64 << 20));
        self.body.read_to_end(&mut out).await.map_err(|e| BlobError::Storage(format!("reading a blob: {e}")))?;
        if out.len() as u64 != self.len {
            return Err(BlobError::Storage(format!("a blob read ended after {} of {} bytes", out.len(), self.len)));
        }
        Ok(out)
    }
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("total_size", &self.total_size)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What a presigned download URL says about the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignOptions {
    /// How long the URL works (S3 allows up to 7 days).
    pub expires_in: Duration,
    /// The response's `Content-Type` (the type detected from the bytes).
    pub content_type: Option<String>,
    /// The response's `Content-Disposition` (e.g. `attachment; filename="a.pdf"`).
    pub content_disposition: Option<String>,
}

/// How the declared bytes differ from those received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Fewer bytes arrived than were declared (more is [`BlobError::TooLarge`]).
    Size { declared: u64, received: u64 },
    /// The bytes' SHA-256 is not the declared one.
    Sha256 { declared: BlobId, actual: BlobId },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size { declared, received } => write!(f, "{received} bytes received, {declared} declared"),
            Self::Sha256 { declared, actual } => write!(f, "SHA-256 {actual}, {declared} declared"),
        }
    }
}

/// Why a blob operation failed. Never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// No blob has this id.
    #[error("no such blob")]
    NotFound,
    /// No upload has this id: never begun, finished, aborted, refused after a
    /// mismatch, or swept as stale.
    #[error("no such upload")]
    UploadNotFound,
    /// Another transfer is appending to (or finishing) this upload right now,
    /// e.g. the stream of a connection that has not yet noticed it is dead.
    #[error("the upload is busy with another transfer")]
    UploadBusy,
    /// An append must start at the confirmed offset.
    #[error("append at {got}, but the upload's confirmed offset is {confirmed}")]
    WrongOffset { confirmed: u64, got: u64 },
    /// `finish_upload` before every declared byte arrived (the upload stays,
    /// to be resumed at `received`).
    #[error("upload incomplete: {received} of {size} bytes")]
    Incomplete { received: u64, size: u64 },
    /// The bytes are not what was declared: nothing became visible and the
    /// upload is gone.
    #[error("the bytes do not match the declaration: {0}")]
    Mismatch(Mismatch),
    /// More bytes than `limit` (the declared size, or the most this store
    /// takes): reading stopped there and the upload is gone.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The range starts past the end of the blob.
    #[error("range starts at {offset}, past the end of the blob ({size} bytes)")]
    RangeNotSatisfiable { offset: u64, size: u64 },
    /// Reading the bytes to append failed (the sender went away): what
    /// arrived before is kept, up to `offset`, where a resume starts.
    #[error("the upload's bytes stopped at offset {offset}: {reason}")]
    Interrupted { offset: u64, reason: String },
    /// The store cannot be reached, is slow, or asked us to slow down: trying
    /// again later may work.
    #[error("blob store unavailable (retry in {}s): {reason}", retry_after.as_secs())]
    Unavailable { retry_after: Duration, reason: String },
    /// The store failed in a way retrying will not fix (disk full, access
    /// refused, a missing bucket, a corrupt upload record).
    #[error("blob store failure: {0}")]
    Storage(String),
}

impl BlobError {
    pub(crate) fn io(context: &str, e: std::io::Error) -> Self {
        Self::Storage(format!("{context}: {e}"))
    }
}

/// Which backend holds the blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlobBackend {
    /// Files under `<data_dir>/blobs/`.
    #[default]
    Fs,
    /// An S3-compatible object store.
    S3,
}

impl BlobBackend {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fs => "fs",
            Self::S3 => "s3",
        }
    }
}

/// Content-addressed blob storage with resumable, verified uploads. One value
/// is shared by every session.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync {
    /// Which backend this is.
    fn backend(&self) -> BlobBackend;

    /// Starts an upload of `size` bytes whose SHA-256 is `blob`. The upload is
    /// kept (across restarts too) until finished, aborted, or untouched for
    /// `blob.partial_ttl_secs` (then [`BlobStore::sweep_stale_uploads`] removes it).
    ///
    /// Whether the blob is already stored is not checked here: the bytes are
    /// received and verified either way (telling a client that a blob exists
    /// before it proved it has the bytes would let it probe others' files).
    ///
    /// # Errors
    /// [`BlobError::TooLarge`] over the backend's limit; storage failures.
    async fn begin_upload(&self, blob: BlobId, size: u64) -> Result<UploadStatus, BlobError>;

    /// Where `upload` stands: what a resuming client asks first.
    ///
    /// # Errors
    /// [`BlobError::UploadNotFound`]; storage failures.
    async fn upload_status(&self, upload: &UploadId) -> Result<UploadStatus, BlobError>;

    /// Reads `body` until it ends or the declared size is reached (never
    /// further: a body that carries more is the caller's to notice) and
    /// appends it at `offset`, which must be the confirmed offset. Returns the
    /// new confirmed offset: every byte below it is durable.
    ///
    /// # Errors
    /// [`BlobError::WrongOffset`], [`BlobError::UploadNotFound`],
    /// [`BlobError::UploadBusy`]; [`BlobError::Interrupted`] when `body`
    /// fails (the bytes before are kept); [`BlobError::Unavailable`] when a
    /// full part cannot be handed to the store (the bytes stay staged and the
    /// next append or finish hands it over); storage failures.
    async fn append(
        &self,
        upload: &UploadId,
        offset: u64,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<UploadStatus, BlobError>;

    /// Checks the upload's size and SHA-256 against the declaration and makes
    /// the blob visible (unless it already was: put-if-absent). After a
    /// mismatch nothing is visible and the upload is gone.
    ///
    /// # Errors
    /// [`BlobError::Incomplete`] (the upload stays), [`BlobError::Mismatch`],
    /// [`BlobError::UploadNotFound`], [`BlobError::UploadBusy`],
    /// [`BlobError::Unavailable`] (the upload stays: finish again later).
    async fn finish_upload(&self, upload: &UploadId) -> Result<PutOutcome, BlobError>;

    /// Drops an upload and whatever it staged. Aborting an unknown upload is
    /// not an error.
    ///
    /// # Errors
    /// [`BlobError::UploadBusy`]; storage failures.
    async fn abort_upload(&self, upload: &UploadId) -> Result<(), BlobError>;

    /// Reads a blob, or `range` of it.
    ///
    /// # Errors
    /// [`BlobError::NotFound`], [`BlobError::RangeNotSatisfiable`],
    /// [`BlobError::Unavailable`]; storage failures.
    async fn get(&self, blob: BlobId, range: Option<ByteRange>) -> Result<BlobRead, BlobError>;

    /// The blob's size, or `None` when it is not stored.
    ///
    /// # Errors
    /// [`BlobError::Unavailable`]; storage failures.
    async fn stat(&self, blob: BlobId) -> Result<Option<BlobStat>, BlobError>;

    /// Removes a blob; removing one that is not stored is not an error.
    ///
    /// # Errors
    /// [`BlobError::Unavailable`]; storage failures.
    async fn delete(&self, blob: BlobId) -> Result<(), BlobError>;

    /// Up to `limit` stored blobs in id order, after `after` (for garbage
    /// collection: which blobs does no message refer to?).
    ///
    /// # Errors
    /// [`BlobError::Unavailable`]; storage failures.
    async fn list(&self, after: Option<BlobId>, limit: usize) -> Result<Vec<BlobStat>, BlobError>;

    /// A URL that downloads the blob straight from the store, valid for
    /// `options.expires_in`; `None` when the backend has no such thing (fs:
    /// downloads go through natterd).
    ///
    /// # Errors
    /// An expiry the store does not allow; storage failures.
    async fn presign_get(&self, blob: BlobId, options: &PresignOptions) -> Result<Option<String>, BlobError>;

    /// Removes uploads untouched for `blob.partial_ttl_secs` (and, on s3, their
    /// multipart uploads); returns how many. Meant to run every few minutes.
    ///
    /// # Errors
    /// Storage failures (one upload that cannot be removed does not stop the others).
    async fn sweep_stale_uploads(&self) -> Result<usize, BlobError>;

    /// Whether the store answers and the configuration fits it (fs: the
    /// directory is writable; s3: the bucket exists and the keys are accepted).
    ///
    /// # Errors
    /// What is wrong.
    async fn check(&self) -> Result<(), BlobError>;

    /// Stores `body`, which must hold exactly `size` bytes whose SHA-256 is
    /// `blob` and then end: `begin_upload`, one `append`, `finish_upload`
    /// (the upload is aborted when any of them fails).
    ///
    /// # Errors
    /// [`BlobError::Mismatch`] for a short body or another SHA-256,
    /// [`BlobError::TooLarge`] for a longer body, and as the steps above.
    async fn put(
        &self,
        blob: BlobId,
        size: u64,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<PutOutcome, BlobError> {
        let status = self.begin_upload(blob, size).await?;
        let upload = status.upload;
        let result = async {
            let status = self.append(&upload, 0, body).await?;
            if status.offset < size {
                return Err(BlobError::Mismatch(Mismatch::Size { declared: size, received: status.offset }));
            }
            let mut one = [0u8; 1];
            match body.read(&mut one).await {
                Ok(0) => {}
                Ok(_) => return Err(BlobError::TooLarge { limit: size }),
                Err(e) => return Err(BlobError::Interrupted { offset: size, reason: e.to_string() }),
            }
            self.finish_upload(&upload).await
        }
        .await;
        if result.is_err() {
            let _ = self.abort_upload(&upload).await;
        }
        result
    }

    /// Whether the blob is stored.
    ///
    /// # Errors
    /// As [`BlobStore::stat`].
    async fn exists(&self, blob: BlobId) -> Result<bool, BlobError> {
        Ok(self.stat(blob).await?.is_some())
    }
}

/// An `[blob]` configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BlobConfigError {
    #[error("invalid blob configuration: {0}")]
    Invalid(String),
    #[error("cannot read blob.secret_access_key_file {}: {source}", path.display())]
    SecretFile { path: PathBuf, source: std::io::Error },
    #[error("blob directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot build the HTTPS client: {0}")]
    HttpClient(String),
}

/// The `[blob]` table of natterd's configuration.
///
/// Every field serializes, `None` included: natterd lists its configuration
/// keys by serializing the defaults.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlobConfig {
    /// `"fs"` (the default: files under `<data_dir>/blobs/`) or `"s3"`.
    pub backend: BlobBackend,
    /// An upload untouched this long (no bytes, no finish) is removed by the sweep.
    pub partial_ttl_secs: u64,
    /// s3: the bucket (it must exist).
    pub bucket: Option<String>,
    /// s3: the region requests are signed for (`us-east-1` suits most
    /// S3-compatible stores).
    pub region: String,
    /// s3: the store's address, e.g. `https://minio.example.org:9000`; unset:
    /// AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// s3: address buckets by path (`https://host/bucket/key`) rather than by
    /// host name (`https://bucket.host/key`); MinIO, SeaweedFS and Garage
    /// usually want this.
    pub path_style: bool,
    /// s3: the access key id.
    pub access_key_id: Option<String>,
    /// s3: the secret access key; prefer `secret_access_key_file`.
    pub secret_access_key: Option<String>,
    /// s3: a file holding the secret access key (one trailing line break is
    /// ignored); read once, when natterd starts.
    pub secret_access_key_file: Option<PathBuf>,
    /// s3: every object's key is this prefix and the blob's hex SHA-256.
    pub key_prefix: String,
    /// s3: the size of a multipart part (at least 5 MiB); an object of up to
    /// this size is stored with one PUT.
    pub part_size_bytes: u64,
    /// s3: bound on connecting, and on each wait for the store's answer or the
    /// next bytes of it, in milliseconds.
    pub timeout_ms: u64,
    /// s3: allows an `endpoint` of `http://` to a loopback address (tests);
    /// any other `endpoint` must be `https://` whatever this says.
    pub allow_http_loopback: bool,
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Fs,
            partial_ttl_secs: 24 * 60 * 60,
            bucket: None,
            region: "us-east-1".into(),
            endpoint: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            key_prefix: "blobs/".into(),
            part_size_bytes: 8 * 1024 * 1024,
            timeout_ms: 30_000,
            allow_http_loopback: false,
        }
    }
}

impl fmt::Debug for BlobConfig {
    /// As derived, but the secret key is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobConfig")
            .field("backend", &self.backend)
            .field("partial_ttl_secs", &self.partial_ttl_secs)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| format_args!("<redacted>")))
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("key_prefix", &self.key_prefix)
            .field("part_size_bytes", &self.part_size_bytes)
            .field("timeout_ms", &self.timeout_ms)
            .field("allow_http_loopback", &self.allow_http_loopback)
            .finish()
    }
}

impl BlobConfig {
    /// How long an untouched upload is kept.
    pub fn partial_ttl(&self) -> Duration {
        Duration::from_secs(self.partial_ttl_secs)
    }

    /// Checks what can be checked without the network or the secret file.
    ///
    /// # Errors
    /// A message naming the `blob.*` key at fault (never the secret).
    pub fn validate(&self) -> Result<(), String> {
        match self.backend {
            BlobBackend::Fs => self.validate_fs(),
            BlobBackend::S3 => self.validate_s3(),
        }
    }

    /// S3 settings with the fs backend would store media where nobody looks:
    /// surely a forgotten `backend = "s3"`.
    fn validate_fs(&self) -> Result<(), String> {
        let defaults = Self::default();
        let set = [
            ("bucket", self.bucket.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
            ("secret_access_key_file", self.secret_access_key_file.is_some()),
            ("region", self.region != defaults.region),
            ("path_style", self.path_style != defaults.path_style),
            ("key_prefix", self.key_prefix != defaults.key_prefix),
            ("part_size_bytes", self.part_size_bytes != defaults.part_size_bytes),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => Err(format!(
                "blob.{key} is set but blob.backend is \"fs\" (files under the data directory); \
                 set blob.backend = \"s3\""
            )),
            None => Ok(()),
        }
    }

    fn validate_s3(&self) -> Result<(), String> {
        match &self.bucket {
            None => return Err("blob.backend \"s3\" needs blob.bucket".into()),
            Some(bucket) => check_bucket_name(bucket)?,
        }
        if self.region.trim().is_empty() || self.region.contains(|c: char| !c.is_ascii_alphanumeric() && c != '-') {
            return Err(format!("blob.region {:?} is not a region name such as \"us-east-1\"", self.region));
        }
        if let Some(endpoint) = &self.endpoint {
            // Checked first: `validate_url` repeats an address it cannot
            // parse, and one with a secret in it may not parse.
            if endpoint.contains('@') {
                return Err("blob.endpoint must not carry credentials \
                            (set blob.access_key_id and blob.secret_access_key_file)"
                    .into());
            }
            crate::auth::http::validate_url(
                "blob",
                "endpoint",
                endpoint,
                self.allow_http_loopback,
                "blob.access_key_id and blob.secret_access_key_file",
                false,
            )?;
        }
        match &self.access_key_id {
            None => return Err("blob.backend \"s3\" needs blob.access_key_id".into()),
            Some(id) if id.trim().is_empty() => return Err("blob.access_key_id is empty".into()),
            Some(_) => {}
        }
        match (&self.secret_access_key, &self.secret_access_key_file) {
            (None, None) => {
                return Err("blob.backend \"s3\" needs blob.secret_access_key_file (or blob.secret_access_key)".into())
            }
            (Some(_), Some(_)) => {
                return Err("blob.secret_access_key and blob.secret_access_key_file exclude each other: set one".into())
            }
            (Some(secret), None) if secret.trim().is_empty() => return Err("blob.secret_access_key is empty".into()),
            _ => {}
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&self.part_size_bytes) {
            return Err(format!(
                "blob.part_size_bytes must be between {MIN_PART_BYTES} (5 MiB) and {MAX_PART_BYTES} (5 GiB), \
                 not {}",
                self.part_size_bytes
            ));
        }
        let prefix_ok = !self.key_prefix.starts_with('/')
            && self.key_prefix.len() <= 512
            && self.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if !prefix_ok {
            return Err(format!(
                "blob.key_prefix {:?} may hold only letters, digits and / - _ . (and not start with /)",
                self.key_prefix
            ));
        }
        if self.timeout_ms == 0 {
            return Err("blob.timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// S3's bucket naming rules (the part that matters for path-style and
/// virtual-host addressing alike): 3 to 63 lowercase letters, digits, `-`
/// and `.`, starting and ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let bytes = bucket.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "blob.bucket {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, - and ., \
             starting and ending with a letter or digit)"
        ))
    }
}

/// `<data_dir>/blobs`: where the fs backend keeps blobs and both backends
/// stage uploads (in `partial/`).
pub fn blobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("blobs")
}

/// The backend `config` names, built once (the secret file is read here, the
/// directories made).
///
/// # Errors
/// An invalid configuration, an unreadable or empty secret file, a data
/// directory that cannot be written.
pub fn open(config: &BlobConfig, data_dir: &Path) -> Result<Arc<dyn BlobStore>, BlobConfigError> {
    config.validate().map_err(BlobConfigError::Invalid)?;
    Ok(match config.backend {
        BlobBackend::Fs => Arc::new(FsBlobStore::open(config, data_dir)?),
        BlobBackend::S3 => Arc::new(S3BlobStore::open(config, data_dir)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn s3() -> BlobConfig {
        BlobConfig {
            backend: BlobBackend::S3,
            bucket: Some("natter-media".into()),
            endpoint: Some("https://s3.example.org".into()),
            path_style: true,
            access_key_id: Some("AKIAIOSFODNN7EXAMPLE".into()),
            secret_access_key: Some(SECRET.into()),
            ..BlobConfig::default()
        }
    }

    #[test]
    fn blob_ids_are_sha256_in_hex() {
        let id = BlobId::of(b"abc");
        assert_eq!(id.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(BlobId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(BlobId::from_hex(&id.to_hex().to_uppercase()), Some(id));
        for bad in ["", "ba78", &"g".repeat(64), &format!("{}0", id.to_hex())] {
            assert_eq!(BlobId::from_hex(bad), None, "{bad}");
        }
        assert_eq!(id.to_string(), id.to_hex());
    }

    #[test]
    fn upload_ids_are_parsed_not_trusted() {
        let id = UploadId::random();
        assert_eq!(UploadId::parse(id.as_str()), Some(id.clone()));
        assert_ne!(UploadId::random(), id);
        for bad in ["", "../../etc/passwd", &"A".repeat(32), &"0".repeat(31), &format!("{}/", "0".repeat(31))] {
            assert_eq!(UploadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranges_are_cut_at_the_end_and_refused_past_it() {
        let r = |offset, len| Some(ByteRange { offset, len });
        assert_eq!(ByteRange::resolve(None, 10).unwrap(), (0, 10));
        assert_eq!(ByteRange::resolve(r(0, 4), 10).unwrap(), (0, 4));
        assert_eq!(ByteRange::resolve(r(8, 4), 10).unwrap(), (8, 2));
        assert_eq!(ByteRange::resolve(r(3, 0), 10).unwrap(), (3, 0));
        assert_eq!(ByteRange::resolve(r(10, 5), 10).unwrap(), (10, 0));
        assert_eq!(ByteRange::resolve(r(0, u64::MAX), 10).unwrap(), (0, 10));
        assert_eq!(ByteRange::resolve(r(11, 1), 10), Err(BlobError::RangeNotSatisfiable { offset: 11, size: 10 }));
        assert_eq!(ByteRange::resolve(r(0, 1), 0).unwrap(), (0, 0));
    }

    #[test]
    fn defaults_are_fs_and_every_key_serializes() {
        let c = BlobConfig::default();
        assert_eq!(c.backend, BlobBackend::Fs);
        c.validate().unwrap();
        let keys = serde_json::to_value(&c).unwrap();
        let keys: Vec<&String> = keys.as_object().unwrap().keys().collect();
        for key in ["backend", "bucket", "endpoint", "secret_access_key", "secret_access_key_file", "part_size_bytes"] {
            assert!(keys.iter().any(|k| *k == key), "{key} in {keys:?}");
        }
        let parsed: BlobConfig = toml::from_str("backend = \"s3\"\nbucket = \"b-1\"\npath_style = true").unwrap();
        assert_eq!(parsed.backend, BlobBackend::S3);
        assert!(toml::from_str::<BlobConfig>("backend = \"S3\"").is_err());
        assert!(toml::from_str::<BlobConfig>("backend = \"minio\"").is_err());
        assert!(toml::from_str::<BlobConfig>("buckett = \"x\"").is_err());
    }

    #[test]
    fn natter_blob_variables_set_the_keys_and_a_misspelt_one_is_named() {
        use crate::config::Config;
        let env =
            |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let c = Config::load(
            None,
            env(&[
                ("NATTER_BLOB_BACKEND", "s3"),
                ("NATTER_BLOB_BUCKET", "natter-media"),
                ("NATTER_BLOB_ACCESS_KEY_ID", "natter"),
                ("NATTER_BLOB_PATH_STYLE", "true"),
                ("NATTER_BLOB_PART_SIZE_BYTES", "16777216"),
                ("NATTER_BLOB_SECRET_ACCESS_KEY", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!((c.blob.backend, c.blob.bucket.as_deref()), (BlobBackend::S3, Some("natter-media")));
        assert!(c.blob.path_style);
        assert_eq!(c.blob.part_size_bytes, 16 << 20);
        // A secret that reads as a number is the string it was written as.
        assert_eq!(c.blob.secret_access_key.as_deref(), Some("12345"));
        let e = Config::load(None, env(&[("NATTER_BLOB_BUKET", "x")])).unwrap_err().to_string();
        assert!(e.contains("NATTER_BLOB_BUCKET"), "{e}");
        let e = Config::load(None, env(&[("NATTER_BLOB_PART_SIZE_BYTES", SECRET)])).unwrap_err().to_string();
        assert!(e.contains("NATTER_BLOB_PART_SIZE_BYTES"), "{e}");
    }

    #[test]
    fn fs_with_s3_settings_is_a_mistake() {
        let tweaks: [fn(&mut BlobConfig); 6] = [
            |c| c.bucket = Some("b".into()),
            |c| c.endpoint = Some("https://s3.example.org".into()),
            |c| c.access_key_id = Some("AK".into()),
            |c| c.secret_access_key = Some(SECRET.into()),
            |c| c.path_style = true,
            |c| c.part_size_bytes = MIN_PART_BYTES,
        ];
        for tweak in tweaks {
            let mut c = BlobConfig::default();
            tweak(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains("\"fs\"") && e.contains("blob.") && !e.contains(SECRET), "{e}");
        }
    }

    #[test]
    fn s3_needs_a_bucket_keys_and_a_sane_part_size() {
        s3().validate().unwrap();
        let mut c = s3();
        c.endpoint = None;
        c.validate().unwrap();

        let mut c = s3();
        c.bucket = None;
        assert!(c.validate().unwrap_err().contains("blob.bucket"));
        for bad in ["ab", "Natter", "-natter", "natter-", "nat_ter", "a..b", &"a".repeat(64)] {
            c.bucket = Some(bad.into());
            assert!(c.validate().unwrap_err().contains("blob.bucket"), "{bad}");
        }
        let mut c = s3();
        c.access_key_id = None;
        assert!(c.validate().unwrap_err().contains("blob.access_key_id"));
        let mut c = s3();
        c.secret_access_key = None;
        assert!(c.validate().unwrap_err().contains("secret_access_key_file"));
        c.secret_access_key_file = Some("/run/secrets/s3".into());
        c.validate().unwrap();
        c.secret_access_key = Some(SECRET.into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("exclude") && !e.contains(SECRET), "{e}");
        let mut c = s3();
        c.secret_access_key = Some("  ".into());
        assert!(c.validate().unwrap_err().contains("empty"));
        for (size, ok) in [(MIN_PART_BYTES - 1, false), (MIN_PART_BYTES, true), (MAX_PART_BYTES + 1, false)] {
            let mut c = s3();
            c.part_size_bytes = size;
            assert_eq!(c.validate().is_ok(), ok, "{size}");
        }
        for bad in ["/blobs/", "blobs?", "b lobs"] {
            let mut c = s3();
            c.key_prefix = bad.into();
            assert!(c.validate().unwrap_err().contains("blob.key_prefix"), "{bad}");
        }
        let mut c = s3();
        c.key_prefix = String::new();
        c.validate().unwrap();
        c.region = "us east".into();
        assert!(c.validate().unwrap_err().contains("blob.region"));
        let mut c = s3();
        c.timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("timeout_ms"));
    }

    #[test]
    fn plain_http_only_to_loopback_and_only_with_the_flag() {
        let mut c = s3();
        c.endpoint = Some("http://127.0.0.1:8333".into());
        assert!(c.validate().unwrap_err().contains("blob.allow_http_loopback"));
        c.allow_http_loopback = true;
        c.validate().unwrap();
        c.endpoint = Some("http://10.0.0.5:9000".into());
        assert!(c.validate().unwrap_err().contains("https"));
        c.endpoint = Some(format!("https://AK:{SECRET}@s3.example.org"));
        let e = c.validate().unwrap_err();
        assert!(e.contains("blob.endpoint") && !e.contains(SECRET), "{e}");
    }

    #[test]
    fn the_secret_is_never_shown() {
        let c = s3();
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains(SECRET) && debug.contains("<redacted>"), "{debug}");
        let dir = tempfile::tempdir().unwrap();
        let tweaks: [fn(&mut BlobConfig); 4] = [
            |c| c.endpoint = Some("http://s3.example.org".into()),
            |c| c.secret_access_key_file = Some("/x".into()),
            |c| c.bucket = None,
            |c| c.endpoint = Some(format!("https://AK:{SECRET}@s3.example.org")),
        ];
        for tweak in tweaks {
            let mut bad = s3();
            tweak(&mut bad);
            let e = open(&bad, dir.path()).err().expect("refused");
            assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
        }
    }

    #[test]
    fn the_backend_is_chosen_once_from_the_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(open(&BlobConfig::default(), dir.path()).unwrap().backend(), BlobBackend::Fs);
        assert!(blobs_dir(dir.path()).join("partial").is_dir());
        assert_eq!(open(&s3(), dir.path()).unwrap().backend(), BlobBackend::S3);

        let file = dir.path().join("s3-secret");
        let mut c = s3();
        c.secret_access_key = None;
        c.secret_access_key_file = Some(file.clone());
        let e = open(&c, dir.path()).err().expect("missing file");
        assert!(matches!(e, BlobConfigError::SecretFile { .. }), "{e}");
        std::fs::write(&file, "\n").unwrap();
        assert!(open(&c, dir.path()).err().expect("empty file").to_string().contains("empty"));
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        open(&c, dir.path()).unwrap();
    }

    #[test]
    fn errors_say_what_happened() {
        let declared = BlobId::of(b"a");
        let actual = BlobId::of(b"b");
        let e = BlobError::Mismatch(Mismatch::Sha256 { declared, actual });
        assert_eq!(
            e.to_string(),
            format!("the bytes do not match the declaration: SHA-256 {actual}, {declared} declared")
        );
        let e = BlobError::Mismatch(Mismatch::Size { declared: 10, received: 4 });
        assert_eq!(e.to_string(), "the bytes do not match the declaration: 4 bytes received, 10 declared");
        let e = BlobError::Unavailable { retry_after: Duration::from_secs(2), reason: "connection refused".into() };
        assert_eq!(e.to_string(), "blob store unavailable (retry in 2s): connection refused");
    }
}
