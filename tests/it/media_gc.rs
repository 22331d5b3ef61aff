//! The media collector: uploads no message sent are discarded after
//! `media.unsent_ttl_secs`, bytes no upload refers to are deleted, and what
//! people sent stays. Run through `natter-admin media gc` as at a day later
//! (the collector natterd runs on its own interval is the same code).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_client::Client;
use natter_proto::ErrorCode;
use natter_server::blob::BlobStore;
use natter_server::domain::Millis;
use natter_tests::TestServer;

use crate::media::{download, photo_with_location, upload};

fn in_a_while(d: Duration) -> Millis {
    Millis((SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + d).as_millis() as u64)
}

/// The stored blobs, by hex id.
async fn blobs(server: &TestServer) -> Vec<String> {
    let store = natter_server::blob::open(&server.config().blob, server.data_dir()).unwrap();
    all_blobs(store.as_ref()).await
}

async fn all_blobs(store: &dyn BlobStore) -> Vec<String> {
    store.list(None, 10_000).await.unwrap().into_iter().map(|b| b.blob.to_hex()).collect()
}

fn hex_of(sha256: &[u8]) -> String {
    hex::encode(sha256)
}

struct Uploaded {
    sent: natter_client::proto::Media,
    unsent: natter_client::proto::Media,
    again: natter_client::proto::Media,
    unsent_photo: Vec<u8>,
}

/// Alice sends one photo, uploads another she never sends, and uploads the
/// sent one's bytes again without sending it.
async fn uploads(alice: &Client, dm: &str) -> Uploaded {
    let sent_photo = photo_with_location(900, 600, 1);
    let unsent_photo = photo_with_location(800, 600, 2);
    let sent = upload(alice, dm, "sent.jpg", &sent_photo).await.unwrap();
    alice.send_media(dm, "m1", &sent.media_id, "").await.unwrap();
    let unsent = upload(alice, dm, "unsent.jpg", &unsent_photo).await.unwrap();
    let again = upload(alice, dm, "again.jpg", &sent_photo).await.unwrap();
    assert_eq!(again.sha256, sent.sha256);
    Uploaded { sent, unsent, again, unsent_photo }
}

/// The blobs of `uploads`: the sent photo's (with its preview), the unsent's.
async fn blob_ids(alice: &Client, u: &Uploaded) -> (Vec<String>, Vec<String>) {
    let digest = |b: Vec<u8>| async move {
        hex_of(&natter_client::transfer::digest(&mut std::io::Cursor::new(b)).await.unwrap().0)
    };
    let sent_preview = digest(download(alice, &u.sent.preview_media_id, 0, 0).await.unwrap()).await;
    let unsent_preview = digest(download(alice, &u.unsent.preview_media_id, 0, 0).await.unwrap()).await;
    let mut kept = vec![hex_of(&u.sent.sha256), sent_preview];
    let mut gone = vec![hex_of(&u.unsent.sha256), unsent_preview];
    kept.sort();
    gone.sort();
    (kept, gone)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// natter-admin's collector as at `now + ahead`.
async fn gc(server: &TestServer, dry_run: bool, ahead: Duration) -> natter_server::media::gc::Report {
    natter_admin::media::gc(server.config(), dry_run, in_a_while(ahead)).await.unwrap()
}

fn discarded_ids(report: &natter_server::media::gc::Report) -> Vec<String> {
    sorted(report.discarded.iter().map(|m| m.media_id.to_string()).collect())
}

#[tokio::test]
async fn a_day_later_unsent_uploads_and_bytes_nothing_refers_to_are_gone_and_sent_media_stays() {
    let mut server = TestServer::start().await;
    let (alice, alice_token) = server.new_user("alice@example.org").await;
    let (_bob, bob_token) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let u = uploads(&alice, &dm).await;
    let (kept, gone) = blob_ids(&alice, &u).await;
    let everything = sorted(kept.iter().chain(&gone).cloned().collect());
    assert_eq!(blobs(&server).await, everything, "each picture and preview once; the bytes as uploaded went at once");

    // Now: everything is young, nothing goes. A dry run reads beside natterd;
    // a real run on the embedded store waits for natterd to stop.
    let report = gc(&server, true, Duration::ZERO).await;
    assert!(report.discarded.is_empty() && report.collected.is_empty(), "{report:?}");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
            .args(["media", "gc", "--data-dir"])
            .arg(server.data_dir())
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&["--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "would discard 0 uploads; would delete 0 blobs, 0 bytes\n");
    let out = cli(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("natterd is running on"), "{out:?}");

    // A day and an hour later.
    let day = Duration::from_secs(25 * 3600);
    let unsent = sorted(vec![
        u.unsent.media_id.clone(),
        u.unsent.preview_media_id.clone(),
        u.again.media_id.clone(),
        u.again.preview_media_id.clone(),
    ]);
    let preview = gc(&server, true, day).await;
    assert_eq!(discarded_ids(&preview), unsent);
    assert_eq!(sorted(preview.collected.iter().map(|b| b.blob.to_hex()).collect()), gone);
    server.stop().await;
    let report = gc(&server, false, day).await;
    assert_eq!(discarded_ids(&report), unsent);
    assert_eq!(sorted(report.collected.iter().map(|b| b.blob.to_hex()).collect()), gone);
    assert_eq!(report.freed_bytes(), preview.freed_bytes());
    assert_eq!(blobs(&server).await, kept, "the sent photo and its preview stay");
    // Clean: another pass finds nothing, even later still.
    let again = gc(&server, true, day * 2).await;
    assert!(again.discarded.is_empty() && again.collected.is_empty(), "{again:?}");

    server.restart().await;
    let alice = server.resume(&alice_token).await;
    let bob = server.resume(&bob_token).await;
    assert!(download(&bob, &u.sent.media_id, 0, 0).await.is_ok());
    assert!(download(&bob, &u.sent.preview_media_id, 0, 0).await.is_ok());
    assert_eq!(download(&alice, &u.unsent.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    assert_eq!(download(&alice, &u.again.preview_media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    let e = alice.send_media(&dm, "m2", &u.unsent.media_id, "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND), "{e}");
    // Collected bytes can be uploaded again and sent.
    let back = upload(&alice, &dm, "unsent.jpg", &u.unsent_photo).await.unwrap();
    assert_eq!(back.sha256, u.unsent.sha256);
    alice.send_media(&dm, "m3", &back.media_id, "after all").await.unwrap();
    assert_eq!(download(&bob, &back.media_id, 0, 0).await.unwrap().len() as u64, back.size);
    assert_eq!(blobs(&server).await, sorted(kept.iter().chain(&gone).cloned().collect()));
}

#[tokio::test]
async fn on_postgresql_the_collector_runs_beside_serving_nodes() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let server = TestServer::start_postgres(&db).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let u = uploads(&alice, &dm).await;
    let (kept, gone) = blob_ids(&alice, &u).await;
    let day = Duration::from_secs(25 * 3600);
    // While natterd serves: nothing to stop.
    let report = gc(&server, false, day).await;
    assert_eq!(report.discarded.len(), 4, "{report:?}");
    assert_eq!(sorted(report.collected.iter().map(|b| b.blob.to_hex()).collect()), gone);
    assert_eq!(blobs(&server).await, kept);
    // The serving node sees it at once.
    assert_eq!(download(&alice, &u.unsent.media_id, 0, 0).await, Err(ErrorCode::NOT_FOUND));
    assert!(download(&bob, &u.sent.media_id, 0, 0).await.is_ok());
    let again = gc(&server, true, day * 2).await;
    assert!(again.discarded.is_empty() && again.collected.is_empty(), "{again:?}");
}
