//! Media through the protocol: uploads and downloads on transfer streams of
//! their own, media messages, and who may read what. The blob store is the
//! default (files under the data directory).

use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};

use natter_client::proto::{self, content::Body as ContentBody};
use natter_client::transfer::{digest, UploadSpec};
use natter_client::Client;
use natter_proto::ErrorCode;
use natter_tests::TestServer;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

/// A PNG of `w`×`h` (its header; the rest is noise, which is all a type
/// check and a byte-for-byte round trip need).
fn png(w: u32, h: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut x: u32 = 0x9e37_79b9;
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.push(x as u8);
    }
    b
}

/// The GPS latitude a camera wrote (52° 31' 12.34"): its bytes in the EXIF block.
pub(crate) const LATITUDE: [u8; 24] = {
    let mut b = [0u8; 24];
    let parts = [52u32, 1, 31, 1, 1234, 100];
    let mut i = 0;
    while i < 6 {
        let le = parts[i].to_le_bytes();
        let mut j = 0;
        while j < 4 {
            b[i * 4 + j] = le[j];
            j += 1;
        }
        i += 1;
    }
    b
};

/// A `w`×`h` JPEG (made by the `image` crate, its pattern set by `seed`) as a
/// phone writes it: an APP1 EXIF block with the camera's make and a GPS IFD
/// (latitude N 52° 31' 12.34").
pub(crate) fn photo_with_location(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x / 4) as u8 ^ seed, (y / 4) as u8, seed]));
    let mut plain = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 85).encode_image(&pixels).unwrap();
    // TIFF, little-endian: IFD0 {Make, GPSInfo} at 8, "Canon" at 38, the GPS
    // IFD {LatitudeRef "N", Latitude} at 44, its three rationals at 74.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    let entry = |t: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        t.extend_from_slice(&tag.to_le_bytes());
        t.extend_from_slice(&kind.to_le_bytes());
        t.extend_from_slice(&count.to_le_bytes());
        t.extend_from_slice(&value);
    };
    tiff.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut tiff, 0x010F, 2, 6, 38u32.to_le_bytes());
    entry(&mut tiff, 0x8825, 4, 1, 44u32.to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(b"Canon\0");
    tiff.extend_from_slice(&2u16.to_le_bytes());
    entry(&mut tiff, 0x0001, 2, 2, *b"N\0\0\0");
    entry(&mut tiff, 0x0002, 5, 3, 74u32.to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(tiff.len(), 74);
    tiff.extend_from_slice(&LATITUDE);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((tiff.len() + 8) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether any file under `dir` holds `needle`.
fn any_file_holds(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            any_file_holds(&path, needle)
        } else {
            std::fs::read(&path).is_ok_and(|bytes| contains(&bytes, needle))
        }
    })
}

pub(crate) async fn spec_of(conversation: &str, name: &str, bytes: &[u8]) -> UploadSpec {
    let (sha256, size) = digest(&mut Cursor::new(bytes)).await.unwrap();
    UploadSpec { conversation_id: conversation.into(), file_name: name.into(), size, sha256, upload_id: None }
}

pub(crate) async fn upload(
    c: &Client,
    conversation: &str,
    name: &str,
    bytes: &[u8],
) -> Result<proto::Media, ErrorCode> {
    let spec = spec_of(conversation, name, bytes).await;
    c.upload(&spec, &mut Cursor::new(bytes.to_vec()), |_| {}).await.map_err(|e| e.error.code().expect("a server error"))
}

pub(crate) async fn download(c: &Client, media_id: &str, offset: u64, length: u64) -> Result<Vec<u8>, ErrorCode> {
    let mut out = Vec::new();
    c.download(media_id, offset, length, &mut out, |_| {}).await.map_err(|e| e.code().expect("a server error"))?;
    Ok(out)
}

/// The media of the newest message `c` can see in `conversation`.
pub(crate) async fn last_media(c: &Client, conversation: &str) -> proto::Media {
    let page = c
        .history(proto::GetHistory { conversation_id: conversation.into(), limit: 1, ..Default::default() })
        .await
        .unwrap();
    match page.messages[0].content.clone().and_then(|c| c.body) {
        Some(ContentBody::Media(m)) => m,
        other => panic!("not a media message: {other:?}"),
    }
}

#[tokio::test]
async fn a_photo_goes_up_is_sent_and_comes_down_byte_for_byte_and_by_range() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let photo = png(640, 480, 300 * 1024 + 7);
    let mut seen = Vec::new();
    let spec = spec_of(&dm, "holiday.png", &photo).await;
    let media = alice.upload(&spec, &mut Cursor::new(photo.clone()), |n| seen.push(n)).await.unwrap();
    assert_eq!(
        (media.mime_type.as_str(), media.size, media.width, media.height),
        ("image/png", photo.len() as u64, 640, 480)
    );
    assert_eq!(media.file_name, "holiday.png");
    assert_eq!(media.sha256, spec.sha256.to_vec());
    assert_eq!(seen.last(), Some(&(photo.len() as u64)), "progress reached the end");
    // Before it is sent, only Alice can read it.
    assert_eq!(download(&bob, &media.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    assert_eq!(download(&alice, &media.media_id, 0, 0).await.unwrap(), photo);

    alice.send_media(&dm, "m1", &media.media_id, "the beach").await.unwrap();
    let got = last_media(&bob, &dm).await;
    assert_eq!(
        (got.media_id.as_str(), got.caption.as_str(), got.mime_type.as_str()),
        (media.media_id.as_str(), "the beach", "image/png")
    );
    assert_eq!(download(&bob, &got.media_id, 0, 0).await.unwrap(), photo, "byte for byte");
    // A range, as a player seeks; the end; past the end.
    assert_eq!(download(&bob, &got.media_id, 1000, 5000).await.unwrap(), &photo[1000..6000]);
    let n = photo.len() as u64;
    assert_eq!(download(&bob, &got.media_id, n - 10, 0).await.unwrap(), &photo[photo.len() - 10..]);
    assert_eq!(download(&bob, &got.media_id, n, 1).await, Err(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(download(&bob, &got.media_id, n + 1, 0).await, Err(ErrorCode::INVALID_ARGUMENT));
    // Chat goes on beside transfers on the same connection.
    bob.send_text(&dm, "b1", "nice!").await.unwrap();
}

#[tokio::test]
async fn uploads_are_checked_before_and_while_bytes_arrive() {
    let server = TestServer::start_with(|c| {
        c.media.max_file_bytes = 1024 * 1024;
        c.media.quota_bytes = 1536 * 1024;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;
    let dm = alice.open_direct("mallory@example.org").await.unwrap().conversation_id;
    let (carol, _) = server.new_user("carol@example.org").await;

    // An executable called a photo: the bytes decide.
    let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
    elf.resize(64 * 1024, 0x90);
    assert_eq!(upload(&alice, &dm, "cat.jpg", &elf).await, Err(ErrorCode::MEDIA_TYPE_REFUSED));
    // Too large, refused before a byte; nothing; a bad name.
    assert_eq!(upload(&alice, &dm, "big.png", &png(1, 1, 1024 * 1024 + 1)).await, Err(ErrorCode::MEDIA_TOO_LARGE));
    assert_eq!(upload(&alice, &dm, "empty.txt", b"").await, Err(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(upload(&alice, &dm, "../etc/passwd", b"hello").await, Err(ErrorCode::INVALID_ARGUMENT));
    // Bytes that are not the declared ones.
    let photo = png(2, 2, 4096);
    let mut spec = spec_of(&dm, "a.png", &photo).await;
    spec.sha256[0] ^= 1;
    let e = alice.upload(&spec, &mut Cursor::new(photo.clone()), |_| {}).await.unwrap_err();
    assert_eq!(e.error.code(), Some(ErrorCode::MEDIA_MISMATCH), "{e}");
    // Not a member; not signed in.
    assert_eq!(upload(&carol, &dm, "a.png", &photo).await, Err(ErrorCode::NOT_A_MEMBER));
    let anonymous = server.client().await;
    assert_eq!(upload(&anonymous, &dm, "a.png", &photo).await, Err(ErrorCode::UNAUTHENTICATED));
    assert_eq!(
        download(&anonymous, "6f9c1a3e-0000-4000-8000-000000000000", 0, 0).await,
        Err(ErrorCode::UNAUTHENTICATED)
    );

    // The quota: 1 MiB stored, another 1 MiB would pass 1.5 MiB.
    let first = upload(&alice, &dm, "one.png", &png(8, 8, 1024 * 1024)).await.unwrap();
    assert_eq!(upload(&alice, &dm, "two.png", &png(8, 9, 1024 * 1024)).await, Err(ErrorCode::QUOTA_EXCEEDED));
    // Mallory's quota is his own.
    upload(&mallory, &dm, "his.png", &png(9, 9, 1024)).await.unwrap();

    // Sending: only your own upload, only where it was uploaded for.
    let e = mallory.send_media(&dm, "x", &first.media_id, "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND), "someone else's upload: {e}");
    let group = alice.create_group("crew", &["mallory@example.org"]).await.unwrap().conversation_id;
    let e = alice.send_media(&group, "y", &first.media_id, "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "uploaded for another conversation: {e}");
    let e = alice.send_media(&dm, "z", "not-an-id", "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");
    alice.send_media(&dm, "ok", &first.media_id, "").await.unwrap();
    assert_eq!(download(&carol, &first.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND), "not in the conversation");
}

#[tokio::test]
async fn a_removed_member_keeps_the_media_sent_before_and_gets_none_after() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let group = alice.create_group("crew", &["bob@example.org"]).await.unwrap();
    let g = group.conversation_id.clone();
    let before = upload(&alice, &g, "before.png", &png(3, 3, 2048)).await.unwrap();
    alice.send_media(&g, "m1", &before.media_id, "").await.unwrap();
    let bob_id = bob.identity().unwrap().user_id;
    alice.remove_member(&g, &bob_id).await.unwrap();
    let after = upload(&alice, &g, "after.png", &png(4, 4, 2048)).await.unwrap();
    alice.send_media(&g, "m2", &after.media_id, "").await.unwrap();
    assert_eq!(download(&bob, &before.media_id, 0, 0).await.unwrap().len(), 2048, "sent while he was a member");
    assert_eq!(download(&bob, &after.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND), "sent after his removal");
}

/// Yields `limit` bytes of `inner`, then fails: a connection that breaks.
struct Breaks {
    inner: Cursor<Vec<u8>>,
    limit: u64,
}

impl AsyncRead for Breaks {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let left = self.limit.saturating_sub(self.inner.position());
        if left == 0 {
            return Poll::Ready(Err(std::io::Error::other("the network went away")));
        }
        let mut small = buf.take(left as usize);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut small);
        let n = small.filled().len();
        buf.advance(n);
        r
    }
}

impl AsyncSeek for Breaks {
    fn start_seek(mut self: Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        Pin::new(&mut self.inner).start_seek(position)
    }
    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        Pin::new(&mut self.inner).poll_complete(cx)
    }
}

#[tokio::test]
async fn an_upload_cut_off_resumes_where_natterd_has_it() {
    let server = TestServer::start().await;
    let (alice, token) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let video = {
        let mut v = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41".to_vec();
        v.extend(png(1, 1, 3 * 1024 * 1024).into_iter().skip(16));
        v
    };
    let spec = spec_of(&dm, "clip.mp4", &video).await;
    let cut = 1024 * 1024 + 12_345;
    let e =
        alice.upload(&spec, &mut Breaks { inner: Cursor::new(video.clone()), limit: cut }, |_| {}).await.unwrap_err();
    let upload_id = e.upload_id.clone().expect("natterd accepted it before the cut");
    alice.close().await;

    // The id is Alice's: Carol, who saw it somehow, cannot take the upload over.
    let (carol, _) = server.new_user("carol@example.org").await;
    let hers = carol.open_direct("bob@example.org").await.unwrap().conversation_id;
    let theft = UploadSpec { conversation_id: hers, upload_id: Some(upload_id.clone()), ..spec.clone() };
    let e = carol.upload(&theft, &mut Cursor::new(video.clone()), |_| {}).await.unwrap_err();
    assert_eq!(e.error.code(), Some(ErrorCode::NOT_FOUND), "{e}");

    // Later, on another connection: natterd says where to go on from.
    let again = server.resume(&token).await;
    let mut resumed_at = None;
    let spec = UploadSpec { upload_id: Some(upload_id.clone()), ..spec };
    let media = again
        .upload(&spec, &mut Cursor::new(video.clone()), |n| {
            resumed_at.get_or_insert(n);
        })
        .await
        .unwrap();
    let at = resumed_at.unwrap();
    assert!(at > 0 && at <= cut, "resumed at {at}, the cut was at {cut}");
    assert_eq!(media.mime_type, "video/mp4");
    assert_eq!(download(&again, &media.media_id, 0, 0).await.unwrap(), video);
    // Finished: the id resumes nothing any more.
    let e = again.upload(&spec, &mut Cursor::new(video.clone()), |_| {}).await.unwrap_err();
    assert_eq!(e.error.code(), Some(ErrorCode::NOT_FOUND), "{e}");
}

#[tokio::test]
async fn on_the_s3_store_a_video_round_trips_and_seeks_and_identical_bytes_are_stored_once() {
    let weed = natter_tests::seaweed::Seaweed::start();
    let blob = weed.blob_config("natter-media-test");
    let config = blob.clone();
    let server = TestServer::start_with(move |c| c.blob = blob).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    // 12 MiB: more than two multipart parts.
    let mut video = b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41".to_vec();
    video.extend(png(1, 1, 12 * 1024 * 1024).into_iter().skip(16));
    let media = upload(&alice, &dm, "clip.mp4", &video).await.unwrap();
    assert_eq!(media.mime_type, "video/mp4");
    alice.send_media(&dm, "v1", &media.media_id, "").await.unwrap();
    assert_eq!(download(&bob, &media.media_id, 0, 0).await.unwrap(), video);
    let at = 7 * 1024 * 1024 + 3;
    assert_eq!(download(&bob, &media.media_id, at, 4096).await.unwrap(), &video[at as usize..at as usize + 4096]);
    // Bob sends the same bytes back: a media of his own, the same object in the store.
    let again = upload(&bob, &dm, "same.mp4", &video).await.unwrap();
    assert_ne!(again.media_id, media.media_id);
    assert_eq!(again.sha256, media.sha256);
    assert_eq!(download(&bob, &again.media_id, 0, 16).await.unwrap(), &video[..16]);
    // A direct URL from the store: for those who may read it, and for a while.
    let url = bob.media_url(&media.media_id).await.unwrap();
    let http = natter_tests::http_client();
    let got = http.get(&url.url).header("Range", "bytes=100-199").send().await.unwrap();
    assert_eq!(got.status().as_u16(), 206);
    assert_eq!(got.headers()["content-type"], "video/mp4");
    assert_eq!(got.bytes().await.unwrap().as_ref(), &video[100..200]);
    let (carol, _) = server.new_user("carol@example.org").await;
    assert_eq!(carol.media_url(&media.media_id).await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
    let anonymous = server.client().await;
    assert_eq!(anonymous.media_url(&media.media_id).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    let store = natter_server::blob::open(&config, server.data_dir()).unwrap();
    let objects = store.list(None, 100).await.unwrap();
    assert_eq!(objects.len(), 1, "one object for both uploads: {objects:?}");
    assert_eq!(objects[0].size, video.len() as u64);
}

#[tokio::test]
async fn a_direct_url_expires_and_the_fs_store_has_none() {
    let weed = natter_tests::seaweed::Seaweed::start();
    let blob = weed.blob_config("natter-url-expiry");
    let server = TestServer::start_with(move |c| {
        c.blob = blob;
        c.media.url_expiry_secs = 1;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let photo = png(5, 5, 4096);
    let media = upload(&alice, &dm, "p.png", &photo).await.unwrap();
    let url = alice.media_url(&media.media_id).await.unwrap();
    let http = natter_tests::http_client();
    assert_eq!(http.get(&url.url).send().await.unwrap().bytes().await.unwrap().as_ref(), photo.as_slice());
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let late = http.get(&url.url).send().await.unwrap();
    assert_eq!(late.status().as_u16(), 403, "the store refuses an expired URL");

    let fs = TestServer::start().await;
    let (alice, _) = fs.new_user("alice@example.org").await;
    fs.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let media = upload(&alice, &dm, "p.png", &photo).await.unwrap();
    let e = alice.media_url(&media.media_id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::DIRECT_URL_UNSUPPORTED), "{e}");
}

#[tokio::test]
async fn natterd_killed_mid_upload_shows_no_partial_file_and_the_upload_resumes_after_restart() {
    use natter_tests::{ChildServer, PASSWORD};
    let dir = tempfile::tempdir().unwrap();
    let addr = crate::crash::free_udp_port();
    let mut server = Some(ChildServer::spawn(&crate::natterd(), dir.path(), addr));
    let mut config = server.as_ref().unwrap().client_config();
    // A killed server sends nothing more: notice it soon.
    config.idle_timeout = std::time::Duration::from_secs(2);
    config.keep_alive = std::time::Duration::from_millis(500);
    let alice = Client::connect(&config).await.unwrap();
    alice.signup("alice@example.org", PASSWORD, "").await.unwrap();
    let (token, _) = alice.login("alice@example.org", PASSWORD, "d").await.unwrap();
    Client::connect(&config).await.unwrap().signup("bob@example.org", PASSWORD, "").await.unwrap();
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let photo = png(800, 600, 12 * 1024 * 1024);
    let spec = spec_of(&dm, "big.png", &photo).await;
    // SIGKILL once 6 MiB are on their way: no shutdown path runs.
    let kill_at = 6 * 1024 * 1024;
    let e = alice
        .upload(&spec, &mut Cursor::new(photo.clone()), |n| {
            if n >= kill_at {
                if let Some(mut s) = server.take() {
                    s.kill9();
                }
            }
        })
        .await
        .unwrap_err();
    let upload_id = e.upload_id.clone().expect("accepted before the kill");
    drop(alice);
    let blob = natter_server::blob::BlobId(spec.sha256);
    assert!(!natter_server::blob::fs::object_path(dir.path(), blob).exists(), "no half object is visible");

    let _server = ChildServer::spawn(&crate::natterd(), dir.path(), addr);
    let mut config = config.clone();
    config.session_token = Some(token);
    let again = Client::connect(&config).await.unwrap();
    let mut resumed_at = None;
    let spec = UploadSpec { upload_id: Some(upload_id), ..spec };
    let media = again
        .upload(&spec, &mut Cursor::new(photo.clone()), |n| {
            resumed_at.get_or_insert(n);
        })
        .await
        .unwrap();
    let at = resumed_at.unwrap();
    assert!(at > 0 && at <= kill_at, "what natterd had made durable before the kill: {at}");
    assert_eq!((media.width, media.height), (800, 600));
    assert_eq!(download(&again, &media.media_id, 0, 0).await.unwrap(), photo);
    assert!(natter_server::blob::fs::object_path(dir.path(), blob).exists());
}

#[tokio::test]
async fn an_unreachable_s3_store_is_unavailable_and_chat_goes_on() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let blob = natter_server::blob::BlobConfig {
        backend: natter_server::blob::BlobBackend::S3,
        bucket: Some("natter-media".into()),
        endpoint: Some(format!("http://{closed}")),
        path_style: true,
        access_key_id: Some("natter".into()),
        secret_access_key: Some("not-a-real-secret-at-all".into()),
        allow_http_loopback: true,
        timeout_ms: 1_000,
        ..natter_server::blob::BlobConfig::default()
    };
    let server = TestServer::start_with(move |c| c.blob = blob).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let photo = png(2, 2, 64 * 1024);
    let spec = spec_of(&dm, "p.png", &photo).await;
    let e = alice.upload(&spec, &mut Cursor::new(photo), |_| {}).await.unwrap_err();
    assert_eq!(e.error.code(), Some(ErrorCode::UNAVAILABLE), "{e}");
    assert!(!e.to_string().contains("not-a-real-secret"), "{e}");
    // Chat is not affected.
    alice.send_text(&dm, "t1", "the photo will come later").await.unwrap();
    let page = bob.history(proto::GetHistory { conversation_id: dm, limit: 5, ..Default::default() }).await.unwrap();
    assert_eq!(natter_tests::message_texts(&page.messages), ["the photo will come later"]);
}

#[tokio::test]
async fn a_photos_location_and_camera_are_removed_and_members_get_a_small_preview() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let photo = photo_with_location(1200, 900, 7);
    assert!(contains(&photo, &LATITUDE) && contains(&photo, b"Canon"));
    let media = upload(&alice, &dm, "IMG_0001.jpg", &photo).await.unwrap();
    assert_eq!((media.mime_type.as_str(), media.width, media.height), ("image/jpeg", 1200, 900));

    // What natterd keeps: the same picture, without where or with what.
    let stored = download(&alice, &media.media_id, 0, 0).await.unwrap();
    assert!(!contains(&stored, &LATITUDE) && !contains(&stored, b"Canon"), "location and camera removed");
    assert_eq!(media.size, stored.len() as u64);
    assert_eq!(media.sha256, digest(&mut Cursor::new(&stored)).await.unwrap().0.to_vec(), "describes what is stored");
    let decoded = |b: &[u8]| image::load_from_memory(b).unwrap().to_rgb8();
    assert_eq!(decoded(&stored), decoded(&photo), "the pixels are untouched");
    assert!(!any_file_holds(server.data_dir(), &LATITUDE), "the bytes as uploaded are gone from the data directory");

    // The preview: a JPEG, 320 px on the long side, readable as its media is.
    assert!(!media.preview_media_id.is_empty());
    let small = download(&alice, &media.preview_media_id, 0, 0).await.unwrap();
    let preview = image::load_from_memory_with_format(&small, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((preview.width(), preview.height()), (320, 240));
    assert!(!contains(&small, &LATITUDE));
    assert_eq!(download(&bob, &media.preview_media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND), "not sent yet");
    // A preview is not sent on its own.
    let e = alice.send_media(&dm, "p1", &media.preview_media_id, "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");

    alice.send_media(&dm, "m1", &media.media_id, "from the hill").await.unwrap();
    let got = last_media(&bob, &dm).await;
    assert_eq!(got.preview_media_id, media.preview_media_id);
    assert_eq!(download(&bob, &got.preview_media_id, 0, 0).await.unwrap(), small);
    assert_eq!(download(&bob, &got.media_id, 0, 0).await.unwrap(), stored);
    // Someone who cannot read the message cannot read either.
    assert_eq!(download(&carol, &media.preview_media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    assert_eq!(download(&carol, &media.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    let anonymous = server.client().await;
    assert_eq!(download(&anonymous, &media.preview_media_id, 0, 0).await, Err(ErrorCode::UNAUTHENTICATED));
    // The same photo again: stored once, with the same preview bytes.
    let again = upload(&bob, &dm, "same.jpg", &photo).await.unwrap();
    assert_eq!(again.sha256, media.sha256);
    assert_eq!(download(&bob, &again.preview_media_id, 0, 0).await.unwrap(), small);
}

/// A PNG whose header claims `w`×`h` pixels in 8-bit grey: the first rows
/// (zeros) compress to almost nothing, and a decoder that believed the
/// header would allocate `w`·`h` bytes before finding the data short.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let rows = image::GrayImage::new(w, 16);
    let mut png = Vec::new();
    rows.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn a_decompression_bomb_is_stored_without_a_preview_and_the_limits_come_from_config() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let bomb = png_bomb(30_000, 30_000);
    assert!(bomb.len() < 64 * 1024, "{} bytes claiming 900 megapixels", bomb.len());
    let media = upload(&alice, &dm, "bomb.png", &bomb).await.unwrap();
    assert_eq!((media.width, media.height), (30_000, 30_000));
    assert_eq!(media.preview_media_id, "", "never decoded");
    assert_eq!(download(&alice, &media.media_id, 0, 0).await.unwrap(), bomb, "kept as it came");
    // natterd is fine, and so is chat.
    alice.send_media(&dm, "b1", &media.media_id, "").await.unwrap();
    alice.send_text(&dm, "t1", "still here").await.unwrap();
    let page =
        bob.history(proto::GetHistory { conversation_id: dm.clone(), limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(natter_tests::message_texts(&page.messages), ["still here"]);
    // A photo under the default limit has its preview.
    let photo = photo_with_location(1200, 900, 3);
    assert!(!upload(&alice, &dm, "p.jpg", &photo).await.unwrap().preview_media_id.is_empty());

    // The limit is the operator's, and so is stripping.
    let strict = TestServer::start_with(|c| {
        c.media.max_image_pixels = 1_000_000;
        c.media.strip_metadata = false;
    })
    .await;
    let (alice, _) = strict.new_user("alice@example.org").await;
    strict.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let media = upload(&alice, &dm, "p.jpg", &photo).await.unwrap();
    assert_eq!(media.preview_media_id, "", "1.08 megapixels is over this server's limit");
    assert_eq!(download(&alice, &media.media_id, 0, 0).await.unwrap(), photo, "stored as sent, location and all");
}

/// An MP4: `ftyp`, `mdat` of `data` noise bytes, and a `moov` whose `mvhd`
/// (version `version`) says `duration` units at `timescale`; `moov` first
/// ("fast start") or last.
fn mp4(moov_first: bool, version: u8, timescale: u32, duration: u64, data: usize) -> Vec<u8> {
    let boxed = |kind: &[u8], contents: &[u8]| {
        let mut b = ((contents.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(contents);
        b
    };
    let mut mvhd = vec![version, 0, 0, 0];
    if version == 0 {
        mvhd.extend_from_slice(&[0; 8]);
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        mvhd.extend_from_slice(&(duration as u32).to_be_bytes());
    } else {
        mvhd.extend_from_slice(&[0; 16]);
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        mvhd.extend_from_slice(&duration.to_be_bytes());
    }
    mvhd.resize(mvhd.len() + 80, 0);
    let moov = boxed(b"moov", &boxed(b"mvhd", &mvhd));
    let mdat = boxed(b"mdat", &png(1, 1, data + 16)[16..]);
    let mut file = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
    if moov_first {
        file.extend(moov);
        file.extend(mdat);
    } else {
        file.extend(mdat);
        file.extend(moov);
    }
    file
}

#[tokio::test]
async fn a_videos_length_comes_from_its_movie_header_wherever_that_is() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    // After 2 MiB of data (as a camera writes it), version 0: 93.5 s.
    let late = mp4(false, 0, 600, 56_100, 2 * 1024 * 1024);
    let media = upload(&alice, &dm, "late.mp4", &late).await.unwrap();
    assert_eq!((media.mime_type.as_str(), media.duration_ms), ("video/mp4", 93_500));
    alice.send_media(&dm, "v1", &media.media_id, "").await.unwrap();
    assert_eq!(last_media(&bob, &dm).await.duration_ms, 93_500, "the message carries it");
    // Fast start, version 1 (64-bit): 12 s.
    let early = mp4(true, 1, 90_000, 1_080_000, 64 * 1024);
    assert_eq!(upload(&alice, &dm, "early.mp4", &early).await.unwrap().duration_ms, 12_000);
    // An unknown duration, or no movie header at all: 0, and the file is taken.
    let unknown = mp4(true, 0, 600, u64::from(u32::MAX), 4096);
    assert_eq!(upload(&alice, &dm, "unknown.mp4", &unknown).await.unwrap().duration_ms, 0);
    let mut headless = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
    headless.extend(png(1, 1, 8192).into_iter().skip(16));
    assert_eq!(upload(&alice, &dm, "headless.mp4", &headless).await.unwrap().duration_ms, 0);
    // A photo has none.
    assert_eq!(upload(&alice, &dm, "p.png", &png(4, 4, 4096)).await.unwrap().duration_ms, 0);
}
