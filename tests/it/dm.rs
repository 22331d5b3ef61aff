//! Direct messages: live delivery, sync after reconnect, idempotent retries,
//! history, conversation list, limits and membership.

use std::time::Duration;

use natter_client::proto::GetHistory;
use natter_client::FeedItem;
use natter_proto::limits::MAX_TEXT_BYTES;
use natter_proto::ErrorCode;
use natter_tests::{feed_until, texts, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn is_text(text: &'static str) -> impl FnMut(&FeedItem) -> bool {
    move |i| texts(std::slice::from_ref(i)).first().map(String::as_str) == Some(text)
}

#[tokio::test]
async fn live_delivery_to_every_device_of_the_recipient_and_the_senders_other_devices() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (alice_tablet, _) = server.new_device("alice@example.org", "tablet").await;
    let (bob_phone, _) = server.new_user("bob@example.org").await;
    let (bob_laptop, _) = server.new_device("bob@example.org", "laptop").await;

    let mut feeds = Vec::new();
    for c in [&alice_tablet, &bob_phone, &bob_laptop] {
        let (mut feed, _) = c.sync(None).await.unwrap();
        feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
        feeds.push(feed);
    }
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let sent = alice.send_text(&conv.conversation_id, "m-1", "hello bob").await.unwrap();
    assert!(!sent.duplicate);

    for feed in &mut feeds {
        let items = feed_until(feed, WAIT, is_text("hello bob")).await;
        // Every device sees the conversation start, then the message, with its seq.
        assert!(matches!(&items[0], FeedItem::ConversationStarted { conversation, .. }
            if conversation.conversation_id == conv.conversation_id));
        let FeedItem::Message { message, .. } = items.last().unwrap() else { unreachable!() };
        assert_eq!(message.seq, sent.seq);
        assert_eq!(message.sender_email, "alice@example.org");
        assert_eq!(message.client_msg_id, "m-1");
    }
    // And Bob answers; Alice's tablet sees it live.
    bob_laptop.send_text(&conv.conversation_id, "m-2", "hi alice").await.unwrap();
    feed_until(&mut feeds[0], WAIT, is_text("hi alice")).await;
}

#[tokio::test]
async fn offline_recipient_syncs_every_missed_message_exactly_once_in_order() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();

    // Bob reads a first message, remembers his cursor, and goes offline.
    let (mut feed, _) = bob.sync(Some(0)).await.unwrap();
    alice.send_text(&conv.conversation_id, "a0", "before").await.unwrap();
    let seen = feed_until(&mut feed, WAIT, is_text("before")).await;
    let cursor = seen.last().unwrap().cursor().unwrap();
    bob.close().await;

    let mut expected = Vec::new();
    for i in 0..40 {
        let text = format!("missed {i}");
        alice.send_text(&conv.conversation_id, &format!("a{}", i + 1), &text).await.unwrap();
        expected.push(text);
    }

    // Bob reconnects with his token and resumes from his cursor.
    let bob = server.resume(&bob_token).await;
    let (mut feed, head) = bob.sync(Some(cursor)).await.unwrap();
    let items = feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    assert_eq!(texts(&items), expected, "every missed message once, in order");
    let cursors: Vec<u64> = items.iter().filter_map(FeedItem::cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1] || matches!(items.last(), Some(FeedItem::CaughtUp { .. }))));
    assert_eq!(items.last().unwrap().cursor(), Some(head));
    let seqs: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            FeedItem::Message { message, .. } => Some(message.seq),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap-free seqs: {seqs:?}");

    // Live events continue after the backlog, without repeats.
    alice.send_text(&conv.conversation_id, "live", "live one").await.unwrap();
    let live = feed_until(&mut feed, WAIT, is_text("live one")).await;
    assert_eq!(texts(&live), vec!["live one".to_owned()]);
}

#[tokio::test]
async fn retried_send_returns_the_original_seq_and_stores_nothing_new() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let first = alice.send_text(&conv.conversation_id, "same-id", "once").await.unwrap();
    let retry = alice.send_text(&conv.conversation_id, "same-id", "once").await.unwrap();
    assert_eq!(retry.seq, first.seq);
    assert!(retry.duplicate && !first.duplicate);
    // Concurrent retries too.
    let racing = futures::future::join_all((0..10).map(|_| alice.send_text(&conv.conversation_id, "raced", "x"))).await;
    let seqs: std::collections::HashSet<u64> = racing.iter().map(|r| r.as_ref().unwrap().seq).collect();
    assert_eq!(seqs.len(), 1, "{racing:?}");
    // The same client id from the other member is a different message.
    let bobs = bob.send_text(&conv.conversation_id, "same-id", "bob's").await.unwrap();
    assert_ne!(bobs.seq, first.seq);

    let page =
        bob.history(GetHistory { conversation_id: conv.conversation_id.clone(), ..Default::default() }).await.unwrap();
    let stored: Vec<&str> = page.messages.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(stored, vec!["same-id", "raced", "same-id"]);
}

#[tokio::test]
async fn history_pages_before_and_after() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..25 {
        seqs.push(alice.send_text(&conv.conversation_id, &format!("h{i}"), &format!("msg {i}")).await.unwrap().seq);
    }
    let id = conv.conversation_id.clone();
    let latest =
        alice.history(GetHistory { conversation_id: id.clone(), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(latest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[15..].to_vec());
    assert!(latest.has_more);
    let before = alice
        .history(GetHistory { conversation_id: id.clone(), before_seq: seqs[15], limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(before.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[5..15].to_vec());
    assert!(before.has_more);
    let oldest = alice
        .history(GetHistory { conversation_id: id.clone(), before_seq: seqs[5], limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(oldest.messages.len(), 5);
    assert!(!oldest.has_more);
    let after = alice
        .history(GetHistory { conversation_id: id.clone(), after_seq: seqs[20], limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[21..].to_vec());
    assert!(!after.has_more);
    let both =
        alice.history(GetHistory { conversation_id: id, before_seq: 5, after_seq: 1, limit: 10 }).await.unwrap_err();
    assert_eq!(both.code(), Some(ErrorCode::INVALID_ARGUMENT));
}

#[tokio::test]
async fn limits_and_membership_are_enforced_with_typed_errors() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let id = &conv.conversation_id;

    let too_long = "x".repeat(MAX_TEXT_BYTES + 1);
    assert_eq!(alice.send_text(id, "big", &too_long).await.unwrap_err().code(), Some(ErrorCode::TEXT_TOO_LONG));
    alice.send_text(id, "max", &"y".repeat(MAX_TEXT_BYTES)).await.unwrap();
    assert_eq!(alice.send_text(id, "empty", " ").await.unwrap_err().code(), Some(ErrorCode::EMPTY_MESSAGE));
    assert_eq!(alice.send_text(id, "", "hi").await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(alice.send_text("not-a-uuid", "c", "hi").await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(alice.send_text(&unknown, "c", "hi").await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));

    // A stranger can neither send into nor read the conversation.
    assert_eq!(mallory.send_text(id, "c", "hi").await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    let read = mallory.history(GetHistory { conversation_id: id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(read.code(), Some(ErrorCode::NOT_A_MEMBER));
    // …nor receive its events.
    let (mut feed, _) = mallory.sync(Some(0)).await.unwrap();
    let items = feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    assert_eq!(items.len(), 1, "{items:?}");

    assert_eq!(alice.open_direct("alice@example.org").await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(alice.open_direct("ghost@example.org").await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
}

#[tokio::test]
async fn open_direct_is_the_same_conversation_from_both_sides() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (a, b) = tokio::join!(alice.open_direct("bob@example.org"), bob.open_direct("ALICE@example.org"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.conversation_id, b.conversation_id);
    let emails: Vec<&str> = a.members.iter().map(|m| m.email.as_str()).collect();
    assert!(emails.contains(&"alice@example.org") && emails.contains(&"bob@example.org"));
}

#[tokio::test]
async fn conversation_list_is_ordered_by_latest_activity_with_last_message() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    server.new_user("carol@example.org").await;
    let with_bob = alice.open_direct("bob@example.org").await.unwrap();
    let with_carol = alice.open_direct("carol@example.org").await.unwrap();
    alice.send_text(&with_carol.conversation_id, "1", "to carol").await.unwrap();
    alice.send_text(&with_bob.conversation_id, "2", "to bob").await.unwrap();
    let list = alice.conversations(10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].conversation_id, with_bob.conversation_id);
    let last = list[0].last_message.as_ref().unwrap();
    assert_eq!(last.client_msg_id, "2");
    assert_eq!(list[1].conversation_id, with_carol.conversation_id);
}

#[tokio::test]
async fn pipelined_sends_from_one_connection_all_land_in_order_of_seq() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let (mut feed, _) = bob.sync(None).await.unwrap();
    let sends = (0..100).map(|i| {
        let (alice, id) = (&alice, &conv.conversation_id);
        async move { alice.send_text(id, &format!("p{i}"), &format!("pipelined {i}")).await }
    });
    let results = futures::future::join_all(sends).await;
    let mut seqs: Vec<u64> = results.into_iter().map(|r| r.unwrap().seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 100);
    let mut got = 0;
    let items = feed_until(&mut feed, WAIT, |i| {
        if matches!(i, FeedItem::Message { .. }) {
            got += 1;
        }
        got == 100
    })
    .await;
    let delivered: Vec<u64> = items
        .iter()
        .filter_map(|i| match i {
            FeedItem::Message { message, .. } => Some(message.seq),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, seqs, "the feed delivers in seq order, each once");
}

#[tokio::test]
async fn a_slow_reader_is_resynced_from_the_log_without_loss() {
    // A tiny outbound queue forces the overflow path: the session is marked out
    // of date and catches up from the log.
    let server = TestServer::start_with(|c| c.delivery.outbound_queue = 2).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let (mut feed, _) = bob.sync(None).await.unwrap();
    let sends = (0..200).map(|i| {
        let (alice, id) = (&alice, &conv.conversation_id);
        async move { alice.send_text(id, &format!("s{i}"), &format!("burst {i}")).await }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    let mut got = 0;
    let items = feed_until(&mut feed, WAIT, |i| {
        if matches!(i, FeedItem::Message { .. }) {
            got += 1;
        }
        got == 200
    })
    .await;
    let cursors: Vec<u64> =
        items.iter().filter(|i| matches!(i, FeedItem::Message { .. })).filter_map(FeedItem::cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    let mut t = texts(&items);
    t.sort();
    t.dedup();
    assert_eq!(t.len(), 200);
}

#[tokio::test]
async fn messages_survive_a_graceful_restart() {
    let mut server = TestServer::start().await;
    let (alice, token) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    alice.send_text(&conv.conversation_id, "r1", "kept").await.unwrap();
    drop(alice);
    server.restart().await;
    let alice = server.resume(&token).await;
    let page = alice.history(GetHistory { conversation_id: conv.conversation_id, ..Default::default() }).await.unwrap();
    assert_eq!(page.messages.len(), 1);
}

#[tokio::test]
async fn history_and_conversation_pages_stay_within_the_frame_limit() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let big = "b".repeat(1000);
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(alice.send_text(&conv.conversation_id, &format!("b{i}"), &big).await.unwrap().seq);
    }
    let id = conv.conversation_id.clone();
    let page =
        alice.history(GetHistory { conversation_id: id.clone(), limit: 10, ..Default::default() }).await.unwrap();
    let got: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert!(!got.is_empty() && got.len() < 10, "{got:?}");
    assert_eq!(got, seqs[10 - got.len()..].to_vec(), "the newest ones");
    assert!(page.has_more);
    // Paging on from there reaches every message.
    let mut all = got.clone();
    let mut before = got[0];
    loop {
        let p = alice
            .history(GetHistory { conversation_id: id.clone(), before_seq: before, limit: 10, ..Default::default() })
            .await
            .unwrap();
        all.extend(p.messages.iter().map(|m| m.seq));
        if !p.has_more {
            break;
        }
        before = p.messages[0].seq;
    }
    all.sort_unstable();
    assert_eq!(all, seqs);
    let after = alice
        .history(GetHistory { conversation_id: id, after_seq: seqs[0], limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(after.messages[0].seq, seqs[1], "after pages keep the oldest ones");
    assert!(after.has_more);
}
