//! Media transfers for a signed-in person: declaring an upload (checked
//! before any byte moves), receiving it into the blob store (the size limit
//! and the type enforced while bytes arrive), recording it (`MediaUploaded`),
//! and downloads by range for whoever can read a message that sent it.
//!
//! The transport owns the stream; this module sees a reader of the upload's
//! bytes and hands back a reader of a download's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use natter_proto::wire;
use natter_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt};
use uuid::Uuid;

use super::{convert, Identity, Service, WireError};
use crate::blob::{BlobError, BlobId, BlobRead, BlobStore, ByteRange, UploadId};
use crate::domain::{ConversationId, Event, MediaId, MediaUploaded, UserId};
use crate::media::gc::{self, GcError};
use crate::media::{self, mp4, picture, MediaConfig, SNIFF_BYTES};
use crate::store::{AppendError, ExpectedVersion, MediaRecord, Membership, NewEvent, StreamAppend, StreamName};

/// Longest file name kept, in bytes.
const MAX_FILE_NAME_BYTES: usize = 255;

/// The media side of the service: the blob store, the limits, and who started
/// which upload (an upload id is given only to its uploader; after a restart
/// the id, with the same size and SHA-256, is what proves it).
pub struct MediaService {
    pub blob: Arc<dyn BlobStore>,
    pub config: MediaConfig,
    pending: Mutex<HashMap<UploadId, UserId>>,
    /// Images decoded at once (each may take `media.max_image_pixels` × 4 bytes).
    pictures: tokio::sync::Semaphore,
    metrics: Arc<crate::metrics::Metrics>,
}

impl MediaService {
    pub fn new(blob: Arc<dyn BlobStore>, config: MediaConfig, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { blob, config, pending: Mutex::new(HashMap::new()), pictures: tokio::sync::Semaphore::new(1), metrics }
    }
}

/// What natterd stores for an image besides (or instead of) what arrived.
struct Pictures {
    /// The image without its metadata, when it had some.
    stripped: Option<Vec<u8>>,
    preview: Option<picture::Preview>,
}

/// Bytes natterd is about to refer to, and the version of their blob's
/// stream read before they were stored (see `media::gc`).
struct Referred {
    blob: BlobId,
    version: u64,
}

fn collecting() -> WireError {
    let mut e = WireError::new(ErrorCode::UNAVAILABLE, "the file store is busy with these bytes; retry the upload");
    e.retry_after_ms = 5_000;
    e
}

fn gc_error(e: GcError) -> WireError {
    match e {
        GcError::Collecting => collecting(),
        GcError::Store(e) => e.into(),
        GcError::Blob(e) => blob_error(e),
    }
}

/// An upload that natterd accepted: where the client resumes.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    pub upload: UploadId,
    pub offset: u64,
    size: u64,
    blob: BlobId,
    conversation: ConversationId,
    file_name: String,
    /// For an end-to-end encrypted conversation: opaque bytes.
    e2ee: bool,
}

impl UploadPlan {
    pub fn ready(&self) -> wire::UploadReady {
        wire::UploadReady { upload_id: self.upload.to_string(), offset: self.offset }
    }
}

fn blob_error(e: BlobError) -> WireError {
    match e {
        BlobError::Unavailable { retry_after, reason } => {
            tracing::warn!(reason = %reason, "blob store unavailable");
            let mut e = WireError::new(ErrorCode::UNAVAILABLE, "the file store cannot be reached; retry");
            e.retry_after_ms = retry_after.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
            e
        }
        BlobError::UploadNotFound => WireError::new(ErrorCode::NOT_FOUND, "no such upload (finished, or expired)"),
        BlobError::UploadBusy => {
            let mut e = WireError::new(ErrorCode::CONFLICT, "the upload is still busy on another stream; retry");
            e.retry_after_ms = 1_000;
            e
        }
        BlobError::Mismatch(m) => WireError::new(ErrorCode::MEDIA_MISMATCH, format!("{m}; nothing was stored")),
        BlobError::TooLarge { limit } => WireError::new(
            ErrorCode::MEDIA_MISMATCH,
            format!("more bytes than the {limit} declared; nothing was stored"),
        ),
        BlobError::Incomplete { received, size } => {
            WireError::new(ErrorCode::MEDIA_MISMATCH, format!("{received} of {size} bytes arrived; resume the upload"))
        }
        BlobError::RangeNotSatisfiable { offset, size } => super::WireError::new(
            ErrorCode::INVALID_ARGUMENT,
            format!("the range starts at {offset}, past the end ({size} bytes)"),
        ),
        BlobError::Interrupted { offset, .. } => {
            WireError::new(ErrorCode::UNAVAILABLE, format!("the upload stopped at {offset}; resume it from there"))
        }
        e => {
            tracing::error!(error = %e, "blob store failure");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        }
    }
}

/// What natterd records of an encrypted conversation's upload instead of its
/// name and type (the real ones travel inside the MLS message).
const ENCRYPTED_NAME: &str = "encrypted";
const ENCRYPTED_TYPE: &str = "application/octet-stream";

/// A preview's file name: the media's, as a JPEG.
fn preview_name(file_name: &str) -> String {
    let mut stem = file_name.rsplit_once('.').map_or(file_name, |(stem, _)| stem);
    let room = MAX_FILE_NAME_BYTES - ".preview.jpg".len();
    if stem.len() > room {
        let cut = (0..=room).rev().find(|&i| stem.is_char_boundary(i)).unwrap_or(0);
        stem = &stem[..cut];
    }
    format!("{stem}.preview.jpg")
}

fn check_file_name(name: &str) -> Result<(), WireError> {
    let bad = |reason| Err(super::invalid("file_name", reason));
    if name.trim().is_empty() || name.len() > MAX_FILE_NAME_BYTES {
        return bad("1 to 255 bytes");
    }
    if name.chars().any(|c| c.is_control() || c == '/' || c == '\\') || name == "." || name == ".." {
        return bad("no control characters, slashes, or . and ..");
    }
    Ok(())
}

/// The bytes that came with the request frame, then the stream.
struct Chained<'a> {
    early: &'a [u8],
    rest: &'a mut (dyn AsyncRead + Send + Unpin),
}

impl AsyncRead for Chained<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early = &self.early[n..];
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut *self.rest).poll_read(cx, buf)
    }
}

impl Service {
    fn media(&self) -> &MediaService {
        &self.media
    }

    pub(super) fn media_config(&self) -> &MediaConfig {
        &self.media.config
    }

    /// Transfers one connection may run at once.
    pub fn max_transfers_per_connection(&self) -> usize {
        self.media.config.transfers_per_connection as usize
    }

    /// Checks a declared upload (or a resumed one) before any byte moves.
    ///
    /// # Errors
    /// `UNAUTHENTICATED`, `NOT_A_MEMBER`, `NOT_FOUND`, `INVALID_ARGUMENT`,
    /// `MEDIA_TOO_LARGE`, `QUOTA_EXCEEDED`, `UNAVAILABLE`.
    pub async fn upload_ready(&self, me: &Identity, req: &wire::UploadStart) -> Result<UploadPlan, WireError> {
        let state = self.member_conversation(me.user_id, &req.conversation_id).await?;
        check_file_name(&req.file_name)?;
        let blob =
            BlobId(<[u8; 32]>::try_from(req.sha256.as_slice()).map_err(|_| super::invalid("sha256", "32 bytes"))?);
        if req.size == 0 {
            return Err(super::invalid("size", "an empty file has nothing to send"));
        }
        let config = &self.media().config;
        if req.size > config.max_file_bytes {
            return Err(WireError::new(
                ErrorCode::MEDIA_TOO_LARGE,
                format!("{} bytes; the limit is {}", req.size, config.max_file_bytes),
            ));
        }
        let used = self.store.media_bytes_of(me.user_id).await?;
        if used.saturating_add(req.size) > config.quota_bytes {
            return Err(WireError::new(
                ErrorCode::QUOTA_EXCEEDED,
                format!("your files take {used} of {} bytes; this one needs {}", config.quota_bytes, req.size),
            ));
        }
        let status = if req.upload_id.is_empty() {
            let status = self.media().blob.begin_upload(blob, req.size).await.map_err(blob_error)?;
            self.media().pending.lock().expect("pending lock").insert(status.upload.clone(), me.user_id);
            status
        } else {
            let not_found = || WireError::new(ErrorCode::NOT_FOUND, "no such upload of yours");
            let upload = UploadId::parse(&req.upload_id).ok_or_else(not_found)?;
            let holder = self.media().pending.lock().expect("pending lock").get(&upload).copied();
            if holder.is_some_and(|u| u != me.user_id) {
                return Err(not_found());
            }
            let status = self.media().blob.upload_status(&upload).await.map_err(|e| match e {
                BlobError::UploadNotFound => not_found(),
                e => blob_error(e),
            })?;
            if status.blob != blob || status.size != req.size {
                return Err(not_found());
            }
            self.media().pending.lock().expect("pending lock").insert(upload, me.user_id);
            status
        };
        Ok(UploadPlan {
            upload: status.upload,
            offset: status.offset,
            size: req.size,
            blob,
            conversation: state.id,
            // An encrypted conversation's file is opaque: natterd keeps no name for it.
            file_name: if state.e2ee { ENCRYPTED_NAME.to_owned() } else { req.file_name.trim().to_owned() },
            e2ee: state.e2ee,
        })
    }

    /// Receives an accepted upload's bytes (`early` came with the request
    /// frame), checks and stores them, and records the media.
    ///
    /// # Errors
    /// `MEDIA_TYPE_REFUSED` (from the first 8 KiB), `MEDIA_MISMATCH`,
    /// `QUOTA_EXCEEDED`, `UNAVAILABLE` (the bytes stopped: resume), store errors.
    pub async fn upload_receive(
        &self,
        me: &Identity,
        plan: UploadPlan,
        early: &[u8],
        stream: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<wire::Media, WireError> {
        let blob = &self.media().blob;
        let mut body = Chained { early, rest: stream };
        let mut offset = plan.offset;
        if offset == 0 {
            // The type first: a refused file is stopped after its first 8 KiB.
            let want = SNIFF_BYTES.min(plan.size as usize);
            let mut head = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match body.read(&mut head[got..]).await {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(_) => break,
                }
            }
            head.truncate(got);
            if got == want && !plan.e2ee {
                self.refuse_type(&head).inspect_err(|_| self.forget_upload(&plan.upload))?;
            }
            let status = blob.append(&plan.upload, 0, &mut std::io::Cursor::new(head)).await.map_err(blob_error)?;
            offset = status.offset;
        }
        let status = blob.append(&plan.upload, offset, &mut body).await.map_err(blob_error)?;
        if status.offset < plan.size {
            return Err(WireError::new(
                ErrorCode::UNAVAILABLE,
                format!("the upload stopped at {}; resume it from there", status.offset),
            ));
        }
        let mut one = [0u8; 1];
        if matches!(body.read(&mut one).await, Ok(n) if n > 0) {
            self.forget_upload(&plan.upload);
            let _ = blob.abort_upload(&plan.upload).await;
            return Err(WireError::new(ErrorCode::MEDIA_MISMATCH, "more bytes than declared; nothing was stored"));
        }
        // Read before the bytes are stored (or found): see media::gc.
        let arrived = self.referred(plan.blob).await?;
        let outcome = blob.finish_upload(&plan.upload).await.map_err(blob_error);
        if !matches!(outcome, Err(ref e) if e.code == ErrorCode::UNAVAILABLE) {
            self.forget_upload(&plan.upload);
        }
        let outcome = outcome?;
        // The stored bytes decide (a resumed upload's start came earlier).
        let head = blob
            .get(plan.blob, Some(ByteRange { offset: 0, len: SNIFF_BYTES as u64 }))
            .await
            .map_err(blob_error)?
            .into_bytes()
            .await
            .map_err(blob_error)?;
        // Ciphertext has no type: stored as opaque bytes, no preview, nothing stripped.
        let checked = if plan.e2ee { Ok(ENCRYPTED_TYPE) } else { self.refuse_type(&head) };
        let mime = match checked {
            Ok(mime) => mime,
            Err(e) => {
                if !outcome.deduplicated {
                    let _ = blob.delete(plan.blob).await;
                }
                return Err(e);
            }
        };
        let (width, height) = media::image_size(mime, &head);
        let used = self.store.media_bytes_of(me.user_id).await?;
        if used.saturating_add(plan.size) > self.media().config.quota_bytes {
            return Err(WireError::new(ErrorCode::QUOTA_EXCEEDED, "your files would exceed your quota"));
        }
        let duration_ms =
            if !plan.e2ee && head.get(4..8) == Some(b"ftyp".as_slice()) { self.duration(plan.blob).await } else { 0 };
        let pictures =
            if plan.e2ee { Pictures { stripped: None, preview: None } } else { self.pictures(mime, plan.blob).await? };
        let at = self.now();
        let mut main = MediaUploaded {
            media_id: MediaId(Uuid::new_v4()),
            uploader: me.user_id,
            conversation_id: plan.conversation,
            sha256: plan.blob.0,
            size: plan.size,
            mime_type: mime.to_owned(),
            file_name: plan.file_name,
            width,
            height,
            at,
            preview_of: None,
            preview: None,
            duration_ms,
        };
        let mut referred = vec![arrived];
        if let Some(stripped) = pictures.stripped {
            main.size = stripped.len() as u64;
            let stored = self.store_bytes(stripped).await?;
            main.sha256 = stored.blob.0;
            referred[0] = stored;
        }
        let mut uploads = vec![main.clone()];
        if let Some(p) = pictures.preview {
            let size = p.jpeg.len() as u64;
            let stored = self.store_bytes(p.jpeg).await?;
            if stored.blob.0 != main.sha256 {
                let preview = MediaUploaded {
                    media_id: MediaId(Uuid::new_v4()),
                    sha256: stored.blob.0,
                    size,
                    mime_type: "image/jpeg".into(),
                    file_name: preview_name(&main.file_name),
                    width: p.width,
                    height: p.height,
                    preview_of: Some(main.media_id),
                    preview: None,
                    duration_ms: 0,
                    ..main.clone()
                };
                main.preview = Some(preview.media_id);
                uploads = vec![main.clone(), preview];
                referred.push(stored);
            }
        }
        self.record_uploads(uploads, referred).await?;
        if main.sha256 != plan.blob.0 {
            // The bytes as they arrived (their location, their camera) go now,
            // unless another upload has them.
            if let Err(e) =
                gc::collect_unreferenced(self.store.as_ref(), self.media().blob.as_ref(), plan.blob, self.now()).await
            {
                tracing::warn!(error = %e, "the bytes as uploaded stay until the collector runs");
            }
        }
        let record = MediaRecord::from(main);
        Ok(convert::media_record(&record))
    }

    /// An MP4/MOV/M4A's length from its `mvhd` (0 when it has none natterd
    /// can read): the top-level box headers are walked by ranged reads.
    async fn duration(&self, blob: BlobId) -> u64 {
        let read = |offset: u64, len: u64| async move {
            let bytes = self.media().blob.get(blob, Some(ByteRange { offset, len })).await?.into_bytes().await?;
            Ok::<_, crate::blob::BlobError>(bytes)
        };
        let mut at = 0u64;
        for _ in 0..mp4::MAX_BOXES {
            let Ok(head) = read(at, mp4::HEADER_BYTES).await else { return 0 };
            let Some(header) = mp4::box_header(&head) else { return 0 };
            if &header.kind == b"moov" {
                let Ok(contents) = read(at + header.header_len, mp4::MOOV_PREFIX).await else { return 0 };
                return mp4::mvhd_duration_ms(&contents).unwrap_or(0);
            }
            match header.size.and_then(|size| at.checked_add(size)) {
                Some(next) => at = next,
                None => return 0,
            }
        }
        0
    }

    /// The version of `blob`'s stream, read before natterd stores or finds
    /// those bytes.
    async fn referred(&self, blob: BlobId) -> Result<Referred, WireError> {
        let version = gc::blob_version(self.store.as_ref(), self.media().blob.as_ref(), blob, self.now())
            .await
            .map_err(gc_error)?;
        Ok(Referred { blob, version })
    }

    /// Stores bytes natterd made (a stripped image, a preview).
    async fn store_bytes(&self, bytes: Vec<u8>) -> Result<Referred, WireError> {
        let id = BlobId::of(&bytes);
        let referred = self.referred(id).await?;
        let size = bytes.len() as u64;
        self.media().blob.put(id, size, &mut std::io::Cursor::new(bytes)).await.map_err(blob_error)?;
        Ok(referred)
    }

    /// Appends the uploads' `MediaUploaded` events, each in its blob's stream
    /// at the version read before the bytes were stored. When another upload
    /// of the same bytes came first, that is no harm and the append is tried
    /// again; when a collection came first, the bytes may be gone: the client
    /// uploads again.
    async fn record_uploads(&self, uploads: Vec<MediaUploaded>, mut referred: Vec<Referred>) -> Result<(), WireError> {
        for _ in 0..5 {
            let appends = uploads
                .iter()
                .zip(&referred)
                .map(|(u, r)| {
                    StreamAppend::new(
                        StreamName::blob(&u.sha256),
                        ExpectedVersion::Exact(r.version),
                        vec![NewEvent::fresh(Event::MediaUploaded(u.clone()))],
                    )
                })
                .collect();
            match self.store.append(appends).await {
                Ok(_) => return Ok(()),
                Err(AppendError::WrongExpectedVersion { stream, expected: ExpectedVersion::Exact(v), .. }) => {
                    let since = self.store.read_stream(&stream, v, 1_000).await?;
                    let collected = since.iter().any(|e| matches!(e.event, Event::BlobCollected { .. }));
                    if collected || since.len() >= 1_000 {
                        return Err(collecting());
                    }
                    for r in referred.iter_mut().filter(|r| StreamName::blob(&r.blob.0) == stream) {
                        r.version = since.last().map_or(v, |e| e.version);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(collecting())
    }

    /// For an image: it without its metadata (`media.strip_metadata`) and its
    /// preview, made on the blocking pool, one image at a time.
    async fn pictures(&self, mime: &'static str, blob: BlobId) -> Result<Pictures, WireError> {
        let config = &self.media().config;
        let strip = config.strip_metadata && matches!(mime, "image/jpeg" | "image/png" | "image/webp");
        let previewable = matches!(mime, "image/jpeg" | "image/png" | "image/webp" | "image/gif");
        if !strip && !previewable {
            return Ok(Pictures { stripped: None, preview: None });
        }
        let _permit = self
            .media()
            .pictures
            .acquire()
            .await
            .map_err(|_| WireError::new(ErrorCode::UNAVAILABLE, "shutting down"))?;
        let bytes =
            self.media().blob.get(blob, None).await.map_err(blob_error)?.into_bytes().await.map_err(blob_error)?;
        let max_pixels = config.max_image_pixels;
        let (stripped, preview) = tokio::task::spawn_blocking(move || {
            let stripped = if strip { picture::strip_metadata(mime, &bytes) } else { None };
            let preview = if previewable {
                Some(picture::preview(stripped.as_deref().unwrap_or(&bytes), max_pixels))
            } else {
                None
            };
            (stripped, preview)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "image processing panicked");
            WireError::new(ErrorCode::INTERNAL, "internal error")
        })?;
        let preview = match preview {
            Some(Ok(p)) => {
                self.media().metrics.preview("made");
                Some(p)
            }
            Some(Err(e)) => {
                let result = match e {
                    picture::NoPreview::Small => "small",
                    picture::NoPreview::TooManyPixels { .. } => "too_many_pixels",
                    picture::NoPreview::Undecodable(_) => "undecodable",
                };
                tracing::debug!(reason = %e, "no preview");
                self.media().metrics.preview(result);
                None
            }
            None => None,
        };
        Ok(Pictures { stripped, preview })
    }

    fn forget_upload(&self, upload: &UploadId) {
        self.media().pending.lock().expect("pending lock").remove(upload);
    }

    /// The detected type, or `MEDIA_TYPE_REFUSED`.
    fn refuse_type(&self, head: &[u8]) -> Result<&'static str, WireError> {
        let mime = media::detect(head);
        if self.media().config.allows(mime) {
            Ok(mime)
        } else {
            Err(WireError::new(
                ErrorCode::MEDIA_TYPE_REFUSED,
                format!("the file's bytes are {mime}, which this server does not accept"),
            ))
        }
    }

    /// Whether `me` may read the media: its uploader, or anyone who can read
    /// the first message that sent it.
    async fn may_read(&self, me: UserId, record: &MediaRecord) -> Result<bool, WireError> {
        if let Some(shown) = record.preview_of {
            // A preview is readable by whoever may read what it shows.
            return match self.store.media(shown).await? {
                Some(main) => Box::pin(self.may_read(me, &main)).await,
                None => Ok(false),
            };
        }
        if record.uploader == me {
            return Ok(true);
        }
        let Some(first) = record.first_seq else { return Ok(false) };
        Ok(match self.store.membership(record.conversation_id, me).await? {
            Some(Membership::Active(_)) => true,
            Some(Membership::Former { left_at }) => first <= left_at,
            None => false,
        })
    }

    /// Opens a download: the header to send, then the bytes.
    ///
    /// # Errors
    /// `NOT_FOUND` (no such media, or not the caller's to read),
    /// `INVALID_ARGUMENT` (a range past the end), `UNAVAILABLE`.
    pub async fn download_open(
        &self,
        me: &Identity,
        req: &wire::DownloadStart,
    ) -> Result<(wire::DownloadHeader, BlobRead), WireError> {
        let not_found = || WireError::new(ErrorCode::NOT_FOUND, "no such media");
        let id = MediaId::parse(&req.media_id)?;
        let record = self.store.media(id).await?.ok_or_else(not_found)?;
        if !self.may_read(me.user_id, &record).await? {
            return Err(not_found());
        }
        let past_end = req.offset > record.size || req.offset.saturating_add(req.length) > record.size;
        if past_end {
            return Err(super::invalid("offset", "the range runs past the end of the file"));
        }
        let len = if req.length == 0 { record.size - req.offset } else { req.length };
        let read = self
            .media()
            .blob
            .get(BlobId(record.sha256), Some(ByteRange { offset: req.offset, len }))
            .await
            .map_err(blob_error)?;
        let header =
            wire::DownloadHeader { media: Some(convert::media_record(&record)), offset: read.offset, length: read.len };
        Ok((header, read))
    }

    /// A presigned URL for the media, for whoever may download it.
    ///
    /// # Errors
    /// `NOT_FOUND`, `DIRECT_URL_UNSUPPORTED` (fs store), `UNAVAILABLE`.
    pub(super) async fn get_media_url(&self, me: &Identity, req: wire::GetMediaUrl) -> Result<super::Reply, WireError> {
        let not_found = || WireError::new(ErrorCode::NOT_FOUND, "no such media");
        let id = MediaId::parse(&req.media_id)?;
        let record = self.store.media(id).await?.ok_or_else(not_found)?;
        if !self.may_read(me.user_id, &record).await? {
            return Err(not_found());
        }
        let expires_in = std::time::Duration::from_secs(self.media().config.url_expiry_secs);
        let options = crate::blob::PresignOptions {
            expires_in,
            content_type: Some(record.mime_type.clone()),
            content_disposition: Some(media::attachment(&record.file_name)),
        };
        let expires_at_ms = self.now().0 + expires_in.as_millis() as u64;
        match self.media().blob.presign_get(BlobId(record.sha256), &options).await.map_err(blob_error)? {
            Some(url) => Ok(super::Reply::MediaUrl(wire::MediaUrl { url, expires_at_ms })),
            None => Err(WireError::new(
                ErrorCode::DIRECT_URL_UNSUPPORTED,
                "this server keeps files itself: download over a transfer stream",
            )),
        }
    }
}
