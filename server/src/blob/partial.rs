//! Uploads in progress, staged under `<data_dir>/blobs/partial/`: for each
//! upload a data file `<upload id>` (fs: the object so far; s3: the part
//! being filled) and a record `<upload id>.state` (JSON: the declaration, the
//! confirmed offset, the running SHA-256, and on s3 the multipart upload and
//! its parts' ETags).
//!
//! A checkpoint fsyncs the data file, then replaces the record atomically
//! (written to `<upload id>.state.tmp`, fsynced, renamed, directory fsynced):
//! the record never claims bytes that are not durable. Bytes past the
//! record's offset (written after the last checkpoint, before a crash) are cut
//! off when the upload is next appended to. Nothing in this directory is ever
//! visible as a blob.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::sha256::Sha256State;
use super::{BlobError, BlobId, UploadId, UploadStatus};

/// The record's format version.
const STATE_VERSION: u32 = 1;
/// Bytes read from the sender at a time.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Bytes between two checkpoints of a long append: at most this much is
/// received again after a crash or a lost connection.
pub(crate) const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;

/// What `<upload id>.state` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UploadState {
    pub version: u32,
    /// The declared SHA-256, in hex.
    pub blob: String,
    pub size: u64,
    /// Confirmed (durable) bytes.
    pub offset: u64,
    pub sha256: Sha256State,
    /// s3 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Progress>,
}

/// An s3 upload's multipart progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct S3Progress {
    /// The part size this upload was begun with (every stored part has it).
    pub part_size: u64,
    /// The multipart upload, once the first full part is handed over.
    pub multipart_id: Option<String>,
    /// ETags of parts 1, 2, …, in order.
    pub parts: Vec<String>,
}

impl UploadState {
    pub(crate) fn new(blob: BlobId, size: u64, s3: Option<S3Progress>) -> Self {
        Self { version: STATE_VERSION, blob: blob.to_hex(), size, offset: 0, sha256: Sha256State::default(), s3 }
    }

    pub(crate) fn blob_id(&self) -> Result<BlobId, BlobError> {
        BlobId::from_hex(&self.blob).ok_or_else(|| BlobError::Storage("an upload record names no SHA-256".into()))
    }

    pub(crate) fn status(&self, upload: &UploadId) -> Result<UploadStatus, BlobError> {
        Ok(UploadStatus { upload: upload.clone(), blob: self.blob_id()?, size: self.size, offset: self.offset })
    }

    /// Bytes staged in the data file: all of them on fs, those after the
    /// stored parts on s3.
    pub(crate) fn staged(&self) -> u64 {
        match &self.s3 {
            None => self.offset,
            Some(p) => self.offset - p.parts.len() as u64 * p.part_size,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.version != STATE_VERSION {
            return Err(format!("version {} (this natterd reads {STATE_VERSION})", self.version));
        }
        if self.offset > self.size || self.sha256.len() != self.offset || !self.sha256.is_well_formed() {
            return Err("offset and hash disagree".into());
        }
        if let Some(p) = &self.s3 {
            if p.part_size == 0 || (p.parts.len() as u64).saturating_mul(p.part_size) > self.offset {
                return Err("parts past the offset".into());
            }
        }
        BlobId::from_hex(&self.blob).map(|_| ()).ok_or_else(|| "no SHA-256".into())
    }
}

/// The staging directory and which uploads a transfer is using right now.
#[derive(Debug, Clone)]
pub(crate) struct Partials {
    dir: PathBuf,
    active: Arc<Mutex<HashSet<UploadId>>>,
}

/// Holds an upload for one transfer; released when the last clone is
/// dropped (a checkpoint still running holds one).
#[derive(Debug, Clone)]
pub(crate) struct Active(Arc<Held>);

#[derive(Debug)]
struct Held {
    id: UploadId,
    active: Arc<Mutex<HashSet<UploadId>>>,
}

impl Active {
    pub(crate) fn id(&self) -> &UploadId {
        &self.0.id
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

impl Partials {
    /// `dir` (`<data_dir>/blobs/partial`), made if missing.
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, active: Arc::default() })
    }

    pub(crate) fn data_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    fn state_path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(format!("{id}.state"))
    }

    /// Claims `id` for one transfer.
    ///
    /// # Errors
    /// [`BlobError::UploadBusy`] while another transfer holds it.
    pub(crate) fn claim(&self, id: &UploadId) -> Result<Active, BlobError> {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if !active.insert(id.clone()) {
            return Err(BlobError::UploadBusy);
        }
        Ok(Active(Arc::new(Held { id: id.clone(), active: Arc::clone(&self.active) })))
    }

    /// Claims `id` for one append and loads its record, which must be at
    /// `offset` (the confirmed offset the caller resumes from).
    ///
    /// # Errors
    /// [`BlobError::UploadBusy`], [`BlobError::UploadNotFound`],
    /// [`BlobError::WrongOffset`]; storage failures.
    pub(crate) async fn resume(&self, id: &UploadId, offset: u64) -> Result<(Active, UploadState), BlobError> {
        let active = self.claim(id)?;
        let state = self.load(id).await?;
        if offset != state.offset {
            return Err(BlobError::WrongOffset { confirmed: state.offset, got: offset });
        }
        Ok((active, state))
    }

    /// Makes a new upload: an empty data file and its first record.
    pub(crate) async fn create(&self, state: &UploadState) -> Result<(UploadId, Active), BlobError> {
        let id = UploadId::random();
        let active = self.claim(&id)?;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.data_path(&id))
            .await
            .map_err(|e| BlobError::io("creating an upload", e))?;
        file.sync_all().await.map_err(|e| BlobError::io("creating an upload", e))?;
        self.save(&id, state).await?;
        Ok((id, active))
    }

    /// The upload's record.
    ///
    /// # Errors
    /// [`BlobError::UploadNotFound`]; a record that cannot be read.
    pub(crate) async fn load(&self, id: &UploadId) -> Result<UploadState, BlobError> {
        let text = match tokio::fs::read(self.state_path(id)).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::UploadNotFound),
            Err(e) => return Err(BlobError::io("reading an upload record", e)),
        };
        let state: UploadState = serde_json::from_slice(&text)
            .map_err(|e| BlobError::Storage(format!("upload record {id} is unreadable: {e}")))?;
        state.check().map_err(|e| BlobError::Storage(format!("upload record {id} is inconsistent: {e}")))?;
        Ok(state)
    }

    /// Replaces the record atomically and durably.
    pub(crate) async fn save(&self, id: &UploadId, state: &UploadState) -> Result<(), BlobError> {
        let text = serde_json::to_vec(state).map_err(|e| BlobError::Storage(format!("upload record: {e}")))?;
        let (tmp, path, dir) = (self.dir.join(format!("{id}.state.tmp")), self.state_path(id), self.dir.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&dir)
        })
        .await
        .map_err(|e| BlobError::Storage(format!("saving an upload record: {e}")))?
        .map_err(|e| BlobError::io("saving an upload record", e))
    }

    /// Removes the upload's files (record first: without it the data file is
    /// only litter for the sweep).
    pub(crate) async fn remove(&self, id: &UploadId) -> Result<(), BlobError> {
        for path in [self.state_path(id), self.data_path(id), self.dir.join(format!("{id}.state.tmp"))] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BlobError::io("removing an upload", e)),
            }
        }
        Ok(())
    }

    /// Opens the data file for appending at `staged` bytes, cutting off
    /// whatever a crash left after the last checkpoint.
    pub(crate) async fn open_data(&self, id: &UploadId, staged: u64) -> Result<tokio::fs::File, BlobError> {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(self.data_path(id))
            .await
            .map_err(|e| BlobError::io("opening an upload's data", e))?;
        let len = file.metadata().await.map_err(|e| BlobError::io("opening an upload's data", e))?.len();
        if len < staged {
            return Err(BlobError::Storage(format!(
                "upload {id} has {len} bytes staged, its record says {staged}: the data file was damaged"
            )));
        }
        if len > staged {
            file.set_len(staged).await.map_err(|e| BlobError::io("cutting an upload's data", e))?;
        }
        file.seek(SeekFrom::Start(staged)).await.map_err(|e| BlobError::io("opening an upload's data", e))?;
        Ok(file)
    }

    /// Uploads whose record (or, without one, data file) was last written
    /// `ttl` or more ago, and that no transfer holds.
    pub(crate) async fn stale(&self, ttl: Duration) -> Result<Vec<UploadId>, BlobError> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<(UploadId, SystemTime)>> {
            let mut newest: std::collections::HashMap<UploadId, SystemTime> = Default::default();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stem = name.split('.').next().unwrap_or(name);
                let Some(id) = UploadId::parse(stem) else { continue };
                let modified = match entry.metadata().and_then(|m| m.modified()) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let slot = newest.entry(id).or_insert(modified);
                *slot = (*slot).max(modified);
            }
            Ok(newest.into_iter().collect())
        })
        .await
        .map_err(|e| BlobError::Storage(format!("listing uploads: {e}")))?
        .map_err(|e| BlobError::io("listing uploads", e))?;
        let now = SystemTime::now();
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        Ok(found
            .into_iter()
            .filter(|(id, modified)| {
                now.duration_since(*modified).unwrap_or(Duration::ZERO) >= ttl && !active.contains(id)
            })
            .map(|(id, _)| id)
            .collect())
    }
}

/// Appends from `body` to `file` (at `state.offset`), hashing as it goes and
/// checkpointing every [`CHECKPOINT_BYTES`], until `body` ends, `state.size`
/// is reached, or `limit` more bytes are staged (`None`: no limit). Returns
/// whether the body ended. A failing body is checkpointed, then reported.
/// `upload` is the transfer's claim on the upload.
///
/// A checkpoint's fsyncs run beside the receiving of the next bytes (at most
/// one in flight): waiting for them would halve the throughput, and a
/// checkpoint only ever claims bytes written before its fsync began. Every
/// checkpoint has finished when this returns.
pub(crate) async fn receive(
    partials: &Partials,
    upload: &Active,
    state: &mut UploadState,
    file: &mut tokio::fs::File,
    body: &mut (dyn tokio::io::AsyncRead + Send + Unpin),
    limit: Option<u64>,
    buf: &mut [u8],
) -> Result<bool, BlobError> {
    let mut staged = 0u64;
    let mut unsynced = 0u64;
    let mut ended = false;
    let id = upload.id();
    let mut pending: Option<Checkpoint> = None;
    loop {
        let room = limit.map_or(u64::MAX, |l| l - staged).min(state.size - state.offset);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            break;
        }
        let n = match body.read(&mut buf[..want]).await {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => n,
            Err(e) => {
                Checkpoint::finish(pending.take()).await?;
                checkpoint(partials, id, state, file).await?;
                return Err(BlobError::Interrupted { offset: state.offset, reason: e.to_string() });
            }
        };
        file.write_all(&buf[..n]).await.map_err(|e| BlobError::io("writing an upload", e))?;
        state.sha256.update(&buf[..n]);
        state.offset += n as u64;
        staged += n as u64;
        unsynced += n as u64;
        if unsynced >= CHECKPOINT_BYTES {
            Checkpoint::finish(pending.take()).await?;
            pending = Some(Checkpoint::start(partials, upload, state, file).await?);
            unsynced = 0;
        }
    }
    Checkpoint::finish(pending.take()).await?;
    if unsynced > 0 {
        checkpoint(partials, id, state, file).await?;
    }
    Ok(ended)
}

/// A checkpoint running on its own: the data file's fsync, then the record.
/// It holds the upload's claim, so a transfer dropped meanwhile cannot be
/// resumed until its last record is written (and two records are never
/// written at once).
struct Checkpoint(tokio::task::JoinHandle<Result<(), BlobError>>);

impl Checkpoint {
    /// Hands what `file` has been given to the OS and starts making it and
    /// `state` durable.
    async fn start(
        partials: &Partials,
        upload: &Active,
        state: &UploadState,
        file: &mut tokio::fs::File,
    ) -> Result<Self, BlobError> {
        file.flush().await.map_err(|e| BlobError::io("writing an upload", e))?;
        let data = file.try_clone().await.map_err(|e| BlobError::io("syncing an upload", e))?;
        let (partials, upload, state) = (partials.clone(), upload.clone(), state.clone());
        Ok(Self(tokio::spawn(async move {
            data.sync_data().await.map_err(|e| BlobError::io("syncing an upload", e))?;
            partials.save(upload.id(), &state).await
        })))
    }

    /// Waits for a checkpoint in flight, if any.
    async fn finish(pending: Option<Self>) -> Result<(), BlobError> {
        match pending {
            None => Ok(()),
            Some(Self(task)) => {
                task.await.map_err(|e| BlobError::Storage(format!("an upload checkpoint failed: {e}")))?
            }
        }
    }
}

/// Makes `state` true on disk: the data first, then the record.
pub(crate) async fn checkpoint(
    partials: &Partials,
    id: &UploadId,
    state: &UploadState,
    file: &mut tokio::fs::File,
) -> Result<(), BlobError> {
    file.flush().await.map_err(|e| BlobError::io("writing an upload", e))?;
    file.sync_data().await.map_err(|e| BlobError::io("syncing an upload", e))?;
    partials.save(id, state).await
}

/// fsync of a directory: makes the names in it (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads exactly `buf.len()` bytes of `file` from `offset` (tests of staged data).
#[cfg(test)]
pub(crate) async fn read_at(file: &mut tokio::fs::File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset)).await?;
    file.read_exact(buf).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_a_reopen_and_garbage_past_the_checkpoint_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let partials = Partials::open(dir.path().join("partial")).unwrap();
        let data = vec![7u8; 1000];
        let mut state = UploadState::new(BlobId::of(&data), 1000, None);
        let (id, active) = partials.create(&state).await.unwrap();
        assert_eq!(partials.claim(&id).unwrap_err(), BlobError::UploadBusy);

        let mut file = partials.open_data(&id, 0).await.unwrap();
        let mut body: &[u8] = &data[..600];
        let ended = receive(&partials, &active, &mut state, &mut file, &mut body, None, &mut [0; 128]).await.unwrap();
        assert!(ended);
        // Bytes written after the checkpoint (a crash before the next one).
        file.write_all(&[9; 50]).await.unwrap();
        file.flush().await.unwrap();
        drop((file, active));

        let partials = Partials::open(dir.path().join("partial")).unwrap();
        let active = partials.claim(&id).unwrap();
        let mut state = partials.load(&id).await.unwrap();
        assert_eq!(state.offset, 600);
        let mut file = partials.open_data(&id, state.staged()).await.unwrap();
        assert_eq!(file.metadata().await.unwrap().len(), 600);
        let mut body: &[u8] = &data[600..];
        receive(&partials, &active, &mut state, &mut file, &mut body, Some(300), &mut [0; 128]).await.unwrap();
        assert_eq!(state.offset, 900);
        let mut back = [0u8; 10];
        read_at(&mut file, 595, &mut back).await.unwrap();
        assert_eq!(back, [7; 10]);
        assert_eq!(partials.load(&id).await.unwrap().offset, 900);
        drop(active);

        assert!(partials.stale(Duration::from_secs(3600)).await.unwrap().is_empty());
        assert_eq!(partials.stale(Duration::ZERO).await.unwrap(), vec![id.clone()]);
        {
            let _held = partials.claim(&id).unwrap();
            assert!(partials.stale(Duration::ZERO).await.unwrap().is_empty());
        }
        partials.remove(&id).await.unwrap();
        assert_eq!(partials.load(&id).await.unwrap_err(), BlobError::UploadNotFound);
        assert!(std::fs::read_dir(dir.path().join("partial")).unwrap().next().is_none());
    }

    /// Gives `good` bytes of 5s, then fails.
    struct Failing {
        good: usize,
    }

    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.good == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("connection lost")));
            }
            let n = self.good.min(buf.remaining());
            buf.put_slice(&vec![5u8; n]);
            self.good -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn checkpoints_beside_receiving_all_finish_before_an_interruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let partials = Partials::open(dir.path().to_owned()).unwrap();
        let good = CHECKPOINT_BYTES as usize * 5 / 2 + 17;
        let mut state = UploadState::new(BlobId::of(b"whatever"), good as u64 * 2, None);
        let (id, active) = partials.create(&state).await.unwrap();
        let mut file = partials.open_data(&id, 0).await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let e = receive(&partials, &active, &mut state, &mut file, &mut Failing { good }, None, &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(e, BlobError::Interrupted { offset, .. } if offset == good as u64), "{e}");
        // The record says exactly what arrived, and the data is all there.
        let saved = partials.load(&id).await.unwrap();
        assert_eq!(saved.sha256, state.sha256);
        assert_eq!(saved.offset, good as u64);
        let mut hashed = Sha256State::default();
        hashed.update(&vec![5u8; good]);
        assert_eq!(saved.sha256, hashed);
        assert_eq!(std::fs::metadata(partials.data_path(&id)).unwrap().len(), good as u64);
        // No checkpoint is left running with the claim.
        drop(active);
        let _again = partials.claim(&id).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_record_is_a_storage_error_not_a_missing_upload() {
        let dir = tempfile::tempdir().unwrap();
        let partials = Partials::open(dir.path().to_owned()).unwrap();
        let state = UploadState::new(BlobId::of(b""), 10, None);
        let (id, _active) = partials.create(&state).await.unwrap();
        std::fs::write(dir.path().join(format!("{id}.state")), b"{\"version\":1").unwrap();
        assert!(matches!(partials.load(&id).await, Err(BlobError::Storage(_))));
        let mut lying = state.clone();
        lying.offset = 5;
        partials.save(&id, &lying).await.unwrap();
        let e = partials.load(&id).await.unwrap_err();
        assert!(matches!(&e, BlobError::Storage(m) if m.contains("inconsistent")), "{e}");
    }
}
