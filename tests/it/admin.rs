//! natter-admin against a live data directory.

use natter_tests::TestServer;

#[tokio::test]
async fn stats_counts_events_and_users_while_natterd_runs() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    for i in 0..5 {
        alice.send_text(&conv.conversation_id, &format!("{i}"), "hi").await.unwrap();
    }
    let s = natter_admin::stats(server.data_dir()).await.unwrap();
    assert_eq!(s.users, 2);
    assert_eq!(s.conversations, 1);
    assert_eq!(s.messages, 5);
    // Per user: email claim, registration, one session; then the conversation and 5 messages.
    assert_eq!(s.events, 2 * 3 + 1 + 5);
    assert_eq!(s.head, s.events);
    let table = natter_admin::render_stats(&s, false);
    assert!(table.contains("users          2"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&natter_admin::render_stats(&s, true)).unwrap();
    assert_eq!(json["events"], 12);

    let empty = tempfile::tempdir().unwrap();
    let e = natter_admin::stats(empty.path()).await.unwrap_err();
    assert!(format!("{e:#}").contains("natterd data directory"), "{e:#}");
}

/// A small deployment with real traffic: two people, a group, receipts.
async fn chat_on(server: &TestServer) -> (String, String) {
    let (alice, alice_token) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    server.new_user("carol@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    for i in 0..30 {
        let who = if i % 3 == 0 { &bob } else { &alice };
        who.send_text(&dm, &format!("d{i}"), &format!("dm {i}")).await.unwrap();
    }
    let group = alice.create_group("trip", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    alice.send_text(&group, "g1", "who brings the tent?").await.unwrap();
    alice.rename_group(&group, "trip 2027").await.unwrap();
    bob.mark_read(&dm, 20).await.unwrap();
    bob.set_privacy(true).await.unwrap();
    (dm, alice_token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_log_moves_a_deployment_to_postgres_with_every_answer_the_same() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let mut embedded = TestServer::start().await;
    let (dm, alice_token) = chat_on(&embedded).await;
    embedded.stop().await;

    let mut progress = Vec::new();
    let to = natter_admin::Location::parse(db.url());
    let report = natter_admin::copy_log(embedded.data_dir(), &to, |at, of| progress.push((at, of))).await.unwrap();
    let stats = natter_admin::stats(embedded.data_dir()).await.unwrap();
    assert_eq!((report.copied, report.head), (stats.events, stats.head));
    assert_eq!(progress.last(), Some(&(stats.head, stats.head)));
    assert!(report.verified_answers > 30, "{report:?}");

    // natterd on PostgreSQL serves the same deployment: sessions, history, list.
    let server = TestServer::start_postgres(&db).await;
    let alice = server.resume(&alice_token).await;
    let page = alice
        .history(natter_client::proto::GetHistory {
            conversation_id: dm.clone(),
            before_seq: 0,
            limit: 100,
            after_seq: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 30);
    let list = alice.conversations(10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].name, "trip 2027");
    // And it goes on from there.
    alice.send_text(&dm, "after", "on postgres now").await.unwrap();

    // A rebuild is refused while a node serves the database, and works once it stopped.
    let e = natter_admin::rebuild(&to).await.unwrap_err();
    assert!(format!("{e:#}").contains("1 natterd node(s) are serving this database"), "{e:#}");
    drop(alice);
    let mut server = server;
    server.stop().await;
    let answers = natter_admin::rebuild(&to).await.unwrap();
    assert!(answers > 30, "{answers}");

    // The binary says what it did; copying into a database holding another log is refused.
    let other = TestServer::start().await;
    other.new_user("zed@example.org").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
        .args(["copy-log", "--from"])
        .arg(other.data_dir())
        .args(["--to", db.url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different log"), "{out:?}");
}

#[tokio::test]
async fn rebuild_of_a_data_directory_keeps_every_answer() {
    let mut server = TestServer::start().await;
    chat_on(&server).await;
    let at = natter_admin::Location::parse(server.data_dir().to_str().unwrap());
    let e = natter_admin::rebuild(&at).await.unwrap_err();
    assert!(format!("{e:#}").contains("natterd is running on"), "{e:#}");
    server.stop().await;
    let answers = natter_admin::rebuild(&at).await.unwrap();
    assert!(answers > 30, "{answers}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
        .args(["rebuild", "--store"])
        .arg(server.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("answers identical before and after"), "{out:?}");
    let empty = tempfile::tempdir().unwrap();
    let e = natter_admin::rebuild(&natter_admin::Location::parse(empty.path().to_str().unwrap())).await.unwrap_err();
    assert!(format!("{e:#}").contains("no natter database"), "{e:#}");
}
