//! Delivered and read receipts, unread counts, the conversation list.

use std::time::Duration;

use natter_client::proto::ReceiptStatus;
use natter_client::{Client, FeedItem};
use natter_tests::{feed_until, TestServer};

const WAIT: Duration = Duration::from_secs(15);

fn receipt_of<'a>(i: &'a FeedItem, user: &str) -> Option<&'a natter_client::proto::Receipt> {
    match i {
        FeedItem::Receipt { receipt, .. } if receipt.user_id == user => Some(receipt),
        _ => None,
    }
}

fn uid(c: &Client) -> String {
    c.identity().unwrap().user_id
}

#[tokio::test]
async fn delivered_and_read_reach_the_sender_live_and_survive_a_restart() {
    let mut server = TestServer::start().await;
    let (alice, alice_token) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let bob_id = uid(&bob);
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let id = conv.conversation_id.clone();
    let (mut alice_feed, _) = alice.sync(None).await.unwrap();
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();

    let mut last = 0;
    for i in 0..20 {
        last = alice.send_text(&id, &format!("d{i}"), &format!("msg {i}")).await.unwrap().seq;
    }
    // Bob's SDK acknowledges what it takes from the feed …
    let mut n = 0;
    feed_until(&mut bob_feed, WAIT, |i| {
        n += matches!(i, FeedItem::Message { .. }) as usize;
        n == 20
    })
    .await;
    // … and Alice sees "delivered" arrive live, coalesced rather than one per message.
    let mut delivered_events = 0;
    feed_until(&mut alice_feed, WAIT, |i| {
        let r = receipt_of(i, &bob_id);
        delivered_events += r.is_some_and(|r| r.delivered_up_to > 0) as usize;
        r.is_some_and(|r| r.delivered_up_to == last)
    })
    .await;
    assert!(delivered_events < 10, "acks are coalesced: {delivered_events} receipt events for 20 messages");
    let r = alice.receipts(&id, last).await.unwrap();
    assert_eq!(r.status, ReceiptStatus::Delivered as i32);
    assert_eq!((r.member_count, r.delivered_count, r.read_by.len()), (1, 1, 0));

    // Bob reads up to the 10th message: Alice sees it live; the status per message differs.
    let tenth = last - 10;
    assert_eq!(bob.mark_read(&id, tenth).await.unwrap(), tenth);
    feed_until(&mut alice_feed, WAIT, |i| receipt_of(i, &bob_id).is_some_and(|r| r.read_up_to == tenth)).await;
    assert_eq!(alice.receipts(&id, tenth).await.unwrap().status, ReceiptStatus::Read as i32);
    assert_eq!(alice.receipts(&id, last).await.unwrap().status, ReceiptStatus::Delivered as i32);

    // A watermark never goes back: a lower read is ignored, not an error.
    assert_eq!(bob.mark_read(&id, 3).await.unwrap(), tenth);
    // Nor past the end.
    assert_eq!(bob.mark_read(&id, 10_000).await.unwrap(), last);

    drop((alice, bob, alice_feed, bob_feed));
    server.restart().await;
    let alice = server.resume(&alice_token).await;
    let r = alice.receipts(&id, last).await.unwrap();
    assert_eq!(r.status, ReceiptStatus::Read as i32, "watermarks survive a restart");
    assert_eq!(r.read_by[0].email, "bob@example.org");
}

#[tokio::test]
async fn in_a_group_read_by_n_of_m_with_who() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let id = alice.create_group("g", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    let seq = alice.send_text(&id, "1", "hello all").await.unwrap().seq;
    let r = alice.receipts(&id, seq).await.unwrap();
    assert_eq!((r.status, r.member_count, r.delivered_count), (ReceiptStatus::Sent as i32, 2, 0));
    bob.mark_read(&id, seq).await.unwrap();
    let r = alice.receipts(&id, seq).await.unwrap();
    assert_eq!(r.read_by.iter().map(|m| m.email.as_str()).collect::<Vec<_>>(), vec!["bob@example.org"]);
    assert_eq!(r.delivered_count, 1, "reading implies delivery");
    assert_eq!(r.status, ReceiptStatus::Sent as i32, "not yet delivered to everyone");
    carol.mark_read(&id, seq).await.unwrap();
    let r = alice.receipts(&id, seq).await.unwrap();
    assert_eq!((r.status, r.read_by.len()), (ReceiptStatus::Read as i32, 2));
    assert_eq!(alice.receipts(&id, 999).await.unwrap_err().code(), Some(natter_proto::ErrorCode::NOT_FOUND));
}

#[tokio::test]
async fn unread_counts_are_right_after_reconnect_and_the_list_pages() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    server.new_user("carol@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("g", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    drop(bob);
    for i in 0..5 {
        alice.send_text(&dm, &format!("dm{i}"), "hi").await.unwrap();
    }
    let mut last = 0;
    for i in 0..3 {
        last = alice.send_text(&group, &format!("g{i}"), "hey").await.unwrap().seq;
    }
    let bob = server.resume(&bob_token).await;
    let list = bob.conversations(10).await.unwrap();
    assert_eq!(list[0].conversation_id, group, "latest activity first");
    assert_eq!((list[0].unread, list[0].name.as_str()), (3, "g"));
    assert_eq!(list[1].unread, 5);
    // Bob's own messages never count as unread; reading clears.
    bob.send_text(&group, "b", "mine").await.unwrap();
    bob.mark_read(&group, last).await.unwrap();
    let list = bob.conversations(10).await.unwrap();
    assert_eq!(list[0].unread, 0);
    assert_eq!(alice.conversations(10).await.unwrap()[0].unread, 1);

    // Paging by activity.
    let first = bob.conversation_page(1, 0).await.unwrap();
    assert_eq!(first.conversations.len(), 1);
    assert!(first.has_more);
    let second = bob.conversation_page(1, first.conversations[0].activity).await.unwrap();
    assert_eq!(second.conversations[0].conversation_id, dm);
    assert!(!second.has_more);
}
