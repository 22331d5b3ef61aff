//! Typing indicators and presence: ephemeral, visible only to people who share
//! a conversation, never in the log.

use std::time::Duration;

use natter_client::proto::{request::Body, Typing};
use natter_client::{Client, Feed, FeedItem};
use natter_proto::ErrorCode;
use natter_tests::{feed_until, texts, TestServer};

const WAIT: Duration = Duration::from_secs(15);

async fn live(c: &Client) -> Feed {
    let (mut feed, _) = c.sync(None).await.unwrap();
    feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    feed
}

fn uid(c: &Client) -> String {
    c.identity().unwrap().user_id
}

async fn typing_is_shown_then_expires(datagrams: bool) {
    let server = TestServer::start_with(|c| c.ephemeral.typing_ttl_ms = 300).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let mut config = server.client_config();
    config.datagrams = datagrams;
    let bob = Client::connect(&config).await.unwrap();
    bob.signup("bob@example.org", natter_tests::PASSWORD, "").await.unwrap();
    bob.login("bob@example.org", natter_tests::PASSWORD, "d").await.unwrap();
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let mut bob_feed = live(&bob).await;
    let alice_id = uid(&alice);

    assert!(alice.typing(&conv).await.unwrap());
    assert!(!alice.typing(&conv).await.unwrap(), "the SDK throttles repeats");
    let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Typing { .. })).await;
    let Some(FeedItem::Typing { user_id, email, expires_in_ms, .. }) = items.last() else { unreachable!() };
    assert_eq!((user_id.as_str(), email.as_str(), *expires_in_ms), (alice_id.as_str(), "alice@example.org", 300));
    // With no refresh it expires on its own.
    let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::TypingStopped { .. })).await;
    assert!(matches!(items.last(), Some(FeedItem::TypingStopped { user_id, conversation_id })
        if *user_id == alice_id && *conversation_id == conv));
}

#[tokio::test]
async fn typing_over_datagrams_shows_and_expires() {
    typing_is_shown_then_expires(true).await;
}

#[tokio::test]
async fn typing_without_datagram_support_goes_over_the_feed_stream() {
    typing_is_shown_then_expires(false).await;
}

#[tokio::test]
async fn typing_stops_at_once_when_the_typist_sends() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let mut bob_feed = live(&bob).await;
    alice.typing(&conv).await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Typing { .. })).await;
    alice.send_text(&conv, "1", "done typing").await.unwrap();
    let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
    let n = items.len();
    assert!(n >= 2 && matches!(items[n - 2], FeedItem::TypingStopped { .. }), "{items:?}");
    assert_eq!(texts(&items), vec!["done typing".to_owned()]);
}

#[tokio::test]
async fn typing_is_for_members_only_and_rate_limited_on_the_server() {
    let server = TestServer::start_with(|c| {
        c.ephemeral.typing_burst = 3;
        c.ephemeral.typing_per_second = 0.5;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    async fn typing(
        c: &Client,
        conv: &str,
    ) -> Result<natter_client::proto::response::Result, natter_client::ClientError> {
        c.request(Body::Typing(Typing { conversation_id: conv.to_owned() })).await
    }
    assert_eq!(typing(&mallory, &conv).await.unwrap_err().code(), Some(ErrorCode::NOT_A_MEMBER));
    // The request path (what clients without datagrams use) shows the limit.
    let mut limited = None;
    for _ in 0..5 {
        if let Err(e) = typing(&alice, &conv).await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("rate limited within 5 signals");
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED));
    let natter_client::ClientError::Server { retry_after_ms, .. } = e else { unreachable!() };
    assert!(retry_after_ms > 0);
    // Nothing of it is in the log.
    let stats = natter_admin::stats(server.data_dir()).await.unwrap();
    assert_eq!(stats.events, 3 * 3 + 1, "signups, logins and the conversation only");
}

#[tokio::test]
async fn presence_reaches_contacts_only_and_last_seen_survives_a_restart() {
    let mut server = TestServer::start().await;
    let (alice, alice_token) = server.new_user("alice@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let bob_id = uid(&bob);
    alice.open_direct("bob@example.org").await.unwrap();
    let marker_conv = alice.open_direct("mallory@example.org").await.unwrap().conversation_id;
    let mut alice_feed = live(&alice).await;
    let mut mallory_feed = live(&mallory).await;

    bob.close().await;
    let items = feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if !p.online)).await;
    let Some(FeedItem::Presence(p)) = items.last() else { unreachable!() };
    assert_eq!(p.user_id, bob_id);
    assert!(p.last_seen_ms > 0);
    let last_seen = p.last_seen_ms;
    let bob = server.resume(&bob_token).await;
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if p.online && p.user_id == bob_id)).await;

    // Mallory shares no conversation with Bob: nothing about him reaches her.
    alice.send_text(&marker_conv, "m", "marker").await.unwrap();
    let items = feed_until(&mut mallory_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
    assert!(items.iter().all(|i| !matches!(i, FeedItem::Presence(p) if p.user_id == bob_id)), "{items:?}");
    assert!(mallory.presence(&[&bob_id]).await.unwrap().is_empty(), "strangers are left out");
    let seen = alice.presence(&[&bob_id]).await.unwrap();
    assert!(seen[0].online);

    // Bob hides his last-seen; then goes offline.
    bob.set_privacy(true).await.unwrap();
    bob.close().await;
    let items = feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if !p.online)).await;
    let Some(FeedItem::Presence(p)) = items.last() else { unreachable!() };
    assert_eq!(p.last_seen_ms, 0, "hidden");
    assert_eq!(alice.presence(&[&bob_id]).await.unwrap()[0].last_seen_ms, 0);

    // Shown again, the stored last-seen survives a restart.
    let bob = server.resume(&bob_token).await;
    bob.set_privacy(false).await.unwrap();
    bob.close().await;
    drop((alice, alice_feed, mallory, mallory_feed));
    server.restart().await;
    let alice = server.resume(&alice_token).await;
    let p = &alice.presence(&[&bob_id]).await.unwrap()[0];
    assert!(!p.online);
    assert!(p.last_seen_ms >= last_seen, "{} < {last_seen}", p.last_seen_ms);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// natterd as a process (its own multi-threaded runtime, as operators run it),
/// stopped with SIGTERM while people are connected.
#[tokio::test]
async fn a_shutdown_records_the_last_seen_of_everyone_still_connected() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::crash::free_udp_port();
    let start = || {
        let mut cmd = tokio::process::Command::new(crate::natterd());
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("NATTER_")) {
                cmd.env_remove(name);
            }
        }
        cmd.envs(natter_tests::CHILD_ENV.iter().copied());
        cmd.arg("--data-dir").arg(dir.path()).arg("--listen").arg(listen.to_string());
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
        cmd.spawn().expect("spawn natterd")
    };
    let mut natterd = start();
    let mut line = String::new();
    tokio::io::BufReader::new(natterd.stdout.take().unwrap()).read_line(&mut line).await.unwrap();
    let (addr, fingerprint) = natter_tests::parse_listening_line(&line).unwrap();
    let config = natter_client::ClientConfig::new(addr, natter_client::Trust::pin(&fingerprint).unwrap());
    let connect = |token: Option<String>| {
        let mut config = config.clone();
        config.session_token = token;
        async move { Client::connect(&config).await.unwrap() }
    };
    let alice = connect(None).await;
    alice.signup("alice@example.org", natter_tests::PASSWORD, "").await.unwrap();
    let (alice_token, _) = alice.login("alice@example.org", natter_tests::PASSWORD, "d").await.unwrap();
    let bob = connect(None).await;
    bob.signup("bob@example.org", natter_tests::PASSWORD, "").await.unwrap();
    let (bob_token, _) = bob.login("bob@example.org", natter_tests::PASSWORD, "d").await.unwrap();
    let bob_id = uid(&bob);
    alice.open_direct("bob@example.org").await.unwrap();
    let mut alice_feed = live(&alice).await;
    bob.close().await;
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if !p.online)).await;
    // Bob comes back: natterd records a last-seen, then tells Alice.
    let bob = connect(Some(bob_token)).await;
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if p.online && p.user_id == bob_id)).await;
    let recorded = now_ms();
    while now_ms() <= recorded {
        tokio::task::yield_now().await;
    }
    let before_shutdown = now_ms();

    // Both still connected when natterd stops: the shutdown records Bob's
    // last-seen (and Alice's) before the log closes.
    let pid = natterd.id().unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(WAIT, natterd.wait()).await.expect("natterd stops").unwrap();
    assert!(status.success());
    let mut log = String::new();
    natterd.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    assert!(!log.contains("not recorded"), "{log}");
    drop((alice, alice_feed, bob));

    let mut natterd = start();
    let mut line = String::new();
    tokio::io::BufReader::new(natterd.stdout.take().unwrap()).read_line(&mut line).await.unwrap();
    let alice = connect(Some(alice_token)).await;
    let p = &alice.presence(&[&bob_id]).await.unwrap()[0];
    assert!(!p.online);
    assert!(
        p.last_seen_ms >= before_shutdown,
        "last seen {} is from before the shutdown ({before_shutdown})",
        p.last_seen_ms
    );
}
