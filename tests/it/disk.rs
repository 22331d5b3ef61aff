//! natterd on a small filesystem that fills up: sends get a typed, retryable
//! answer, reads go on, nothing acknowledged is lost or damaged, and writes
//! work again by themselves once there is room.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_client::ClientError;
use natter_proto::ErrorCode;
use natter_tests::TestServer;

/// A size-limited tmpfs mounted for the test, unmounted when dropped. The
/// tests run as root on CI's machines: a failure to mount fails the test.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs for the disk-full test (it needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
    }
}

/// The seqs of a conversation's messages (fewer than a page here).
async fn seqs_in(client: &natter_client::Client, conversation: &str) -> Vec<u64> {
    let req = natter_client::proto::GetHistory {
        conversation_id: conversation.into(),
        before_seq: 0,
        after_seq: 1,
        limit: 500,
    };
    client.history(req).await.unwrap().messages.iter().map(|m| m.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_typed_keeps_reads_and_recovers_by_itself() {
    let disk = SmallDisk::mount("24m");
    let data = disk.path.join("natter-data");
    let mut server = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.search.backend = natter_server::search::SearchBackend::Off;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let text = "x".repeat(3000);
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(alice.send_text(&dm, &format!("before-{i}"), &text).await.unwrap().seq);
    }

    fill(&disk.path.join("filler"));
    // Sends are refused typed and retryable (the WAL's room may take a few first).
    let mut refused = None;
    for i in 0..5000 {
        match alice.send_text(&dm, &format!("full-{i}"), &text).await {
            Ok(sent) => acked.push(sent.seq),
            Err(ClientError::Server { code, message, retry_after_ms }) => {
                refused = Some((code, message, retry_after_ms, format!("full-{i}")));
                break;
            }
            Err(e) => panic!("a full disk is no connection failure: {e}"),
        }
    }
    let (code, message, retry_after_ms, retry_id) = refused.expect("the disk filled up");
    assert_eq!(code, ErrorCode::UNAVAILABLE, "{message}");
    assert!(message.contains("storage space") && retry_after_ms >= 1000, "{message} {retry_after_ms}");
    // Reads go on: everything acknowledged is there.
    assert_eq!(seqs_in(&bob, &dm).await, acked, "every acknowledged message, nothing else");

    // Room again: the refused send, retried with its id, goes through by
    // itself (no restart), once.
    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let sent = loop {
        match alice.send_text(&dm, &retry_id, &text).await {
            Ok(sent) => break sent,
            Err(e) if tokio::time::Instant::now() < deadline && e.code() == Some(ErrorCode::UNAVAILABLE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes resume once there is room: {e}"),
        }
    };
    assert!(!sent.duplicate);
    acked.push(sent.seq);

    // Nothing damaged: after a restart the log and history are whole.
    drop((alice, bob));
    server.restart().await;
    let bob = server.resume(&bob_token).await;
    assert_eq!(seqs_in(&bob, &dm).await, acked, "the same after a restart");
    let conn =
        rusqlite::Connection::open_with_flags(data.join("natter.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    bob.close().await;
    server.stop().await;
}
