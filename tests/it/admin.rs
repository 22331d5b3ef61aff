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
