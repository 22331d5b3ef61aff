//! Blobs in an S3-compatible object store (AWS S3, MinIO, SeaweedFS, Garage):
//! the object `<key_prefix><hex SHA-256>` in one bucket.
//!
//! `aws-sdk-s3` signs and shapes the requests (default features off: no
//! aws-lc, no HTTP client of its own); they travel through a reqwest client
//! on rustls with ring and Mozilla's roots, like natter's other outgoing
//! HTTPS (`ReqwestConnector`), on natterd's tokio runtime. Plain http only to
//! a loopback address, when `blob.allow_http_loopback` says so.
//!
//! An upload is staged under `<data_dir>/blobs/partial/` one part at a time:
//! when `blob.part_size_bytes` have arrived and more are to come, they become
//! the next part of a multipart upload (begun with the first full part), and
//! the record keeps the multipart upload's id and every part's ETag, so an
//! upload resumes after a restart. An object no larger than one part is sent
//! with one PUT. `finish_upload` checks size and SHA-256 (hashed as the bytes
//! arrived) before the PUT or the CompleteMultipartUpload that makes the
//! object visible, and aborts the multipart upload on a mismatch. Put-if-
//! absent: a HEAD first, then `If-None-Match: *` (a store that ignores it
//! overwrites the object with the same bytes, which is harmless).
//!
//! The secret key is given to the signer only: never in an error, a log line
//! or `Debug` output.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::{HttpRequest, HttpResponse};
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, HttpClient, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    RuntimeComponents,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::result::ConnectorError;
use tokio::io::{AsyncRead, AsyncSeekExt};

use super::partial::{self, Partials, S3Progress, UploadState};
use super::{
    BlobBackend, BlobConfig, BlobConfigError, BlobError, BlobId, BlobRead, BlobStat, BlobStore, ByteRange, Mismatch,
    PresignOptions, PutOutcome, UploadId, UploadStatus, MAX_PARTS, MAX_S3_OBJECT_BYTES,
};

/// How long to wait before retrying when the store did not say.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Keys asked for per ListObjectsV2 request.
const LIST_PAGE: i32 = 1000;

/// Blobs in one bucket of an S3-compatible store.
#[derive(Debug)]
pub struct S3BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    key_prefix: String,
    part_size: u64,
    region: String,
    partials: Partials,
    partial_ttl: Duration,
}

impl S3BlobStore {
    /// Builds the client (no request is made: [`BlobStore::check`] asks the
    /// store) and opens the staging directory under `data_dir`.
    ///
    /// # Errors
    /// An invalid configuration, an unreadable or empty secret file, a
    /// staging directory that cannot be made.
    pub fn open(config: &BlobConfig, data_dir: &Path) -> Result<Self, BlobConfigError> {
        config.validate().map_err(BlobConfigError::Invalid)?;
        let secret = read_secret(config)?;
        let (Some(bucket), Some(access_key_id)) = (&config.bucket, &config.access_key_id) else {
            unreachable!("validated: s3 has a bucket and an access key id");
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = ReqwestConnector { client: http_client(timeout).map_err(BlobConfigError::HttpClient)? };
        let credentials = Credentials::new(access_key_id.trim(), secret, None, None, "natter-config");
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .http_client(http)
            .force_path_style(config.path_style)
            // Checksums only where S3 requires them: several S3-compatible
            // stores refuse the CRC trailers the SDK would add by default.
            // The SHA-256 natter checks covers every byte anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.trim().trim_end_matches('/'));
        }
        let partial_dir = super::fs::partial_dir(data_dir);
        let partials =
            Partials::open(partial_dir.clone()).map_err(|source| BlobConfigError::Dir { path: partial_dir, source })?;
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: bucket.clone(),
            key_prefix: config.key_prefix.clone(),
            part_size: config.part_size_bytes,
            region: config.region.clone(),
            partials,
            partial_ttl: config.partial_ttl(),
        })
    }

    /// The object key of `blob`.
    pub fn key(&self, blob: BlobId) -> String {
        format!("{}{}", self.key_prefix, blob.to_hex())
    }

    /// Makes the bucket unless it exists (test harnesses and first set-up;
    /// natterd itself expects it to exist).
    ///
    /// # Errors
    /// The store refused or could not be reached.
    pub async fn create_bucket_if_missing(&self) -> Result<(), BlobError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(sdk_error("looking for the bucket", e)),
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        if self.region != "us-east-1" {
            use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(sdk_error("creating the bucket", e)),
        }
    }

    /// The multipart upload recorded in `state`, made if there is none yet
    /// (and recorded before any part is sent).
    async fn multipart_id(&self, upload: &UploadId, state: &mut UploadState) -> Result<String, BlobError> {
        if let Some(id) = state.s3.as_ref().and_then(|p| p.multipart_id.clone()) {
            return Ok(id);
        }
        let key = self.key(state.blob_id()?);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| sdk_error("starting a multipart upload", e))?;
        let id = created
            .upload_id()
            .ok_or_else(|| BlobError::Storage("the store started a multipart upload without an id".into()))?
            .to_owned();
        progress(state)?.multipart_id = Some(id.clone());
        self.partials.save(upload, state).await?;
        Ok(id)
    }

    /// Sends the staged bytes as part `number` of the multipart upload; its ETag.
    async fn send_part(
        &self,
        upload: &UploadId,
        state: &mut UploadState,
        number: usize,
        len: u64,
    ) -> Result<String, BlobError> {
        let multipart_id = self.multipart_id(upload, state).await?;
        let number = i32::try_from(number).map_err(|_| BlobError::TooLarge { limit: self.max_size() })?;
        let body = self.staged_body(upload, len).await?;
        let sent = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(self.key(state.blob_id()?))
            .upload_id(multipart_id)
            .part_number(number)
            .content_length(len as i64)
            .body(body)
            .send()
            .await;
        let sent = match sent {
            Ok(sent) => sent,
            Err(e) if e.code() == Some("NoSuchUpload") => return Err(self.multipart_gone(upload).await),
            Err(e) => return Err(sdk_error("sending a part", e)),
        };
        sent.e_tag()
            .map(str::to_owned)
            .ok_or_else(|| BlobError::Storage("the store took a part without an ETag".into()))
    }

    /// When a full part is staged and more bytes are to come: hands it to the
    /// store, records its ETag, empties the data file.
    async fn flush_full_part(
        &self,
        upload: &UploadId,
        state: &mut UploadState,
        file: &mut tokio::fs::File,
    ) -> Result<(), BlobError> {
        let part_size = progress(state)?.part_size;
        if state.staged() < part_size || state.offset >= state.size {
            return Ok(());
        }
        let number = progress(state)?.parts.len() + 1;
        let etag = self.send_part(upload, state, number, part_size).await?;
        progress(state)?.parts.push(etag);
        self.partials.save(upload, state).await?;
        file.set_len(0).await.map_err(|e| BlobError::io("emptying a staged part", e))?;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| BlobError::io("emptying a staged part", e))?;
        Ok(())
    }

    /// The data file's first `len` bytes as a request body (re-read from the
    /// file when the SDK retries).
    async fn staged_body(&self, upload: &UploadId, len: u64) -> Result<ByteStream, BlobError> {
        ByteStream::read_from()
            .path(self.partials.data_path(upload))
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| BlobError::Storage(format!("reading a staged part: {e}")))
    }

    async fn head(&self, blob: BlobId) -> Result<Option<BlobStat>, BlobError> {
        match self.client.head_object().bucket(&self.bucket).key(self.key(blob)).send().await {
            Ok(head) => Ok(Some(BlobStat {
                blob,
                size: head.content_length().unwrap_or(0).max(0) as u64,
                stored_at_ms: millis(head.last_modified()),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(sdk_error("looking for a blob", e)),
        }
    }

    /// Aborts the upload's multipart upload, if it has one (one the store no
    /// longer knows is fine).
    async fn abort_multipart(&self, state: &UploadState) -> Result<(), BlobError> {
        let Some(id) = state.s3.as_ref().and_then(|p| p.multipart_id.clone()) else {
            return Ok(());
        };
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.key(state.blob_id()?))
            .upload_id(id)
            .send()
            .await;
        match aborted {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(sdk_error("aborting a multipart upload", e)),
        }
    }

    /// Makes the verified upload visible; `true` when the object was already there.
    async fn publish(&self, upload: &UploadId, state: &mut UploadState) -> Result<bool, BlobError> {
        let blob = state.blob_id()?;
        let key = self.key(blob);
        let staged = state.staged();
        let Some(multipart_id) = state.s3.as_ref().and_then(|p| p.multipart_id.clone()) else {
            // If-None-Match first; a store that does not implement it (501)
            // gets the same PUT without it.
            for conditional in [true, false] {
                let body = self.staged_body(upload, staged).await?;
                let put = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .set_if_none_match(conditional.then(|| "*".to_owned()))
                    .content_length(staged as i64)
                    .body(body)
                    .send()
                    .await;
                match put {
                    Ok(_) => return Ok(false),
                    Err(e) if status(&e) == Some(412) => return Ok(true),
                    Err(e) if status(&e) == Some(501) && conditional => continue,
                    Err(e) => return Err(sdk_error("storing a blob", e)),
                }
            }
            unreachable!("the unconditional PUT returns");
        };
        let mut etags = progress(state)?.parts.clone();
        if staged > 0 {
            // Not recorded: a retried finish sends it again, under the same number.
            etags.push(self.send_part(upload, state, etags.len() + 1, staged).await?);
        }
        let parts: Vec<CompletedPart> = etags
            .into_iter()
            .enumerate()
            .map(|(i, etag)| CompletedPart::builder().part_number(i as i32 + 1).e_tag(etag).build())
            .collect();
        for conditional in [true, false] {
            let completed = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&key)
                .upload_id(&multipart_id)
                .set_if_none_match(conditional.then(|| "*".to_owned()))
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build())
                .send()
                .await;
            match completed {
                Ok(_) => return Ok(false),
                Err(e) if status(&e) == Some(412) => {
                    self.abort_multipart(state).await?;
                    return Ok(true);
                }
                Err(e) if status(&e) == Some(501) && conditional => continue,
                // Completed by an earlier attempt whose answer was lost, or
                // aborted behind natterd's back (a lifecycle rule).
                Err(e) if e.code() == Some("NoSuchUpload") => {
                    return match self.head(blob).await? {
                        Some(_) => Ok(true),
                        None => Err(self.multipart_gone(upload).await),
                    };
                }
                Err(e) => return Err(sdk_error("completing a multipart upload", e)),
            }
        }
        unreachable!("the unconditional CompleteMultipartUpload returns");
    }

    /// The store no longer knows the multipart upload (aborted behind
    /// natterd's back, e.g. by a lifecycle rule): its parts are gone, so the
    /// upload is too, and must start again.
    async fn multipart_gone(&self, upload: &UploadId) -> BlobError {
        tracing::warn!(upload = %upload, "the store lost the multipart upload: the upload starts again");
        match self.partials.remove(upload).await {
            Ok(()) => BlobError::UploadNotFound,
            Err(e) => e,
        }
    }

    fn max_size(&self) -> u64 {
        self.part_size.saturating_mul(MAX_PARTS).min(MAX_S3_OBJECT_BYTES)
    }

    /// Empty bytes of a blob known to exist (S3 cannot serve a 0-byte range).
    async fn empty_read(&self, blob: BlobId, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let size = self.head(blob).await?.ok_or(BlobError::NotFound)?.size;
        let (offset, len) = ByteRange::resolve(range, size)?;
        if len > 0 {
            return Err(BlobError::Storage(format!("the store refused a range of {len} bytes from {offset}")));
        }
        Ok(BlobRead { total_size: size, offset, len: 0, body: Box::pin(tokio::io::empty()) })
    }
}

/// The record's multipart progress (every s3 upload has one).
fn progress(state: &mut UploadState) -> Result<&mut S3Progress, BlobError> {
    state.s3.as_mut().ok_or_else(|| BlobError::Storage("an s3 upload record without its multipart progress".into()))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn backend(&self) -> BlobBackend {
        BlobBackend::S3
    }

    async fn begin_upload(&self, blob: BlobId, size: u64) -> Result<UploadStatus, BlobError> {
        if size > self.max_size() {
            return Err(BlobError::TooLarge { limit: self.max_size() });
        }
        let progress = S3Progress { part_size: self.part_size, multipart_id: None, parts: Vec::new() };
        let state = UploadState::new(blob, size, Some(progress));
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
        let part_size = progress(&mut state)?.part_size;
        let mut file = self.partials.open_data(upload, state.staged()).await?;
        let mut buf = vec![0u8; partial::CHUNK];
        loop {
            // A part staged before a failure is handed over first.
            self.flush_full_part(upload, &mut state, &mut file).await?;
            if state.offset == state.size {
                break;
            }
            let room = part_size - state.staged();
            let ended =
                partial::receive(&self.partials, &active, &mut state, &mut file, body, Some(room), &mut buf).await?;
            if ended {
                break;
            }
        }
        state.status(upload)
    }

    async fn finish_upload(&self, upload: &UploadId) -> Result<PutOutcome, BlobError> {
        let _active = self.partials.claim(upload)?;
        let mut state = self.partials.load(upload).await?;
        if state.offset < state.size {
            return Err(BlobError::Incomplete { received: state.offset, size: state.size });
        }
        let declared = state.blob_id()?;
        let actual = BlobId(state.sha256.finish());
        if actual != declared {
            self.abort_multipart(&state).await?;
            self.partials.remove(upload).await?;
            return Err(BlobError::Mismatch(Mismatch::Sha256 { declared, actual }));
        }
        let existed = if self.head(declared).await?.is_some() {
            self.abort_multipart(&state).await?;
            true
        } else {
            self.publish(upload, &mut state).await?
        };
        self.partials.remove(upload).await?;
        Ok(PutOutcome { blob: declared, size: state.size, deduplicated: existed })
    }

    async fn abort_upload(&self, upload: &UploadId) -> Result<(), BlobError> {
        let _active = self.partials.claim(upload)?;
        match self.partials.load(upload).await {
            Ok(state) => self.abort_multipart(&state).await?,
            Err(BlobError::UploadNotFound) => {}
            // A record that cannot be read: its multipart upload (if any) is
            // the bucket's lifecycle rule's to clean up.
            Err(e) => tracing::warn!(upload = %upload, error = %e, "aborting an upload with an unreadable record"),
        }
        self.partials.remove(upload).await
    }

    async fn get(&self, blob: BlobId, range: Option<ByteRange>) -> Result<BlobRead, BlobError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(self.key(blob));
        if let Some(r) = range {
            if r.len == 0 {
                return self.empty_read(blob, range).await;
            }
            // Open-ended where the last byte would not fit a signed 64-bit
            // number (some stores parse it as one).
            request = match r.offset.checked_add(r.len - 1).filter(|last| *last <= i64::MAX as u64) {
                Some(last) => request.range(format!("bytes={}-{last}", r.offset)),
                None => request.range(format!("bytes={}-", r.offset)),
            };
        }
        let object = match request.send().await {
            Ok(object) => object,
            Err(e) if status(&e) == Some(416) => return self.empty_read(blob, range).await,
            Err(e) => return Err(sdk_error("reading a blob", e)),
        };
        let len = object.content_length().unwrap_or(0).max(0) as u64;
        let (offset, total_size) = match (range, object.content_range()) {
            (None, _) => (0, len),
            (Some(_), Some(content_range)) => parse_content_range(content_range).ok_or_else(|| {
                BlobError::Storage(format!("the store answered a range with Content-Range {content_range:?}"))
            })?,
            // A store that ignored the range sent the whole object.
            (Some(r), None) => {
                let (offset, want) = ByteRange::resolve(range, len)?;
                let mut body = object.body.into_async_read();
                tokio::io::copy(&mut tokio::io::AsyncReadExt::take(&mut body, r.offset), &mut tokio::io::sink())
                    .await
                    .map_err(|e| BlobError::Storage(format!("reading a blob: {e}")))?;
                let body = tokio::io::AsyncReadExt::take(body, want);
                return Ok(BlobRead { total_size: len, offset, len: want, body: Box::pin(body) });
            }
        };
        Ok(BlobRead { total_size, offset, len, body: Box::pin(object.body.into_async_read()) })
    }

    async fn stat(&self, blob: BlobId) -> Result<Option<BlobStat>, BlobError> {
        self.head(blob).await
    }

    async fn delete(&self, blob: BlobId) -> Result<(), BlobError> {
        match self.client.delete_object().bucket(&self.bucket).key(self.key(blob)).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(sdk_error("deleting a blob", e)),
        }
    }

    async fn list(&self, after: Option<BlobId>, limit: usize) -> Result<Vec<BlobStat>, BlobError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let start_after = after.map(|a| self.key(a));
        while out.len() < limit {
            let mut request = self.client.list_objects_v2().bucket(&self.bucket).max_keys(LIST_PAGE);
            if !self.key_prefix.is_empty() {
                request = request.prefix(&self.key_prefix);
            }
            request = match &token {
                Some(token) => request.continuation_token(token),
                None => request.set_start_after(start_after.clone()),
            };
            let page = request.send().await.map_err(|e| sdk_error("listing blobs", e))?;
            for object in page.contents() {
                let blob = object
                    .key()
                    .and_then(|k| k.strip_prefix(&self.key_prefix))
                    .filter(|hex| hex.bytes().all(|b| !b.is_ascii_uppercase()))
                    .and_then(BlobId::from_hex);
                if let Some(blob) = blob {
                    out.push(BlobStat {
                        blob,
                        size: object.size().unwrap_or(0).max(0) as u64,
                        stored_at_ms: millis(object.last_modified()),
                    });
                    if out.len() == limit {
                        break;
                    }
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn presign_get(&self, blob: BlobId, options: &PresignOptions) -> Result<Option<String>, BlobError> {
        let config = PresigningConfig::expires_in(options.expires_in)
            .map_err(|e| BlobError::Storage(format!("a presigned URL cannot last {:?}: {e}", options.expires_in)))?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(blob))
            .set_response_content_type(options.content_type.clone())
            .set_response_content_disposition(options.content_disposition.clone())
            .presigned(config)
            .await
            .map_err(|e| sdk_error("presigning a download", e))?;
        Ok(Some(presigned.uri().to_owned()))
    }

    async fn sweep_stale_uploads(&self) -> Result<usize, BlobError> {
        let mut swept = 0;
        let mut failure = None;
        for id in self.partials.stale(self.partial_ttl).await? {
            let Ok(_active) = self.partials.claim(&id) else { continue };
            let aborted = match self.partials.load(&id).await {
                Ok(state) => self.abort_multipart(&state).await,
                Err(_) => Ok(()),
            };
            match aborted {
                Ok(()) => match self.partials.remove(&id).await {
                    Ok(()) => swept += 1,
                    Err(e) => failure = Some(e),
                },
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) if swept == 0 => Err(e),
            _ => Ok(swept),
        }
    }

    async fn check(&self) -> Result<(), BlobError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(BlobError::Storage(format!(
                "bucket {:?} does not exist (blob.bucket; natterd does not create it)",
                self.bucket
            ))),
            Err(e) => Err(sdk_error("looking for the bucket", e)),
        }
    }
}

/// `bytes 0-9/100` → (0, 100).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, _) = span.split_once('-')?;
    Some((first.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// The HTTP status of a failed request, when the store answered.
fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A failed request as a [`BlobError`]: no answer, 5xx or 429 are
/// [`BlobError::Unavailable`] (the SDK already retried); 404 is
/// [`BlobError::NotFound`] (unless the bucket is what is missing); the rest
/// is a [`BlobError::Storage`] with the store's code and message.
fn sdk_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let Some(response) = e.raw_response() else {
        return match e {
            SdkError::ConstructionFailure(_) => BlobError::Storage(format!("{what}: {}", DisplayErrorContext(&e))),
            _ => BlobError::Unavailable {
                retry_after: DEFAULT_RETRY_AFTER,
                reason: format!("{what}: {}", DisplayErrorContext(&e)),
            },
        };
    };
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
    let (error_code, message) = (e.code().unwrap_or(""), e.message().unwrap_or(""));
    let reason = format!("{what}: HTTP {code} {error_code} {message}").trim_end().to_owned();
    match code {
        404 if error_code == "NoSuchBucket" => BlobError::Storage(format!("{reason} (blob.bucket)")),
        404 => BlobError::NotFound,
        429 | 500..=599 => BlobError::Unavailable { retry_after, reason },
        _ => BlobError::Storage(reason),
    }
}

/// The secret access key: `secret_access_key`, or the file's content.
fn read_secret(config: &BlobConfig) -> Result<String, BlobConfigError> {
    use crate::auth::http::SecretError;
    crate::auth::http::read_secret(
        "blob",
        ("secret_access_key", config.secret_access_key.as_ref()),
        ("secret_access_key_file", config.secret_access_key_file.as_deref()),
    )
    .map_err(|e| match e {
        SecretError::File { path, source, .. } => BlobConfigError::SecretFile { path, source },
        SecretError::Missing(_) => BlobConfigError::Invalid("blob.backend \"s3\" needs a secret access key".into()),
        e @ SecretError::Empty(_) => BlobConfigError::Invalid(e.to_string()),
    })
}

/// The HTTP client of the s3 store: as `auth::http::client` (rustls with
/// ring, Mozilla's roots, HTTP/1.1, no redirects), but with no bound on a
/// whole request, which may stream gigabytes: `timeout` bounds connecting and
/// each wait for bytes.
fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    crate::auth::http::client_builder()?
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())
}

/// The SDK's requests, sent with reqwest.
#[derive(Debug, Clone)]
struct ReqwestConnector {
    client: reqwest::Client,
}

impl HttpConnector for ReqwestConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        HttpConnectorFuture::new(async move {
            let request = request.try_into_http1x().map_err(|e| ConnectorError::user(Box::new(e)))?;
            let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap))
                .map_err(|e| ConnectorError::user(Box::new(e)))?;
            let response = client.execute(request).await.map_err(|e| {
                if e.is_timeout() {
                    ConnectorError::timeout(Box::new(e))
                } else if e.is_connect() || e.is_request() || e.is_body() {
                    ConnectorError::io(Box::new(e))
                } else {
                    ConnectorError::other(Box::new(e), None)
                }
            })?;
            let response = http::Response::from(response).map(SdkBody::from_body_1_x);
            HttpResponse::try_from(response).map_err(|e| ConnectorError::other(Box::new(e), None))
        })
    }
}

impl HttpClient for ReqwestConnector {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// An S3 time in milliseconds since the epoch (0 if absent).
fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok()).map_or(0, |ms| ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BlobConfig {
        BlobConfig {
            backend: BlobBackend::S3,
            bucket: Some("natter".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            allow_http_loopback: true,
            path_style: true,
            access_key_id: Some("natter".into()),
            secret_access_key: Some("s3cr3t-never-shown".into()),
            ..BlobConfig::default()
        }
    }

    #[test]
    fn keys_are_the_prefix_and_the_hex_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        let store = S3BlobStore::open(&c, dir.path()).unwrap();
        let id = BlobId::of(b"abc");
        assert_eq!(store.key(id), format!("blobs/{id}"));
        c.key_prefix = "natter/media/".into();
        assert_eq!(S3BlobStore::open(&c, dir.path()).unwrap().key(id), format!("natter/media/{id}"));
        assert!(!format!("{store:?}").contains("s3cr3t"));
    }

    #[test]
    fn content_ranges_give_the_start_and_the_total() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 95-99/100"), Some((95, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("0-9/100"), None);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_unavailable_and_the_secret_stays_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config();
        c.timeout_ms = 2_000;
        let store = S3BlobStore::open(&c, dir.path()).unwrap();
        let e = store.stat(BlobId::of(b"x")).await.unwrap_err();
        assert!(matches!(e, BlobError::Unavailable { .. }), "{e}");
        assert!(!format!("{e} {e:?}").contains("s3cr3t"), "{e:?}");
        let e = store.check().await.unwrap_err();
        assert!(matches!(e, BlobError::Unavailable { .. }), "{e}");
    }

    #[tokio::test]
    async fn too_large_for_ten_thousand_parts_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let store = S3BlobStore::open(&config(), dir.path()).unwrap();
        let limit = 8 * 1024 * 1024 * MAX_PARTS;
        let e = store.begin_upload(BlobId::of(b""), limit + 1).await.unwrap_err();
        assert_eq!(e, BlobError::TooLarge { limit });
    }
}
