//! Retention (spec section 5.32): messages older than the conversation's or
//! the deployment's limit lose their content and files, by the erasure's log
//! rewrite; newer ones and other conversations keep theirs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use natter_client::proto::{self as wire, request::Body};
use natter_client::{Client, FeedItem};
use natter_proto::ErrorCode;
use natter_tests::{files_containing, PgDatabase, TestServer};

const MARKER: &str = "quokka9931";
const WAIT: Duration = Duration::from_secs(20);

fn fast(c: &mut natter_server::config::Config) {
    c.retention.interval_ms = 100;
    c.search.commit_interval_ms = 50;
}

fn is_erased(m: &wire::Message) -> bool {
    matches!(m.content.as_ref().and_then(|c| c.body.as_ref()), Some(wire::content::Body::Erased(_)))
}

async fn history(client: &Client, conv: &str) -> Vec<wire::Message> {
    let req = wire::GetHistory { conversation_id: conv.into(), limit: 100, ..Default::default() };
    client.history(req).await.unwrap().messages
}

/// Waits until the history of `conv` has `erased` erased messages.
async fn until_erased(client: &Client, conv: &str, erased: usize) -> Vec<wire::Message> {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = history(client, conv).await;
        if messages.iter().filter(|m| is_erased(m)).count() == erased {
            return messages;
        }
        assert!(Instant::now() < deadline, "never {erased} erased: {messages:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hits(client: &Client, text: &str) -> usize {
    let req = wire::Search { query: text.into(), limit: 50, ..Default::default() };
    let deadline = Instant::now() + WAIT;
    loop {
        match client.search(req.clone()).await {
            Ok(r) => return r.groups.iter().map(|g| g.hits.len()).sum(),
            Err(e) if e.code() == Some(ErrorCode::UNAVAILABLE) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("search: {e}"),
        }
    }
}

#[tokio::test]
async fn a_conversations_retention_erases_exactly_its_messages_older_than_the_cut() {
    let mut server = TestServer::start_with(fast).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("Walkers", &["bob@example.org"]).await.unwrap().conversation_id;
    alice.send_text(&dm, "o1", &format!("{MARKER} apricot one")).await.unwrap();
    bob.send_text(&dm, "o2", &format!("{MARKER} apricot two")).await.unwrap();
    let file = natter_tests::pdf_with(MARKER);
    let media = natter_tests::upload_bytes(&alice, &dm, "walk.pdf", &file).await;
    alice.send_media(&dm, "o3", &media.media_id, "apricot map").await.unwrap();
    alice.send_text(&group, "g1", "group apricot").await.unwrap();

    // Who may set it: signed out no, a stranger no, a group's plain member no.
    let anonymous = server.client().await;
    let body = Body::SetRetention(wire::SetRetention { conversation_id: dm.clone(), max_age_secs: 4 });
    assert_eq!(anonymous.request(body).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    let body = Body::GetRetention(wire::GetRetention { conversation_id: dm.clone() });
    assert_eq!(anonymous.request(body).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(carol.set_retention(&dm, 4).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(carol.retention(&dm).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(bob.set_retention(&group, 4).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    let century = 100 * 365 * 86_400;
    assert_eq!(alice.set_retention(&dm, century + 1).await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(bob.retention(&group).await.unwrap().effective_max_age_secs, 0, "nothing expires by default");

    let (mut feed, _) = alice.sync(None).await.unwrap();
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    // Either member of a direct conversation sets it.
    let set = bob.set_retention(&dm, 4).await.unwrap();
    assert_eq!((set.max_age_secs, set.deployment_max_age_secs, set.effective_max_age_secs), (4, 0, 4));
    natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::RetentionChanged { .. })).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    alice.send_text(&dm, "n1", "fresh apricot").await.unwrap();

    let after = until_erased(&bob, &dm, 3).await;
    let told = natter_tests::feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::MessagesExpired { .. })).await;
    assert!(matches!(told.last(), Some(FeedItem::MessagesExpired { expired, .. }) if expired.conversation_id == dm));
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4, 5], "seqs stay");
    assert!(after[..3].iter().all(is_erased));
    assert_eq!(natter_tests::message_texts(&after), ["fresh apricot"], "the newer message keeps its text");
    assert_eq!(
        natter_tests::message_texts(&history(&bob, &group).await),
        ["group apricot"],
        "another conversation keeps its own"
    );
    // Search, media and every file natterd keeps hold nothing of the old ones.
    let deadline = Instant::now() + WAIT;
    while hits(&bob, "apricot").await != 2 {
        assert!(Instant::now() < deadline, "search still finds expired messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = bob.download(&media.media_id, 0, 0, &mut Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(files_containing(server.data_dir(), MARKER.as_bytes()), Vec::<PathBuf>::new());

    // The rewritten log rebuilds to the same answers.
    drop((alice, bob, carol, feed));
    server.stop().await;
    crate::erasure::rebuild_checks(server.data_dir());
}

#[tokio::test]
async fn the_deployments_retention_applies_everywhere_on_postgres_too() {
    let Some(db) = PgDatabase::create().await else { return };
    let server = TestServer::start_postgres_with(&db, |c| {
        fast(c);
        c.retention.max_age_secs = 3;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("Walkers", &["bob@example.org"]).await.unwrap().conversation_id;
    alice.send_text(&dm, "o1", &format!("{MARKER} one")).await.unwrap();
    alice.send_text(&group, "g1", &format!("{MARKER} two")).await.unwrap();
    let r = bob.retention(&group).await.unwrap();
    assert_eq!((r.max_age_secs, r.deployment_max_age_secs, r.effective_max_age_secs), (0, 3, 3));
    // A conversation's own longer limit does not extend the deployment's.
    alice.set_retention(&group, 3600).await.unwrap();
    assert_eq!(alice.retention(&group).await.unwrap().effective_max_age_secs, 3);
    until_erased(&bob, &dm, 1).await;
    until_erased(&bob, &group, 1).await;
    let holding = format!("position(convert_to('{MARKER}', 'UTF8') in payload) > 0");
    assert_eq!(crate::erasure::log_rows(&db, &holding).await, 0, "the log no longer holds the text");
}
