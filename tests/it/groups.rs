//! Groups: one order for everyone, membership changes, roles, authorization.

use std::collections::HashMap;
use std::time::Duration;

use natter_client::proto::{group_event::Change, GetHistory, Role};
use natter_client::{Client, FeedItem};
use natter_proto::ErrorCode;
use natter_tests::{feed_until, texts, TestServer};

const WAIT: Duration = Duration::from_secs(15);

fn user_id(c: &Client) -> String {
    c.identity().unwrap().user_id
}

/// (seq, what) of every conversation event (messages and group changes) on a feed.
fn timeline(items: &[FeedItem], conv: &str) -> Vec<(u64, String)> {
    items
        .iter()
        .filter_map(|i| match i {
            FeedItem::Message { message, .. } if message.conversation_id == conv => {
                Some((message.seq, texts(std::slice::from_ref(i)).remove(0)))
            }
            FeedItem::Group { event, .. } if event.conversation_id == conv => {
                Some((event.seq, format!("{:?}", event.change)))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn three_members_see_one_identical_order_under_concurrent_sends() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let mut feeds = Vec::new();
    for c in [&alice, &bob, &carol] {
        feeds.push(c.sync(Some(0)).await.unwrap().0);
    }
    let group = alice.create_group("trio", &["bob@example.org", "carol@example.org", "bob@example.org"]).await.unwrap();
    assert_eq!(group.members.len(), 3);
    assert_eq!(group.members[0].role, Role::Owner as i32);
    let id = group.conversation_id.clone();

    const EACH: usize = 30;
    async fn send_all(c: &Client, id: &str, who: &str) -> Vec<u64> {
        let sends = (0..EACH)
            .map(|i| async move { c.send_text(id, &format!("{who}-{i}"), &format!("{who} {i}")).await.unwrap().seq });
        futures::future::join_all(sends).await
    }
    let (a, b, c) =
        tokio::join!(send_all(&alice, &id, "alice"), send_all(&bob, &id, "bob"), send_all(&carol, &id, "carol"));
    let mut all: Vec<u64> = a.into_iter().chain(b).chain(c).collect();
    all.sort_unstable();
    assert_eq!(all, (2..2 + 3 * EACH as u64).collect::<Vec<_>>(), "seqs are gap-free after the creation event");

    let mut timelines = Vec::new();
    for feed in &mut feeds {
        let mut n = 0;
        let items = feed_until(feed, WAIT, |i| {
            if matches!(i, FeedItem::Message { .. }) {
                n += 1;
            }
            n == 3 * EACH
        })
        .await;
        timelines.push(timeline(&items, &id));
    }
    assert_eq!(timelines[0], timelines[1]);
    assert_eq!(timelines[1], timelines[2]);
    let seqs: Vec<u64> = timelines[0].iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..2 + 3 * EACH as u64).collect::<Vec<_>>(), "creation then messages, in seq order");
}

#[tokio::test]
async fn removal_stops_live_delivery_and_limits_history_to_the_removal() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let group = alice.create_group("team", &["bob@example.org", "carol@example.org"]).await.unwrap();
    let id = group.conversation_id.clone();
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();
    alice.send_text(&id, "1", "before").await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| texts(std::slice::from_ref(i)) == ["before"]).await;

    let after_removal = alice.remove_member(&id, &user_id(&bob)).await.unwrap();
    assert!(after_removal.members.iter().all(|m| m.email != "bob@example.org"));
    // Bob is told, then hears nothing more.
    let items = feed_until(&mut bob_feed, WAIT, |i| {
        matches!(i, FeedItem::Group { event, .. }
        if matches!(&event.change, Some(Change::MemberRemoved(m)) if m.email == "bob@example.org"))
    })
    .await;
    let removal_seq = match items.last().unwrap() {
        FeedItem::Group { event, .. } => event.seq,
        _ => unreachable!(),
    };
    alice.send_text(&id, "2", "after").await.unwrap();
    carol.send_text(&id, "3", "after too").await.unwrap();
    // A marker in another conversation proves Bob's feed moved past those sends.
    let dm = alice.open_direct("bob@example.org").await.unwrap();
    alice.send_text(&dm.conversation_id, "m", "marker").await.unwrap();
    let items = feed_until(&mut bob_feed, WAIT, |i| texts(std::slice::from_ref(i)) == ["marker"]).await;
    assert_eq!(texts(&items), vec!["marker".to_owned()], "nothing from the group after the removal: {items:?}");

    // History up to the removal stays readable; nothing after it.
    let page = bob.history(GetHistory { conversation_id: id.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>(), vec!["1"]);
    let after = bob
        .history(GetHistory { conversation_id: id.clone(), after_seq: removal_seq, ..Default::default() })
        .await
        .unwrap();
    assert!(after.messages.is_empty());
    // He can no longer send, see members, or act in the group.
    assert_eq!(bob.send_text(&id, "x", "let me in").await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(bob.get_conversation(&id).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(bob.leave(&id).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(bob.receipts(&id, 2).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    // His list shows the group as left, without its members.
    let list = bob.conversations(10).await.unwrap();
    let entry = list.iter().find(|c| c.conversation_id == id).unwrap();
    assert!(!entry.active && entry.members.is_empty());
    assert_eq!(entry.last_seq, removal_seq);
}

#[tokio::test]
async fn roles_rules_over_the_protocol() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    server.new_user("dave@example.org").await;
    let g = alice.create_group("roles", &["bob@example.org", "carol@example.org"]).await.unwrap();
    let id = g.conversation_id.clone();
    // Members cannot add, rename, remove or change roles.
    assert_eq!(bob.add_members(&id, &["dave@example.org"]).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    assert_eq!(bob.rename_group(&id, "mine").await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    assert_eq!(bob.remove_member(&id, &user_id(&carol)).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    assert_eq!(bob.set_role(&id, &user_id(&carol), Role::Admin).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    // The owner makes Bob an admin; a member cannot remove an admin.
    let g = alice.set_role(&id, &user_id(&bob), Role::Admin).await.unwrap();
    assert!(g.members.iter().any(|m| m.email == "bob@example.org" && m.role == Role::Admin as i32));
    assert_eq!(carol.remove_member(&id, &user_id(&bob)).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    // The admin adds and renames, but cannot remove the owner or make owners.
    bob.add_members(&id, &["dave@example.org"]).await.unwrap();
    assert_eq!(bob.rename_group(&id, "renamed").await.unwrap().name, "renamed");
    assert_eq!(bob.remove_member(&id, &user_id(&alice)).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    assert_eq!(bob.set_role(&id, &user_id(&carol), Role::Owner).await.unwrap_err().code(), Some(ErrorCode::FORBIDDEN));
    // Unknown emails and bad names are typed errors.
    assert_eq!(alice.add_members(&id, &["ghost@example.org"]).await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
    assert_eq!(alice.rename_group(&id, "  ").await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
    // Group operations on a direct conversation are refused.
    let dm = alice.open_direct("bob@example.org").await.unwrap();
    assert_eq!(alice.leave(&dm.conversation_id).await.unwrap_err().code(), Some(ErrorCode::INVALID_ARGUMENT));
}

#[tokio::test]
async fn the_last_owner_leaving_hands_the_group_to_the_oldest_admin() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let id = alice.create_group("handover", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    alice.set_role(&id, &user_id(&carol), Role::Admin).await.unwrap();
    let (mut feed, _) = bob.sync(None).await.unwrap();
    alice.leave(&id).await.unwrap();
    let items = feed_until(&mut feed, WAIT, |i| {
        matches!(i, FeedItem::Group { event, .. }
        if matches!(&event.change, Some(Change::RoleChanged(_))))
    })
    .await;
    let FeedItem::Group { event, .. } = items.last().unwrap() else { unreachable!() };
    assert!(event.actor_user_id.is_empty(), "made by the server");
    let g = bob.get_conversation(&id).await.unwrap();
    let roles: HashMap<&str, i32> = g.members.iter().map(|m| (m.email.as_str(), m.role)).collect();
    assert_eq!(roles["carol@example.org"], Role::Owner as i32);
    assert_eq!(roles["bob@example.org"], Role::Member as i32);
    assert!(!roles.contains_key("alice@example.org"));
}

#[tokio::test]
async fn group_size_limit_is_enforced() {
    let server = TestServer::start_with(|c| c.max_group_members = 3).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    for u in ["b@example.org", "c@example.org", "d@example.org"] {
        server.new_user(u).await;
    }
    let e = alice.create_group("big", &["b@example.org", "c@example.org", "d@example.org"]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::GROUP_FULL));
    let id = alice.create_group("ok", &["b@example.org", "c@example.org"]).await.unwrap().conversation_id;
    assert_eq!(alice.add_members(&id, &["d@example.org"]).await.unwrap_err().code(), Some(ErrorCode::GROUP_FULL));
}

#[tokio::test]
async fn strangers_can_neither_read_send_see_members_nor_act() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;
    let id = alice.create_group("private", &["bob@example.org"]).await.unwrap().conversation_id;
    alice.send_text(&id, "1", "secret").await.unwrap();
    let (mut feed, _) = mallory.sync(Some(0)).await.unwrap();
    let items = feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    assert_eq!(items.len(), 1, "no events of the group: {items:?}");
    let uid = user_id(&alice);
    for e in [
        mallory.send_text(&id, "x", "hi").await.unwrap_err(),
        mallory.history(GetHistory { conversation_id: id.clone(), ..Default::default() }).await.unwrap_err(),
        mallory.get_conversation(&id).await.unwrap_err(),
        mallory.add_members(&id, &["mallory@example.org"]).await.unwrap_err(),
        mallory.remove_member(&id, &uid).await.unwrap_err(),
        mallory.rename_group(&id, "pwned").await.unwrap_err(),
        mallory.leave(&id).await.unwrap_err(),
        mallory.mark_read(&id, 2).await.unwrap_err(),
        mallory.receipts(&id, 2).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::NOT_A_MEMBER), "{e}");
    }
    assert!(mallory.conversations(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_send_racing_a_removal_is_either_before_it_or_refused() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let id = alice.create_group("race", &["bob@example.org"]).await.unwrap().conversation_id;
    let bob_id = user_id(&bob);
    let sends = async {
        let mut results = Vec::new();
        for i in 0..50 {
            results.push(bob.send_text(&id, &format!("r{i}"), "racing").await);
        }
        results
    };
    let (results, removed) = tokio::join!(sends, alice.remove_member(&id, &bob_id));
    removed.unwrap();
    // The removal is the group's last event: nothing was accepted after it.
    let removal_seq = alice.get_conversation(&id).await.unwrap().last_seq;
    let history =
        alice.history(GetHistory { conversation_id: id.clone(), limit: 100, ..Default::default() }).await.unwrap();
    assert!(history.messages.iter().all(|m| m.seq < removal_seq));
    let mut accepted = 0;
    for r in results {
        match r {
            Ok(sent) => {
                accepted += 1;
                assert!(sent.seq < removal_seq, "accepted sends come before the removal");
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::NOT_A_MEMBER)),
        }
    }
    assert_eq!(history.messages.len(), accepted, "every accepted send is stored, no refused one is");
}
