//! The default blob store: one file per blob, named by its SHA-256, at
//! `<data_dir>/blobs/ab/cd/abcd…` (the first two bytes of the hex name as two
//! directory levels, so no directory grows past 256 entries plus its blobs).
//!
//! An upload is staged in `<data_dir>/blobs/partial/` (see `partial`) and, once
//! its size and SHA-256 check out, hard-linked into place (which fails when
//! the blob is already there: put-if-absent without a race) and the directory
//! fsynced. A blob path therefore only ever names a complete, verified,
//! durable file; a crash at any point leaves at most a partial upload, which
//! resumes or is swept.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::partial::{self, Partials, UploadState};
use super::{
    BlobBackend, BlobConfig, BlobConfigError, BlobError, BlobId, BlobRead, BlobStat, BlobStore, ByteRange, Mismatch,
    PresignOptions, PutOutcome, UploadId, UploadStatus,
};

/// Blobs as files under `<data_dir>/blobs/`.
#[derive(Debug)]
pub struct FsBlobStore {
    root: PathBuf,
    partials: Partials,
    partial_ttl: Duration,
}

/// Where the fs store keeps `blob` under `data_dir`: `blobs/ab/cd/<hex>`.
pub fn object_path(data_dir: &Path, blob: BlobId) -> PathBuf {
    blob_path(&super::blobs_dir(data_dir), blob)
}

/// Where uploads in progress are staged: `<data_dir>/blobs/partial/`.
pub fn partial_dir(data_dir: &Path) -> PathBuf {
    super::blobs_dir(data_dir).join("partial")
}

impl FsBlobStore {
    /// Opens (and makes, if needed) `<data_dir>/blobs/`.
    ///
    /// # Errors
    /// The directory cannot be made.
    pub fn open(config: &BlobConfig, data_dir: &Path) -> Result<Self, BlobConfigError> {
        let root = super::blobs_dir(data_dir);
        let partial_dir = partial_dir(data_dir);
        let partials =
            Partials::open(partial_dir.clone()).map_err(|source| BlobConfigError::Dir { path: partial_dir, source })?;
        Ok(Self { root, partials, partial_ttl: config.partial_ttl() })
    }

    fn path(&self, blob: BlobId) -> PathBuf {
        blob_path(&self.root, blob)
    }

    async fn blocking<T: Send + 'static>(
        what: &'static str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, BlobError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| BlobError::Storage(format!("{what}: {e}")))?
            .map_err(|e| BlobError::io(what, e))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn backend(&self) -> BlobBackend {
        BlobBackend::Fs
    }

    async fn begin_upload(&self, blob: BlobId, size: u64) -> Result<UploadStatus, BlobError> {
        let state = UploadState::new(blob, size, None);
        let (id, _active) = self.partials.create(&state).await?;
        state.status(&id)
    }

    async fn upload_status(&self, upload: &UploadId) -> Result<UploadStatus, BlobError> {
        self.partials.load(upload).await?.status(upload)
    }

    async fn append(
        &self,
        upload: &UploadId,
        offset: u64,
        body: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<UploadStatus, BlobError> {
        let (active, mut state) = self.partials.resume(upload, offset).await?;
        let mut file = self.partials.open_data(upload, state.staged()).await?;
        let mut buf = vec![0u8; partial::CHUNK];
        partial::receive(&self.partials, &active, &mut state, &mut file, body, None, &mut buf).await?;
        state.status(upload)
    }

    async fn finish_upload(&self, upload: &UploadId) -> Result<PutOutcome, BlobError> {
        let _active = self.partials.claim(upload)?;
        let state = self.partials.load(upload).await?;
        if state.offset < state.size {
            return Err(BlobError::Incomplete { received: state.offset, size: state.size });
        }
        let declared = state.blob_id()?;
        let actual = BlobId(state.sha256.finish());
        if actual != declared {
            self.partials.remove(upload).await?;
            return Err(BlobError::Mismatch(Mismatch::Sha256 { declared, actual }));
        }
        let data = self.partials.data_path(upload);
        let len = tokio::fs::metadata(&data).await.map_err(|e| BlobError::io("checking an upload", e))?.len();
        if len < state.size {
            return Err(BlobError::Storage(format!("upload {upload} lost staged bytes ({len} of {})", state.size)));
        }
        if len > state.size {
            // Written after the last checkpoint by an append that then failed.
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .await
                .map_err(|e| BlobError::io("checking an upload", e))?;
            file.set_len(state.size).await.map_err(|e| BlobError::io("checking an upload", e))?;
            file.sync_all().await.map_err(|e| BlobError::io("checking an upload", e))?;
        }
        let root = self.root.clone();
        let existed = Self::blocking("storing a blob", move || publish(&root, &data, declared)).await?;
        self.partials.remove(upload).await?;
        Ok(PutOutcome { blob: declared, size: state.size, deduplicated: existed })
    }

    async fn abort_upload(&self, upload: &UploadId) -> Result<(), BlobError> {
        let _active = self.partials.claim(upload)?;
        self.partials.remove(upload).await
    }

    async fn get(&self, blob: BlobId, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let mut file = match tokio::fs::File::open(self.path(blob)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound),
            Err(e) => return Err(BlobError::io("opening a blob", e)),
        };
        let total_size = file.metadata().await.map_err(|e| BlobError::io("opening a blob", e))?.len();
        let (offset, len) = ByteRange::resolve(range, total_size)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).await.map_err(|e| BlobError::io("reading a blob", e))?;
        }
        Ok(BlobRead { total_size, offset, len, body: Box::pin(file.take(len)) })
    }

    async fn stat(&self, blob: BlobId) -> Result<Option<BlobStat>, BlobError> {
        match tokio::fs::metadata(self.path(blob)).await {
            Ok(m) => Ok(Some(BlobStat { blob, size: m.len(), stored_at_ms: modified_ms(&m) })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::io("looking for a blob", e)),
        }
    }

    async fn delete(&self, blob: BlobId) -> Result<(), BlobError> {
        let path = self.path(blob);
        Self::blocking("deleting a blob", move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            partial::sync_dir(path.parent().expect("a blob path has a parent"))
        })
        .await
    }

    async fn list(&self, after: Option<BlobId>, limit: usize) -> Result<Vec<BlobStat>, BlobError> {
        let root = self.root.clone();
        Self::blocking("listing blobs", move || list_blobs(&root, after, limit)).await
    }

    async fn presign_get(&self, _blob: BlobId, _options: &PresignOptions) -> Result<Option<String>, BlobError> {
        Ok(None)
    }

    async fn sweep_stale_uploads(&self) -> Result<usize, BlobError> {
        let mut swept = 0;
        let mut failure = None;
        for id in self.partials.stale(self.partial_ttl).await? {
            let Ok(_active) = self.partials.claim(&id) else { continue };
            match self.partials.remove(&id).await {
                Ok(()) => swept += 1,
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if swept == 0 => Err(e),
            _ => Ok(swept),
        }
    }

    async fn check(&self) -> Result<(), BlobError> {
        let probe = self.partials.data_path(&UploadId::random());
        Self::blocking("writing to the blob directory", move || {
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .await
    }
}

/// `root/ab/cd/<hex>`.
fn blob_path(root: &Path, blob: BlobId) -> PathBuf {
    let hex = blob.to_hex();
    root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
}

/// Links the verified data file into place under `root`; `true` when the
/// blob was already there.
fn publish(root: &Path, data: &Path, blob: BlobId) -> std::io::Result<bool> {
    let target = blob_path(root, blob);
    let (Some(level2), Some(level1)) = (target.parent(), target.parent().and_then(Path::parent)) else {
        unreachable!("a blob path has two directory levels");
    };
    for dir in [level1, level2] {
        match std::fs::create_dir(dir) {
            Ok(()) => partial::sync_dir(dir.parent().unwrap_or(root))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let existed = match std::fs::hard_link(data, &target) {
        Ok(()) => false,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
        // A file system without hard links: rename, which replaces an existing
        // blob with the same bytes (harmless) instead of failing.
        Err(_) if !target.exists() => {
            std::fs::rename(data, &target)?;
            false
        }
        Err(_) => true,
    };
    partial::sync_dir(level2)?;
    Ok(existed)
}

/// Blobs after `after` in id order, walking only the directories that can
/// hold them.
/// A file's modification time in milliseconds since the epoch (0 if unknown).
fn modified_ms(m: &std::fs::Metadata) -> u64 {
    m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64)
}

fn list_blobs(root: &Path, after: Option<BlobId>, limit: usize) -> std::io::Result<Vec<BlobStat>> {
    let after_hex = after.map(|a| a.to_hex());
    let floor = after_hex.as_deref().unwrap_or("");
    let mut out = Vec::new();
    let sorted_names = |dir: &Path, len: usize| -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    if let Some(name) = name.to_str() {
                        if name.len() == len && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                            names.push(name.to_owned());
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        names.sort();
        Ok(names)
    };
    for a in sorted_names(root, 2)? {
        if a.as_str() < floor.get(0..2).unwrap_or("") {
            continue;
        }
        for b in sorted_names(&root.join(&a), 2)? {
            if format!("{a}{b}").as_str() < floor.get(0..4).unwrap_or("") {
                continue;
            }
            let dir = root.join(&a).join(&b);
            for name in sorted_names(&dir, 64)? {
                if name.as_str() <= floor || !name.starts_with(&format!("{a}{b}")) {
                    continue;
                }
                let (size, stored_at_ms) = match std::fs::metadata(dir.join(&name)) {
                    Ok(m) => (m.len(), modified_ms(&m)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let blob = BlobId::from_hex(&name).expect("64 hex digits");
                out.push(BlobStat { blob, size, stored_at_ms });
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_live_two_levels_down_by_their_hex_name() {
        let id = BlobId::of(b"abc");
        let path = object_path(Path::new("/data"), id);
        assert_eq!(
            path,
            Path::new("/data/blobs/ba/78/ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(partial_dir(Path::new("/data")), Path::new("/data/blobs/partial"));
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(&BlobConfig::default(), dir.path()).unwrap();
        assert_eq!(store.path(id), object_path(dir.path(), id));
    }

    #[tokio::test]
    async fn listing_walks_in_id_order_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(&BlobConfig::default(), dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..20u32 {
            let bytes = i.to_be_bytes();
            let out = store.put(BlobId::of(&bytes), 4, &mut &bytes[..]).await.unwrap();
            ids.push(out.blob);
        }
        ids.sort();
        // Litter that is not a blob is not listed.
        std::fs::write(super::super::blobs_dir(dir.path()).join("README"), b"x").unwrap();
        let all = store.list(None, 100).await.unwrap();
        assert_eq!(all.iter().map(|s| s.blob).collect::<Vec<_>>(), ids);
        assert!(all.iter().all(|s| s.size == 4));
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.list(after, 3).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.blob);
            paged.extend(page.iter().map(|s| s.blob));
        }
        assert_eq!(paged, ids);
    }
}
