//! `natter-admin backup` while natterd serves under load, and `restore`
//! into a new data directory: the same answers as the source at the backup's
//! position, the media with it, and natterd serving it with the same
//! certificate; damaged backups and used directories refused.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use natter_server::store::sqlite::{SqliteConfig, SqliteStore};
use natter_server::store::Store;
use natter_tests::{TestServer, PASSWORD};

/// The source's read models as of `position`: its log up to there, replayed
/// into a fresh store.
async fn replayed_up_to(source: &Path, position: u64, into: &Path) -> natter_admin::Snapshot {
    let src = SqliteStore::open_read_only(&SqliteConfig::in_dir(source).path).unwrap();
    let fresh = SqliteStore::open(&SqliteConfig::in_dir(into)).unwrap();
    let mut after = 0;
    loop {
        let page: Vec<_> =
            src.read_all(after, 1000).await.unwrap().into_iter().filter(|e| e.position <= position).collect();
        let Some(last) = page.last() else { break };
        after = last.position;
        fresh.import(page).await.unwrap();
    }
    let snapshot = natter_admin::snapshot(&fresh).await.unwrap();
    fresh.shutdown().await;
    src.shutdown().await;
    snapshot
}

fn without_last_seen(mut s: natter_admin::Snapshot) -> natter_admin::Snapshot {
    // Last-seen times are kept beside the log, not in it: no replay has them
    // (the restore's own check, against the backup's digest, covers them).
    s.answers.retain(|question, _| question != "last_seen" && !question.starts_with("presence "));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_the_sources_answers_at_its_position() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let file = natter_tests::pdf_with("BACKUP-MARKER");
    let media = natter_tests::upload_bytes(&alice, &dm, "minutes.pdf", &file).await;
    alice.send_media(&dm, "file-1", &media.media_id, "the minutes").await.unwrap();

    // Both write as fast as they can while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [alice, bob]
        .into_iter()
        .enumerate()
        .map(|(who, client)| {
            let (stop, dm) = (stop.clone(), dm.clone());
            tokio::spawn(async move {
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    client.send_text(&dm, &format!("{who}-{sent}"), &format!("message {sent}")).await.unwrap();
                    sent += 1;
                }
                (client, sent)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backups = tempfile::tempdir().unwrap();
    let to = backups.path().join("nightly");
    let report = natter_admin::backup::backup(server.config(), &to).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for w in writers {
        sent += w.await.unwrap().1;
    }
    let live = SqliteStore::open_read_only(&SqliteConfig::in_dir(server.data_dir()).path).unwrap();
    let head = live.head().await.unwrap();
    live.shutdown().await;
    assert!(
        report.position > 10 && report.position < head,
        "taken mid-load: {} of {head} ({sent} sent)",
        report.position
    );
    assert_eq!((report.blobs, report.blob_bytes), (1, file.len() as u64));

    // Restored: every answer the backup recorded, and the source's at that position.
    let restored = backups.path().join("restored");
    let again =
        natter_admin::backup::restore(&to, &dir_target(&restored), &Default::default(), &restored).await.unwrap();
    assert_eq!(again, report);
    let restored_store = SqliteStore::open_read_only(&SqliteConfig::in_dir(&restored).path).unwrap();
    let got = without_last_seen(natter_admin::snapshot(&restored_store).await.unwrap());
    restored_store.shutdown().await;
    let want =
        without_last_seen(replayed_up_to(server.data_dir(), report.position, &backups.path().join("replay")).await);
    assert_eq!(got.first_difference(&want), None, "the source's answers at the backup's position");
    assert!(
        !natter_tests::files_containing(&restored.join("blobs"), b"BACKUP-MARKER").is_empty(),
        "the media came along"
    );

    // natterd serves the restored directory with the same certificate; the
    // file downloads and history ends where the backup did.
    let mut config = server.config().clone();
    config.data_dir = restored.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let copy = natter_tests::start_when_free(config).await.expect("natterd starts on the restored directory");
    assert_eq!(copy.fingerprint(), server.fingerprint(), "the certificate came along");
    let mut client_config = server.client_config();
    client_config.server = copy.local_addr();
    let bob = natter_client::Client::connect(&client_config).await.unwrap();
    bob.login("bob@example.org", PASSWORD, "restored").await.unwrap();
    let mut body = Vec::new();
    bob.download(&media.media_id, 0, 0, &mut body, |_| {}).await.unwrap();
    assert_eq!(body, file);
    bob.close().await;
    copy.shutdown().await;
}

#[tokio::test]
async fn restore_refuses_damaged_backups_and_used_directories() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&dm, "m1", "hello").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("b");
    natter_admin::backup::backup(server.config(), &to).await.unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&to), 0o700, "it holds the server key");
        for file in ["natter.db", "auth.db", "secret.key", "tls/key.pem"] {
            assert_eq!(mode(&to.join(file)), 0o600, "{file}");
        }
    }

    // Into a directory that holds something: refused, for backups and restores.
    let e = natter_admin::backup::backup(server.config(), &to).await.unwrap_err();
    assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep.txt"), b"mine").unwrap();
    let e = natter_admin::backup::restore(&to, &dir_target(&used), &Default::default(), &used).await.unwrap_err();
    assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1, "nothing written there");

    // A byte changed in the log's copy, the server key gone, the manifest
    // gone: each refused by name, before anything is written.
    let target = dir.path().join("target");
    let damaged = |name: &str| {
        let copy = dir.path().join(format!("copy-{name}"));
        copy_tree(&to, &copy);
        copy
    };
    let flipped = damaged("flipped");
    let db = flipped.join("natter.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&db, bytes).unwrap();
    let e =
        natter_admin::backup::restore(&flipped, &dir_target(&target), &Default::default(), &target).await.unwrap_err();
    assert!(format!("{e:#}").contains("damaged backup: natter.db"), "{e:#}");
    assert!(!target.exists(), "nothing restored from a damaged backup");
    let keyless = damaged("keyless");
    std::fs::remove_file(keyless.join("secret.key")).unwrap();
    let e =
        natter_admin::backup::restore(&keyless, &dir_target(&target), &Default::default(), &target).await.unwrap_err();
    assert!(format!("{e:#}").contains("damaged backup: secret.key is missing"), "{e:#}");
    let unfinished = damaged("unfinished");
    std::fs::remove_file(unfinished.join("manifest.json")).unwrap();
    let e = natter_admin::backup::restore(&unfinished, &dir_target(&target), &Default::default(), &target)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("no manifest.json"), "{e:#}");
    assert!(!target.exists());

    // The intact one restores.
    natter_admin::backup::restore(&to, &dir_target(&target), &Default::default(), &target).await.unwrap();
}

fn dir_target(dir: &Path) -> natter_admin::backup::Target {
    natter_admin::backup::Target::DataDir(dir.to_owned())
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_under_load_restores_into_an_empty_database() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let server = TestServer::start_postgres(&db).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let file = natter_tests::pdf_with("PG-BACKUP-MARKER");
    let media = natter_tests::upload_bytes(&alice, &dm, "minutes.pdf", &file).await;
    alice.send_media(&dm, "file-1", &media.media_id, "").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dm) = (stop.clone(), dm.clone());
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                alice.send_text(&dm, &format!("m{sent}"), "under load").await.unwrap();
                sent += 1;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("b");
    let report = natter_admin::backup::backup(server.config(), &to).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(report.blobs, 1);

    // Not over a database in use, not into a data directory.
    let e = natter_admin::backup::restore(
        &to,
        &natter_admin::backup::Target::Postgres(db.url().into()),
        &Default::default(),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("holds tables"), "{e:#}");
    let e = natter_admin::backup::restore(
        &to,
        &dir_target(&dir.path().join("d")),
        &Default::default(),
        &dir.path().join("d"),
    )
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("postgres deployment"), "{e:#}");

    let Some(fresh) = natter_tests::PgDatabase::create().await else { return };
    let media_dir = dir.path().join("media");
    let target = natter_admin::backup::Target::Postgres(fresh.url().into());
    let again = natter_admin::backup::restore(&to, &target, &Default::default(), &media_dir).await.unwrap();
    assert_eq!((again.position, again.events), (report.position, report.events));
    assert!(again.answers > 0);
    assert!(!natter_tests::files_containing(&media_dir, b"PG-BACKUP-MARKER").is_empty(), "the media came along");

    // The restored database answers as the source did at the backup's position.
    let source = natter_admin::Location::Postgres(db.url().into()).open().await.unwrap();
    let replay = dir.path().join("replay");
    let fresh_store = SqliteStore::open(&SqliteConfig::in_dir(&{
        std::fs::create_dir_all(&replay).unwrap();
        replay.clone()
    }))
    .unwrap();
    let mut after = 0;
    loop {
        let page: Vec<_> =
            source.read_all(after, 1000).await.unwrap().into_iter().filter(|e| e.position <= report.position).collect();
        let Some(last) = page.last() else { break };
        after = last.position;
        fresh_store.import(page).await.unwrap();
    }
    let want = without_last_seen(natter_admin::snapshot(&fresh_store).await.unwrap());
    let restored = natter_admin::Location::Postgres(fresh.url().into()).open().await.unwrap();
    let got = without_last_seen(natter_admin::snapshot(restored.as_ref()).await.unwrap());
    assert_eq!(got.first_difference(&want), None);
    for s in [source, restored] {
        s.shutdown().await;
    }
    fresh_store.shutdown().await;
}
