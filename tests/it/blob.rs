//! The blob store conformance suite: the same test functions run against the
//! fs store (files under a temporary data directory) and the s3 store (a real
//! SeaweedFS, its S3 gateway enforcing SigV4). Round trips, ranges at the
//! edges, dedupe, mismatches that leave nothing visible, uploads resumed
//! after a restart, multipart, concurrent puts of the same bytes, the sweep;
//! plus what only one backend has (fs: crash safety on disk; s3: presigned
//! URLs, an unreachable or refusing store).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use natter_server::blob::{
    self, BlobBackend, BlobConfig, BlobError, BlobId, BlobStore, ByteRange, Mismatch, PresignOptions, UploadId,
    MIN_PART_BYTES,
};
use natter_tests::seaweed::Seaweed;
use tokio::io::{AsyncRead, ReadBuf};

/// A store under test, what it keeps its files in, and its S3 server.
pub struct Backend {
    config: BlobConfig,
    data_dir: tempfile::TempDir,
    seaweed: Option<Seaweed>,
}

impl Backend {
    fn fs() -> Self {
        Self { config: BlobConfig::default(), data_dir: tempfile::tempdir().unwrap(), seaweed: None }
    }

    fn s3() -> Self {
        let seaweed = Seaweed::start();
        let mut config = seaweed.blob_config("natter-test");
        // The smallest part S3 allows, so that a few MiB span several parts.
        config.part_size_bytes = MIN_PART_BYTES;
        Self { config, data_dir: tempfile::tempdir().unwrap(), seaweed: Some(seaweed) }
    }

    /// Opens the store afresh (as a restarted natterd would).
    fn open(&self) -> Arc<dyn BlobStore> {
        blob::open(&self.config, self.data_dir.path()).expect("open the blob store")
    }

    fn part_size(&self) -> u64 {
        self.config.part_size_bytes
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod fs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::fs()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Backend::s3()).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_stat_delete,
    ranges_at_the_edges,
    identical_bytes_are_stored_once,
    a_mismatch_leaves_nothing_visible,
    an_upload_resumes_after_a_restart_at_the_confirmed_offset,
    a_failing_sender_keeps_what_arrived,
    a_large_object_goes_in_parts,
    concurrent_puts_of_the_same_bytes_store_one_blob,
    one_transfer_at_a_time_per_upload,
    aborted_and_stale_uploads_are_gone,
    listing_pages_through_every_blob_in_id_order,
);

/// `n` bytes that differ from those of another `seed`.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read_all(store: &dyn BlobStore, id: BlobId, range: Option<ByteRange>) -> Vec<u8> {
    store.get(id, range).await.unwrap().into_bytes().await.unwrap()
}

async fn put_get_stat_delete(backend: Backend) {
    let store = backend.open();
    let data = bytes(100_000, 1);
    let id = BlobId::of(&data);
    assert_eq!(store.stat(id).await.unwrap(), None);
    assert_eq!(store.get(id, None).await.unwrap_err(), BlobError::NotFound);

    let out = store.put(id, data.len() as u64, &mut &data[..]).await.unwrap();
    assert_eq!((out.blob, out.size, out.deduplicated), (id, 100_000, false));
    assert_eq!(store.stat(id).await.unwrap().map(|s| s.size), Some(100_000));
    assert!(store.exists(id).await.unwrap());
    let read = store.get(id, None).await.unwrap();
    assert_eq!((read.total_size, read.offset, read.len), (100_000, 0, 100_000));
    assert_eq!(read.into_bytes().await.unwrap(), data);
    assert_eq!(
        store.list(None, 10).await.unwrap().iter().map(|s| (s.blob, s.size)).collect::<Vec<_>>(),
        [(id, 100_000)]
    );

    // The empty blob is a blob too (whether media may be empty is not this layer's call).
    let empty = BlobId::of(b"");
    assert!(!store.put(empty, 0, &mut &b""[..]).await.unwrap().deduplicated);
    assert_eq!(read_all(&*store, empty, None).await, b"");

    store.delete(id).await.unwrap();
    assert_eq!(store.stat(id).await.unwrap(), None);
    assert_eq!(store.get(id, None).await.unwrap_err(), BlobError::NotFound);
    store.delete(id).await.unwrap();
    assert_eq!(store.list(None, 10).await.unwrap().iter().map(|s| s.blob).collect::<Vec<_>>(), [empty]);
    store.check().await.unwrap();
}

async fn ranges_at_the_edges(backend: Backend) {
    let store = backend.open();
    let data = bytes(1000, 2);
    let id = BlobId::of(&data);
    store.put(id, 1000, &mut &data[..]).await.unwrap();
    let range = |offset, len| Some(ByteRange { offset, len });
    for (offset, len, want) in [(0, 10, 0..10), (990, 10, 990..1000), (995, 100, 995..1000), (0, u64::MAX, 0..1000)] {
        let read = store.get(id, range(offset, len)).await.unwrap();
        assert_eq!((read.total_size, read.offset, read.len), (1000, offset, want.len() as u64), "{offset}+{len}");
        assert_eq!(read.into_bytes().await.unwrap(), &data[want], "{offset}+{len}");
    }
    // Nothing to read: at the end, or 0 bytes anywhere.
    for (offset, len) in [(1000, 5), (1000, 0), (500, 0), (0, 0)] {
        let read = store.get(id, range(offset, len)).await.unwrap();
        assert_eq!((read.total_size, read.offset, read.len), (1000, offset, 0), "{offset}+{len}");
        assert!(read.into_bytes().await.unwrap().is_empty());
    }
    // Past the end: a typed refusal that says how large the blob is.
    for offset in [1001, 5000, u64::MAX] {
        let e = store.get(id, range(offset, 1)).await.unwrap_err();
        assert_eq!(e, BlobError::RangeNotSatisfiable { offset, size: 1000 }, "{offset}");
    }
    let e = store.get(BlobId::of(b"absent"), range(0, 1)).await.unwrap_err();
    assert_eq!(e, BlobError::NotFound);
    let empty = BlobId::of(b"");
    store.put(empty, 0, &mut &b""[..]).await.unwrap();
    assert_eq!(store.get(empty, range(0, 10)).await.unwrap().len, 0);
    assert_eq!(store.get(empty, range(1, 1)).await.unwrap_err(), BlobError::RangeNotSatisfiable { offset: 1, size: 0 });
}

async fn identical_bytes_are_stored_once(backend: Backend) {
    let store = backend.open();
    let data = bytes(50_000, 3);
    let id = BlobId::of(&data);
    assert!(!store.put(id, 50_000, &mut &data[..]).await.unwrap().deduplicated);
    // Through a resumable upload as well: the bytes are received and checked
    // (the upload never learns early that the blob exists), then not stored again.
    let upload = store.begin_upload(id, 50_000).await.unwrap();
    assert_eq!(upload.offset, 0);
    store.append(&upload.upload, 0, &mut &data[..]).await.unwrap();
    let out = store.finish_upload(&upload.upload).await.unwrap();
    assert!(out.deduplicated);
    assert_eq!(store.upload_status(&upload.upload).await.unwrap_err(), BlobError::UploadNotFound);
    assert_eq!(store.list(None, 10).await.unwrap().len(), 1);
    if backend.config.backend == BlobBackend::Fs {
        let path = blob::fs::object_path(backend.data_dir.path(), id);
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert_eq!(std::fs::read_dir(blob::fs::partial_dir(backend.data_dir.path())).unwrap().count(), 0);
    }
}

async fn a_mismatch_leaves_nothing_visible(backend: Backend) {
    let store = backend.open();
    let data = bytes(20_000, 4);
    let id = BlobId::of(&data);
    let other = BlobId::of(b"something else");

    let e = store.put(other, 20_000, &mut &data[..]).await.unwrap_err();
    assert_eq!(e, BlobError::Mismatch(Mismatch::Sha256 { declared: other, actual: id }));
    let e = store.put(id, 20_001, &mut &data[..]).await.unwrap_err();
    assert_eq!(e, BlobError::Mismatch(Mismatch::Size { declared: 20_001, received: 20_000 }));
    let e = store.put(id, 19_999, &mut &data[..]).await.unwrap_err();
    assert_eq!(e, BlobError::TooLarge { limit: 19_999 });
    let e = store.put(id, 0, &mut &data[..]).await.unwrap_err();
    assert_eq!(e, BlobError::TooLarge { limit: 0 });

    // A resumable upload: finishing early keeps it, a wrong hash ends it.
    let upload = store.begin_upload(other, 20_000).await.unwrap().upload;
    let status = store.append(&upload, 0, &mut &data[..5000]).await.unwrap();
    assert_eq!(status.offset, 5000);
    assert_eq!(store.finish_upload(&upload).await.unwrap_err(), BlobError::Incomplete { received: 5000, size: 20_000 });
    store.append(&upload, 5000, &mut &data[5000..]).await.unwrap();
    let e = store.finish_upload(&upload).await.unwrap_err();
    assert_eq!(e, BlobError::Mismatch(Mismatch::Sha256 { declared: other, actual: id }));
    assert_eq!(store.upload_status(&upload).await.unwrap_err(), BlobError::UploadNotFound);
    assert_eq!(store.finish_upload(&upload).await.unwrap_err(), BlobError::UploadNotFound);

    for blob in [id, other] {
        assert_eq!(store.stat(blob).await.unwrap(), None);
        assert_eq!(store.get(blob, None).await.unwrap_err(), BlobError::NotFound);
    }
    assert!(store.list(None, 10).await.unwrap().is_empty());
    if backend.config.backend == BlobBackend::Fs {
        assert_eq!(std::fs::read_dir(blob::fs::partial_dir(backend.data_dir.path())).unwrap().count(), 0);
    }
}

async fn an_upload_resumes_after_a_restart_at_the_confirmed_offset(backend: Backend) {
    // Two parts and a bit on s3 (5 MiB parts), the restart inside the second.
    let size = 2 * backend.part_size() as usize + 300_000;
    let data = bytes(size, 5);
    let id = BlobId::of(&data);
    let first = backend.part_size() as usize + 1_000_000;

    let upload = {
        let store = backend.open();
        let status = store.begin_upload(id, size as u64).await.unwrap();
        let status = store.append(&status.upload, 0, &mut &data[..first]).await.unwrap();
        assert_eq!(status.offset, first as u64);
        status.upload
        // The store is dropped here: natterd stops mid-upload.
    };

    let store = backend.open();
    assert_eq!(store.stat(id).await.unwrap(), None, "an unfinished upload is not visible");
    let status = store.upload_status(&upload).await.unwrap();
    assert_eq!((status.blob, status.size, status.offset), (id, size as u64, first as u64));
    // A client that thinks it got further, or not as far, is told where to resume.
    for wrong in [0, first as u64 - 1, first as u64 + 1] {
        let e = store.append(&upload, wrong, &mut &data[wrong as usize..]).await.unwrap_err();
        assert_eq!(e, BlobError::WrongOffset { confirmed: first as u64, got: wrong });
    }
    let resumed = UploadId::parse(upload.as_str()).expect("the id a client sends back");
    let status = store.append(&resumed, first as u64, &mut &data[first..]).await.unwrap();
    assert_eq!(status.offset, size as u64);
    let out = store.finish_upload(&resumed).await.unwrap();
    assert_eq!((out.blob, out.size, out.deduplicated), (id, size as u64, false));
    assert_eq!(read_all(&*store, id, None).await, data);
    assert_eq!(store.upload_status(&resumed).await.unwrap_err(), BlobError::UploadNotFound);
}

/// Yields `data`, then fails after `fail_at` bytes (a connection lost mid-stream).
struct FailingBody {
    data: Vec<u8>,
    pos: usize,
    fail_at: usize,
}

impl AsyncRead for FailingBody {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos >= self.fail_at {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection lost")));
        }
        let n = buf.remaining().min(self.fail_at - self.pos).min(10_000);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

async fn a_failing_sender_keeps_what_arrived(backend: Backend) {
    let store = backend.open();
    let size = backend.part_size() as usize + 123_457;
    let data = bytes(size, 6);
    let id = BlobId::of(&data);
    let upload = store.begin_upload(id, size as u64).await.unwrap().upload;
    // Fails past the first part (s3: the part is handed over first).
    let fail_at = backend.part_size() as usize + 77_777;
    let mut body = FailingBody { data: data.clone(), pos: 0, fail_at };
    let e = store.append(&upload, 0, &mut body).await.unwrap_err();
    assert!(matches!(&e, BlobError::Interrupted { offset, .. } if *offset == fail_at as u64), "{e:?}");
    let store = backend.open();
    assert_eq!(store.upload_status(&upload).await.unwrap().offset, fail_at as u64);
    store.append(&upload, fail_at as u64, &mut &data[fail_at..]).await.unwrap();
    assert!(!store.finish_upload(&upload).await.unwrap().deduplicated);
    assert_eq!(read_all(&*store, id, None).await, data);
}

async fn a_large_object_goes_in_parts(backend: Backend) {
    let store = backend.open();
    let part = backend.part_size();
    // Three whole parts and half of a fourth.
    let size = 3 * part as usize + part as usize / 2;
    let data = bytes(size, 7);
    let id = BlobId::of(&data);
    let out = store.put(id, size as u64, &mut &data[..]).await.unwrap();
    assert_eq!(out.size, size as u64);
    assert_eq!(read_all(&*store, id, None).await, data);
    // A range across the boundary of parts 2 and 3.
    let offset = 2 * part - 1000;
    let read = read_all(&*store, id, Some(ByteRange { offset, len: 2000 })).await;
    assert_eq!(read, &data[offset as usize..offset as usize + 2000]);

    let options = PresignOptions {
        expires_in: Duration::from_secs(300),
        content_type: Some("video/mp4".into()),
        content_disposition: None,
    };
    match (backend.config.backend, store.presign_get(id, &options).await.unwrap()) {
        (BlobBackend::Fs, None) => {}
        (BlobBackend::S3, Some(url)) => {
            // Straight from the store: stored as a multipart object of four
            // parts (its ETag says "-4"), typed as asked.
            let http = natter_tests::seaweed::http_client();
            let response = http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let etag = response.headers()["etag"].to_str().unwrap().to_owned();
            assert!(etag.trim_matches('"').ends_with("-4"), "ETag {etag}");
            assert_eq!(response.headers()["content-type"], "video/mp4");
            assert_eq!(response.bytes().await.unwrap(), data);
            // A URL whose signature was tampered with is refused by the store.
            let tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0");
            assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
        }
        (backend, url) => panic!("{backend:?} presigned {url:?}"),
    }
}

async fn concurrent_puts_of_the_same_bytes_store_one_blob(backend: Backend) {
    let store = backend.open();
    // More than one part on s3: the multipart path races too.
    let data = Arc::new(bytes(backend.part_size() as usize + 4096, 8));
    let id = BlobId::of(&data);
    let mut puts = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (store, data) = (Arc::clone(&store), Arc::clone(&data));
        puts.spawn(async move { store.put(id, data.len() as u64, &mut &data[..]).await });
    }
    let mut stored = 0;
    while let Some(put) = puts.join_next().await {
        let out = put.unwrap().unwrap();
        assert_eq!((out.blob, out.size), (id, data.len() as u64));
        stored += usize::from(!out.deduplicated);
    }
    assert!(stored >= 1, "somebody stored it");
    if backend.config.backend == BlobBackend::Fs {
        assert_eq!(stored, 1, "a hard link is put-if-absent without a race");
    }
    assert_eq!(store.list(None, 10).await.unwrap().len(), 1);
    assert_eq!(read_all(&*store, id, None).await, *data);
}

async fn one_transfer_at_a_time_per_upload(backend: Backend) {
    let store = backend.open();
    let data = bytes(10_000, 9);
    let id = BlobId::of(&data);
    let upload = store.begin_upload(id, 10_000).await.unwrap().upload;
    // The first transfer waits for bytes that have not come yet. The pipe
    // holds 1 KiB, so once 4000 bytes are written the first has read some:
    // it holds the upload.
    let (mut sender, mut receiver) = tokio::io::duplex(1024);
    let first = {
        let (store, upload) = (Arc::clone(&store), upload.clone());
        tokio::spawn(async move { store.append(&upload, 0, &mut receiver).await })
    };
    tokio::io::AsyncWriteExt::write_all(&mut sender, &data[..4000]).await.unwrap();
    assert_eq!(store.append(&upload, 0, &mut &data[..]).await.unwrap_err(), BlobError::UploadBusy);
    assert_eq!(store.finish_upload(&upload).await.unwrap_err(), BlobError::UploadBusy);
    assert_eq!(store.abort_upload(&upload).await.unwrap_err(), BlobError::UploadBusy);
    drop(sender);
    assert_eq!(first.await.unwrap().unwrap().offset, 4000);
    store.append(&upload, 4000, &mut &data[4000..]).await.unwrap();
    store.finish_upload(&upload).await.unwrap();
    assert_eq!(read_all(&*store, id, None).await, data);
}

async fn aborted_and_stale_uploads_are_gone(mut backend: Backend) {
    let data = bytes(backend.part_size() as usize + 10, 10);
    let id = BlobId::of(&data);
    let store = backend.open();
    let upload = store.begin_upload(id, data.len() as u64).await.unwrap().upload;
    store.append(&upload, 0, &mut &data[..1000]).await.unwrap();
    store.abort_upload(&upload).await.unwrap();
    assert_eq!(store.upload_status(&upload).await.unwrap_err(), BlobError::UploadNotFound);
    assert_eq!(store.append(&upload, 0, &mut &data[..]).await.unwrap_err(), BlobError::UploadNotFound);
    store.abort_upload(&upload).await.unwrap();

    // A fresh upload outlives the sweep; once older than the limit, it is swept.
    let upload = store.begin_upload(id, data.len() as u64).await.unwrap().upload;
    store.append(&upload, 0, &mut &data[..data.len() - 5]).await.unwrap();
    assert_eq!(store.sweep_stale_uploads().await.unwrap(), 0);
    drop(store);
    backend.config.partial_ttl_secs = 0;
    let store = backend.open();
    assert_eq!(store.sweep_stale_uploads().await.unwrap(), 1);
    assert_eq!(store.upload_status(&upload).await.unwrap_err(), BlobError::UploadNotFound);
    assert_eq!(store.stat(id).await.unwrap(), None);
    assert_eq!(std::fs::read_dir(blob::fs::partial_dir(backend.data_dir.path())).unwrap().count(), 0);
}

async fn listing_pages_through_every_blob_in_id_order(backend: Backend) {
    let store = backend.open();
    let mut want = Vec::new();
    for i in 0..7u64 {
        let data = bytes(100 + i as usize, 100 + i);
        store.put(BlobId::of(&data), data.len() as u64, &mut &data[..]).await.unwrap();
        want.push((BlobId::of(&data), data.len() as u64));
    }
    // An upload in progress is not a blob.
    let pending = bytes(10, 99);
    let upload = store.begin_upload(BlobId::of(&pending), 10).await.unwrap().upload;
    store.append(&upload, 0, &mut &pending[..5]).await.unwrap();
    want.sort();
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.blob);
        got.extend(page.iter().map(|s| (s.blob, s.size)));
    }
    assert_eq!(got, want);
    assert_eq!(store.list(Some(want[5].0), 10).await.unwrap().len(), 1);
}

/// fs: the object path only ever names a complete file. Bytes a crash left
/// after the last checkpoint are cut off when the upload resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_never_shows_a_partial_object_and_recovers_from_a_torn_write() {
    let backend = Backend::fs();
    let data = bytes(3_000_000, 11);
    let id = BlobId::of(&data);
    let object = blob::fs::object_path(backend.data_dir.path(), id);
    let upload = {
        let store = backend.open();
        let upload = store.begin_upload(id, data.len() as u64).await.unwrap().upload;
        store.append(&upload, 0, &mut &data[..1_000_000]).await.unwrap();
        upload
    };
    assert!(!object.exists());
    let staged = blob::fs::partial_dir(backend.data_dir.path()).join(upload.as_str());
    assert_eq!(std::fs::metadata(&staged).unwrap().len(), 1_000_000);
    // A torn write: bytes on disk past the confirmed offset, and garbage.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&staged).unwrap();
        f.write_all(&[0xff; 70_000]).unwrap();
    }
    let store = backend.open();
    assert_eq!(store.upload_status(&upload).await.unwrap().offset, 1_000_000);
    assert!(!object.exists());
    store.append(&upload, 1_000_000, &mut &data[1_000_000..]).await.unwrap();
    assert!(!object.exists(), "not visible before finish");
    store.finish_upload(&upload).await.unwrap();
    assert_eq!(std::fs::read(&object).unwrap(), data);
    assert!(!staged.exists());
}

/// s3: a store that cannot be reached is `Unavailable` (retry later), never a
/// missing blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_unreachable_is_unavailable() {
    let mut backend = Backend::s3();
    let store = backend.open();
    let data = bytes(1000, 12);
    let id = BlobId::of(&data);
    store.put(id, 1000, &mut &data[..]).await.unwrap();
    let upload = store.begin_upload(BlobId::of(b"x"), 1).await.unwrap().upload;
    store.append(&upload, 0, &mut &b"x"[..]).await.unwrap();
    drop(backend.seaweed.take());
    for e in [
        store.stat(id).await.unwrap_err(),
        store.get(id, None).await.unwrap_err(),
        store.delete(id).await.unwrap_err(),
        store.finish_upload(&upload).await.unwrap_err(),
        store.check().await.unwrap_err(),
    ] {
        assert!(matches!(e, BlobError::Unavailable { .. }), "{e:?}");
    }
    // The upload is kept, to be finished when the store is back.
    assert_eq!(store.upload_status(&upload).await.unwrap().offset, 1);
}

/// s3: wrong keys are refused by the store (SigV4 is checked), typed, and the
/// secret is in no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_keys_are_refused_without_showing_the_secret() {
    let backend = Backend::s3();
    let mut config = backend.config.clone();
    config.secret_access_key = Some("not-the-secret-4d1f".into());
    let store = blob::open(&config, backend.data_dir.path()).unwrap();
    let data = bytes(100, 13);
    let id = BlobId::of(&data);
    for e in [store.put(id, 100, &mut &data[..]).await.unwrap_err(), store.check().await.unwrap_err()] {
        assert!(matches!(&e, BlobError::Storage(m) if m.contains("403")), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("not-the-secret"), "{e:?}");
    }
    let mut config = backend.config.clone();
    config.bucket = Some("no-such-bucket".into());
    let e = blob::open(&config, backend.data_dir.path()).unwrap().check().await.unwrap_err();
    assert!(matches!(&e, BlobError::Storage(m) if m.contains("no-such-bucket")), "{e:?}");
}

/// s3: a multipart upload aborted behind natterd's back (a lifecycle rule, an
/// operator) makes the upload unknown, so the client starts again, rather
/// than failing forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_a_multipart_upload_lost_behind_natterds_back_starts_again() {
    let backend = Backend::s3();
    let store = backend.open();
    let size = 2 * backend.part_size() as usize + 1000;
    let data = bytes(size, 14);
    let id = BlobId::of(&data);
    let first = backend.part_size() as usize + 10;
    for finish_first in [false, true] {
        let upload = store.begin_upload(id, size as u64).await.unwrap().upload;
        store.append(&upload, 0, &mut &data[..first]).await.unwrap();
        if finish_first {
            store.append(&upload, first as u64, &mut &data[first..]).await.unwrap();
        }
        // A copy of the upload's record on another data directory aborts it.
        let other = tempfile::tempdir().unwrap();
        let (from, to) = (blob::fs::partial_dir(backend.data_dir.path()), blob::fs::partial_dir(other.path()));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        blob::open(&backend.config, other.path()).unwrap().abort_upload(&upload).await.unwrap();

        let e = if finish_first {
            store.finish_upload(&upload).await.unwrap_err()
        } else {
            store.append(&upload, first as u64, &mut &data[first..]).await.unwrap_err()
        };
        assert_eq!(e, BlobError::UploadNotFound, "finish first: {finish_first}");
        assert_eq!(store.upload_status(&upload).await.unwrap_err(), BlobError::UploadNotFound);
        assert_eq!(store.stat(id).await.unwrap(), None);
    }
    assert!(!store.put(id, size as u64, &mut &data[..]).await.unwrap().deduplicated);
}
