//! Deleting an account (spec section 5.31): what the user wrote and uploaded
//! is in no file natterd keeps afterwards (database and WAL, search index,
//! blobs, a backup taken after), others keep their history with its seqs,
//! and `natter-admin rebuild` reproduces the same answers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use natter_client::proto::{self as wire, request::Body};
use natter_client::{Client, FeedItem};
use natter_proto::ErrorCode;
use natter_tests::{files_containing, PgDatabase, TestServer, PASSWORD};

const OPS: &str = "ops@example.org";
const MARKER: &str = "zebrafinch4471";
const WAIT: Duration = Duration::from_secs(20);

fn history(conv: &str) -> wire::GetHistory {
    wire::GetHistory { conversation_id: conv.into(), limit: 100, ..Default::default() }
}

fn search_for(text: &str) -> wire::Search {
    wire::Search { query: text.into(), limit: 50, ..Default::default() }
}

fn hit_count(r: &wire::SearchResults) -> usize {
    r.groups.iter().map(|g| g.hits.len()).sum()
}

/// Searches until `count` hits come back (the index commits in the background).
async fn search_until(client: &Client, text: &str, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.search(search_for(text)).await {
            Ok(r) if hit_count(&r) == count => return,
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::UNAVAILABLE) => {}
            Err(e) => panic!("search: {e}"),
        }
        assert!(Instant::now() < deadline, "{count} hits for {text:?} never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_erased(m: &wire::Message) -> bool {
    matches!(m.content.as_ref().and_then(|c| c.body.as_ref()), Some(wire::content::Body::Erased(_)))
}

/// What Bob's history of each conversation answers (seq, sender, erased?, text).
async fn answers(bob: &Client, convs: &[String]) -> Vec<(u64, String, bool, String)> {
    let mut out = Vec::new();
    for conv in convs {
        for m in bob.history(history(conv)).await.unwrap().messages {
            let text = natter_tests::message_texts(std::slice::from_ref(&m)).join("");
            out.push((m.seq, m.sender_name.clone(), is_erased(&m), text));
        }
    }
    out
}

/// Alice writes and uploads things with the marker in a DM with Bob and a
/// group with Bob and Carol; Bob writes too.
async fn alice_writes(server: &TestServer, alice: &Client, bob: &Client) -> (Vec<String>, String) {
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("Birders", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    for i in 0..3 {
        alice.send_text(&dm, &format!("a{i}"), &format!("{MARKER} sighting {i}")).await.unwrap();
        bob.send_text(&dm, &format!("b{i}"), &format!("nice one {i}")).await.unwrap();
    }
    alice.send_text(&group, "g1", &format!("group {MARKER}")).await.unwrap();
    let file = natter_tests::pdf_with(MARKER);
    let media = natter_tests::upload_bytes(alice, &dm, &format!("{MARKER}.pdf"), &file).await;
    alice.send_media(&dm, "file-1", &media.media_id, &format!("notes {MARKER}")).await.unwrap();
    bob.send_text(&group, "g2", "see you at the lake").await.unwrap();
    search_until(bob, MARKER, 5).await;
    let stored = files_containing(server.data_dir(), MARKER.as_bytes());
    let under = |dir: &str| stored.iter().any(|p| p.starts_with(server.data_dir().join(dir)));
    assert!(under("search") && under("blobs"), "the marker is in the index and the blobs before: {stored:?}");
    (vec![dm, group], media.media_id)
}

#[tokio::test]
async fn a_deleted_account_leaves_nothing_in_natterds_files_and_others_keep_their_history() {
    let mut server = TestServer::start_with(|c| c.admin.bootstrap = vec![OPS.into()]).await;
    let (ops, _) = server.new_user(OPS).await;
    let (alice, alice_token) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (_carol, _) = server.new_user("carol@example.org").await;
    let (convs, media_id) = alice_writes(&server, &alice, &bob).await;
    let before = answers(&bob, &convs).await;
    let (mut feed, _) = bob.sync(None).await.unwrap();
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    let alice_id = ops.admin_user("alice@example.org").await.unwrap().user.unwrap().user_id;

    let (messages, uploads) = ops.admin_delete_user("alice@example.org").await.unwrap();
    assert_eq!((messages, uploads), (5, 1));

    // Bob's client hears of it, and his history keeps every seq: Alice's
    // messages erased, his own as they were.
    let told = natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::AccountErased { .. })).await;
    assert!(matches!(told.last(), Some(FeedItem::AccountErased { user_id, .. }) if *user_id == alice_id), "{told:?}");
    let after = answers(&bob, &convs).await;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.0, b.0, "seqs stay");
        if b.1 == "bob@example.org" || b.3.contains("nice one") || b.3.contains("lake") {
            assert_eq!(a, b, "bob's messages stay");
        } else {
            assert!(a.2, "alice's message #{} is erased: {a:?}", a.0);
            assert_eq!(a.1, "Deleted account");
        }
    }
    // She left the group she owned; it has an owner still.
    let g = bob.get_conversation(&convs[1]).await.unwrap();
    assert!(!g.members.iter().any(|m| m.user_id == alice_id), "{g:?}");
    assert!(g.members.iter().any(|m| m.role == wire::Role::Owner as i32), "{g:?}");
    // Nothing of hers answers any more.
    search_until(&bob, MARKER, 0).await;
    let e = bob.download(&media_id, 0, 0, &mut Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
    let login = server.client().await;
    let e = login.login("alice@example.org", PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS));
    let mut config = server.client_config();
    config.session_token = Some(alice_token);
    assert!(Client::connect(&config).await.is_err(), "her sessions are revoked");
    assert_eq!(ops.admin_user("alice@example.org").await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
    let audit = ops.admin_audit(0, None, 0, 100).await.unwrap();
    let entry = audit.entries.iter().find(|e| e.action == "delete").expect("audited");
    assert_eq!(entry.detail, "5 messages, 1 uploads");

    // No file natterd keeps holds the marker: while it runs (the WAL was
    // checkpointed), in a backup taken after, and once it stopped.
    assert_eq!(files_containing(server.data_dir(), MARKER.as_bytes()), Vec::<PathBuf>::new());
    let backups = tempfile::tempdir().unwrap();
    natter_admin::backup::backup(server.config(), &backups.path().join("after")).await.unwrap();
    assert_eq!(files_containing(backups.path(), MARKER.as_bytes()), Vec::<PathBuf>::new());
    // The address is free again.
    let again = server.client().await;
    again.signup("alice@example.org", PASSWORD, "Alice Again").await.unwrap();

    // The rewritten log rebuilds to the same answers.
    drop((alice, bob, ops, feed));
    server.stop().await;
    assert_eq!(files_containing(server.data_dir(), MARKER.as_bytes()), Vec::<PathBuf>::new());
    rebuild_checks(server.data_dir());
    server.restart().await;
    let bob = server.new_device("bob@example.org", "tablet").await.0;
    assert_eq!(answers(&bob, &convs).await, after);
}

#[tokio::test]
async fn deleting_ones_own_account_needs_its_password_and_second_factor() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&dm, "a1", "hello bob").await.unwrap();
    // Signed out: refused.
    let anonymous = server.client().await;
    let body = Body::DeleteAccount(wire::DeleteAccount { password: PASSWORD.into(), code: String::new() });
    assert_eq!(anonymous.request(body).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    // Another account's password does nothing to anyone.
    let e = bob.delete_account("not bob's password", "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS));
    // With TOTP on, the code is needed too.
    let setup = alice.enable_totp().await.unwrap();
    let secret = natter_tests::totp_secret(&setup.secret_base32);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let codes = alice.confirm_totp(&natter_server::auth::totp::code_at(&secret, now)).await.unwrap();
    let e = alice.delete_account(PASSWORD, "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::MFA_REQUIRED));
    let recovery = codes[0].clone();
    let (messages, uploads) = alice.delete_account(PASSWORD, &recovery).await.unwrap();
    assert_eq!((messages, uploads), (1, 0));
    // This connection answered and is signed out; Bob sees the tombstone.
    let e = alice.sessions().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHENTICATED));
    let page = bob.history(history(&dm)).await.unwrap();
    assert!(page.messages.iter().all(is_erased), "{page:?}");
    // Bob still exists and chats.
    bob.sessions().await.unwrap();
    // A non-admin cannot delete anyone, nor an admin themself.
    let e = bob.admin_delete_user("alice@example.org").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FORBIDDEN));
}

#[tokio::test]
async fn an_admin_cannot_delete_their_own_account_and_deleting_twice_is_not_found() {
    let server = TestServer::start_with(|c| c.admin.bootstrap = vec![OPS.into()]).await;
    let (ops, _) = server.new_user(OPS).await;
    let (_alice, _) = server.new_user("alice@example.org").await;
    let e = ops.admin_delete_user(OPS).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT));
    let e = ops.admin_delete_user("nobody@example.org").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
    let alice_id = ops.admin_user("alice@example.org").await.unwrap().user.unwrap().user_id;
    ops.admin_delete_user("alice@example.org").await.unwrap();
    // By id, the tombstone is no account to delete again.
    let e = ops.admin_delete_user(&alice_id).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
}

#[tokio::test]
async fn erasure_on_postgres_rewrites_the_log_and_is_seen_from_another_node() {
    let Some(db) = PgDatabase::create().await else { return };
    let node_a = TestServer::start_postgres_with(&db, |c| c.admin.bootstrap = vec![OPS.into()]).await;
    let node_b = TestServer::start_postgres_with(&db, |c| c.admin.bootstrap = vec![OPS.into()]).await;
    let (ops, _) = node_a.new_user(OPS).await;
    let (alice, _) = node_b.new_user("alice@example.org").await;
    let (bob, _) = node_b.new_user("bob@example.org").await;
    let (_carol, _) = node_b.new_user("carol@example.org").await;
    let (convs, _) = alice_writes(&node_b, &alice, &bob).await;
    let (mut feed, _) = bob.sync(None).await.unwrap();
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    // Deleted through node A; Bob and Alice are on node B.
    assert_eq!(ops.admin_delete_user("alice@example.org").await.unwrap(), (5, 1));
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::AccountErased { .. })).await;
    let after = answers(&bob, &convs).await;
    assert!(after.iter().filter(|a| a.2).all(|a| a.1 == "Deleted account" && a.3.is_empty()));
    assert_eq!(after.iter().filter(|a| a.2).count(), 5);
    search_until(&bob, MARKER, 0).await;
    // The log itself no longer holds the marker.
    let holding = format!("position(convert_to('{MARKER}', 'UTF8') in payload) > 0");
    assert_eq!(log_rows(&db, &holding).await, 0);
    assert_eq!(log_rows(&db, "stream LIKE 'email:alice@%'").await, 0);
}

#[tokio::test]
async fn an_admin_deletes_a_group_its_members_go_and_its_messages_are_erased() {
    let server = TestServer::start_with(|c| c.admin.bootstrap = vec![OPS.into()]).await;
    let (ops, _) = server.new_user(OPS).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let group = alice.create_group("Doomed", &["bob@example.org"]).await.unwrap().conversation_id;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&group, "g1", &format!("{MARKER} in the group")).await.unwrap();
    let file = natter_tests::pdf_with(MARKER);
    let media = natter_tests::upload_bytes(&alice, &group, "plan.pdf", &file).await;
    alice.send_media(&group, "g2", &media.media_id, "the plan").await.unwrap();
    alice.send_text(&dm, "d1", "the direct one stays").await.unwrap();
    search_until(&bob, MARKER, 1).await;
    let (mut feed, _) = bob.sync(None).await.unwrap();
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;

    // Not for a direct conversation, nor for anyone but an admin.
    assert_eq!(ops.admin_delete_group(&dm).await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(alice.admin_delete_group(&group).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    assert!(ops.admin_delete_group(&group).await.unwrap());
    let told = natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::Group { .. })).await;
    assert!(
        matches!(told.last(), Some(FeedItem::Group { event, .. })
            if matches!(event.change, Some(wire::group_event::Change::Deleted(_)))),
        "{told:?}"
    );
    let e = alice.send_text(&group, "g3", "anyone?").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_A_MEMBER));
    let page = bob.history(history(&group)).await.unwrap();
    let sent: Vec<_> = page.messages.iter().filter(|m| m.seq >= 2).collect();
    assert!(!sent.is_empty() && sent.iter().all(|m| is_erased(m)), "{page:?}");
    assert_eq!(
        natter_tests::message_texts(&bob.history(history(&dm)).await.unwrap().messages),
        ["the direct one stays"]
    );
    search_until(&bob, MARKER, 0).await;
    let e = bob.download(&media.media_id, 0, 0, &mut Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(files_containing(server.data_dir(), MARKER.as_bytes()), Vec::<PathBuf>::new());
    // Again: already deleted, and nothing left to erase.
    assert!(!ops.admin_delete_group(&group).await.unwrap());
    let audit = ops.admin_audit(0, None, 0, 100).await.unwrap();
    assert_eq!(audit.entries.iter().filter(|e| e.action == "delete_group").count(), 1);
}

/// `natter-admin rebuild` on a stopped natterd's data directory: it replays
/// the log and fails unless every read-model answer comes out the same.
pub(crate) fn rebuild_checks(data_dir: &std::path::Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
        .arg("rebuild")
        .arg("--store")
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// How many rows of the PostgreSQL log match `condition`.
pub(crate) async fn log_rows(db: &PgDatabase, condition: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = client.query(&format!("SELECT count(*) FROM events WHERE {condition}"), &[]).await.unwrap();
    rows[0].get::<_, i64>(0)
}
