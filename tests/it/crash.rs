//! Crash durability: natterd as a child process, killed with SIGKILL right after
//! it acknowledged messages; every acknowledged message is there after restart.

use std::net::UdpSocket;

use natter_client::proto::GetHistory;
use natter_client::Client;
use natter_tests::{ChildServer, PASSWORD};

pub(crate) fn free_udp_port() -> std::net::SocketAddr {
    // Bind, read the port, release: the child binds it right after.
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let mut server = ChildServer::spawn(&crate::natterd(), dir.path(), addr);

    let alice = Client::connect(&server.client_config()).await.unwrap();
    alice.signup("alice@example.org", PASSWORD, "").await.unwrap();
    let (token, _) = alice.login("alice@example.org", PASSWORD, "d").await.unwrap();
    let bob = Client::connect(&server.client_config()).await.unwrap();
    bob.signup("bob@example.org", PASSWORD, "").await.unwrap();
    let conv = alice.open_direct("bob@example.org").await.unwrap();

    // Many sends in flight at once (so they are group-committed), then SIGKILL
    // the moment the last acknowledgement arrives.
    let sends = (0..300).map(|i| {
        let (alice, id) = (&alice, &conv.conversation_id);
        async move { alice.send_text(id, &format!("k{i}"), &format!("durable {i}")).await }
    });
    let acked: Vec<u64> = futures::future::join_all(sends).await.into_iter().map(|r| r.unwrap().seq).collect();
    server.kill9();

    let server = ChildServer::spawn(&crate::natterd(), dir.path(), addr);
    let mut config = server.client_config();
    config.session_token = Some(token);
    let alice = Client::connect(&config).await.expect("the session survived too");
    let mut stored = Vec::new();
    let mut before = 0;
    loop {
        let page = alice
            .history(GetHistory {
                conversation_id: conv.conversation_id.clone(),
                before_seq: before,
                limit: 100,
                after_seq: 0,
            })
            .await
            .unwrap();
        stored.extend(page.messages.iter().map(|m| m.seq));
        if !page.has_more {
            break;
        }
        before = page.messages[0].seq;
    }
    stored.sort_unstable();
    let mut acked_sorted = acked.clone();
    acked_sorted.sort_unstable();
    assert_eq!(stored, acked_sorted, "every acknowledged message, nothing else");
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_with_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::spawn(&crate::natterd(), dir.path(), free_udp_port());
    let c = Client::connect(&server.client_config()).await.unwrap();
    c.signup("t@example.org", PASSWORD, "").await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // The open connection was told why it closed.
    assert_eq!(c.closed().await.code(), Some(natter_proto::ErrorCode::SHUTTING_DOWN));
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tls/key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn one_natterd_per_data_directory_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = ChildServer::spawn(&crate::natterd(), dir.path(), free_udp_port());
    let mut config = natter_tests::test_config(dir.path());
    config.listen = free_udp_port();
    let refused = natter_server::start(config.clone()).await.err().expect("a second natterd is refused");
    assert!(matches!(refused, natter_server::StartError::DataDirInUse(_)), "{refused:?}");
    assert!(refused.to_string().contains("in use by another natterd"), "{refused}");
    // The lock dies with its holder, however it dies.
    running.kill9();
    let server = natter_tests::start_when_free(config).await.expect("the data directory is free again");
    server.shutdown().await;
}
