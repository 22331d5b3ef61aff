//! Several natterd nodes on one PostgreSQL database: clients on different
//! nodes chat live, see each other type and come online; a node killed with
//! SIGKILL mid-send loses nothing, and its client carries on on another node.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_client::proto::GetHistory;
use natter_client::{Client, ClientError, FeedItem};
use natter_tests::{feed_until, message_texts, texts, ChildServer, PgDatabase, PgRelay, TestServer, PASSWORD};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(20);

fn uid(c: &Client) -> String {
    c.identity().unwrap().user_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_chat_live_both_ways_and_see_typing_and_presence() {
    let Some(db) = PgDatabase::create().await else { return };
    let node_a = TestServer::start_postgres(&db).await;
    let node_b = TestServer::start_postgres(&db).await;
    let (alice, _) = node_a.new_user("alice@example.org").await;
    let (bob, bob_token) = node_b.new_user("bob@example.org").await;
    let (mut alice_feed, _) = alice.sync(None).await.unwrap();
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;

    // A → B: the conversation and the message reach Bob live on the other node.
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&conv, "a1", "hello from node A").await.unwrap();
    let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
    assert!(items.iter().any(|i| matches!(i, FeedItem::ConversationStarted { .. })), "{items:?}");
    assert_eq!(texts(&items), ["hello from node A"]);

    // B → A.
    bob.send_text(&conv, "b1", "hello from node B").await.unwrap();
    let items = feed_until(&mut alice_feed, WAIT, |i| {
        matches!(i, FeedItem::Message { message, .. }
        if message.sender_user_id == uid(&bob))
    })
    .await;
    assert_eq!(texts(&items).last().map(String::as_str), Some("hello from node B"));

    // Typing crosses nodes.
    assert!(bob.typing(&conv).await.unwrap());
    let items = feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Typing { .. })).await;
    let Some(FeedItem::Typing { user_id, conversation_id, .. }) = items.last() else { unreachable!() };
    assert_eq!((user_id, conversation_id), (&uid(&bob), &conv));

    // Presence: Bob is online on B, which node A knows when asked.
    let bob_id = uid(&bob);
    assert!(alice.presence(&[&bob_id]).await.unwrap()[0].online, "online on the other node");
    // He goes offline on B: Alice, on A, is told; then he comes back on A itself.
    bob.close().await;
    drop(bob_feed);
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if !p.online && p.user_id == bob_id)).await;
    assert!(!alice.presence(&[&bob_id]).await.unwrap()[0].online);
    let bob_on_a = node_a.resume(&bob_token).await;
    feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Presence(p) if p.online && p.user_id == bob_id)).await;

    // Connected to both nodes, Bob leaves one: to Alice he is still online.
    // (Each step waits until the nodes have recorded it, so a wrong "offline"
    // would be sent before the message below, not after the test looked.)
    let bob_on_b = node_b.resume(&bob_token).await;
    wait_for_nodes_online(&db, &bob_id, 2).await;
    bob_on_b.close().await;
    wait_for_nodes_online(&db, &bob_id, 1).await;
    bob_on_a.send_text(&conv, "b2", "still here").await.unwrap();
    let items = feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
    assert!(items.iter().all(|i| !matches!(i, FeedItem::Presence(p) if !p.online)), "{items:?}");
    assert!(alice.presence(&[&bob_id]).await.unwrap()[0].online);
}

/// Waits until `user` is recorded online on exactly `nodes` nodes.
async fn wait_for_nodes_online(db: &PgDatabase, user: &str, nodes: i64) {
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = client.query_one("SELECT COUNT(*) FROM online WHERE user_id = $1", &[&user]).await.unwrap();
        if row.get::<_, i64>(0) == nodes {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{user} never online on {nodes} nodes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
    let _ = driver.await;
}

fn free_udp_port() -> std::net::SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Messages Alice sends while node A is killed under her.
const SENDS: usize = 200;
/// Node A is killed once this many were acknowledged.
const KILL_AFTER: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_send_loses_nothing_and_its_client_resyncs_on_another_node() {
    let Some(db) = PgDatabase::create().await else { return };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store_env = [("NATTER_STORE_BACKEND", "postgres"), ("NATTER_STORE_URL", db.url())];
    let mut node_a = ChildServer::spawn_with_env(&crate::natterd(), dir_a.path(), free_udp_port(), &store_env);
    // Both nodes serve one certificate, as behind one address.
    let (cert, key) = (dir_a.path().join("tls/cert.pem"), dir_a.path().join("tls/key.pem"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    // …and one server key.
    let secret = dir_a.path().join("secret.key");
    let env_b = [
        store_env[0],
        store_env[1],
        ("NATTER_TLS_CERT", cert),
        ("NATTER_TLS_KEY", key),
        ("NATTER_AUTH_SECRET_KEY_FILE", secret.to_str().unwrap()),
    ];
    let node_b = ChildServer::spawn_with_env(&crate::natterd(), dir_b.path(), free_udp_port(), &env_b);
    assert_eq!(node_a.fingerprint(), node_b.fingerprint());

    // Alice notices a dead server within a few seconds.
    let mut alice_config = node_a.client_config();
    alice_config.keep_alive = Duration::from_millis(500);
    alice_config.idle_timeout = Duration::from_secs(2);
    let alice = Client::connect(&alice_config).await.unwrap();
    alice.signup("alice@example.org", PASSWORD, "").await.unwrap();
    let (alice_token, _) = alice.login("alice@example.org", PASSWORD, "laptop").await.unwrap();
    let bob = Client::connect(&node_b.client_config()).await.unwrap();
    bob.signup("bob@example.org", PASSWORD, "").await.unwrap();
    bob.login("bob@example.org", PASSWORD, "phone").await.unwrap();
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    let (mut alice_feed, _) = alice.sync(None).await.unwrap();
    let seen_by_alice = feed_until(&mut alice_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    let alice_cursor = seen_by_alice.iter().filter_map(FeedItem::cursor).max().unwrap_or(0);

    // Pipelined sends; node A gets SIGKILL while they are in flight.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let ack = Arc::new(Notify::new());
    let sends = futures::future::join_all((0..SENDS).map(|i| {
        let (alice, conv, acked, ack) = (&alice, &conv, acked.clone(), ack.clone());
        async move {
            let r = alice.send_text(conv, &format!("k{i}"), &format!("message {i}")).await;
            if let Ok(sent) = &r {
                acked.lock().unwrap().push((i, sent.seq));
                ack.notify_one();
            }
            r.map(|_| ())
        }
    }));
    let killer = async {
        while acked.lock().unwrap().len() < KILL_AFTER {
            ack.notified().await;
        }
        node_a.kill9();
    };
    let (results, ()) = tokio::join!(sends, killer);
    let acked: Vec<(usize, u64)> = acked.lock().unwrap().clone();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(
        acked.len() >= KILL_AFTER && failed > 0,
        "the kill landed mid-send: {} acked, {failed} failed",
        acked.len()
    );
    assert!(
        results.iter().all(|r| matches!(r, Ok(()) | Err(ClientError::Closed { .. }))),
        "sends fail only because the connection died: {results:?}"
    );

    // Alice carries on on node B with the same session, and retries every
    // send that was not acknowledged (it may have committed: the retry must not
    // duplicate it). Acknowledged ones retried return their original seq.
    let mut config = node_b.client_config();
    config.session_token = Some(alice_token);
    let alice = Client::connect(&config).await.expect("the session works on node B");
    let mut seqs = vec![0u64; SENDS];
    for (i, seq) in &acked {
        seqs[*i] = *seq;
    }
    for (i, seq) in seqs.iter_mut().enumerate() {
        let again = alice.send_text(&conv, &format!("k{i}"), &format!("message {i}")).await.unwrap().seq;
        if *seq != 0 {
            assert_eq!(again, *seq, "an acknowledged send retried is the same message");
        }
        *seq = again;
    }
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (2..2 + SENDS as u64).collect::<Vec<_>>(), "every message once; no gaps, no duplicates");

    // Alice resyncs on B from her cursor: every message once, in order.
    let (mut feed, _) = alice.sync(Some(alice_cursor)).await.unwrap();
    let items = feed_until(&mut feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    let expected: Vec<String> = {
        let mut by_seq: Vec<(u64, usize)> = seqs.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        by_seq.sort_unstable();
        by_seq.iter().map(|(_, i)| format!("message {i}")).collect()
    };
    assert_eq!(texts(&items), expected);

    // Bob, on node B all along, got each message live exactly once, in order.
    let mut got = Vec::new();
    while got.len() < SENDS {
        let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
        got.extend(texts(&items));
    }
    assert_eq!(got, expected);

    // And the history agrees.
    let page = alice
        .history(GetHistory { conversation_id: conv.clone(), before_seq: 0, limit: 500, after_seq: 0 })
        .await
        .unwrap();
    let history: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(history, (2..2 + SENDS as u64).collect::<Vec<_>>());
}

/// Cuts every connection natterd has to its database (as a PostgreSQL restart
/// or a network blip would).
async fn terminate_backends(db: &PgDatabase) -> u64 {
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    row.get::<_, i64>(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natterd_carries_on_after_its_database_connections_are_cut() {
    let Some(db) = PgDatabase::create().await else { return };
    let server = TestServer::start_postgres(&db).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    alice.send_text(&conv, "before", "before the cut").await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;

    assert!(terminate_backends(&db).await >= 2, "the writer and the listener at least");
    // The cut is not the client's problem: the reads and the write behind
    // this send find their connections dead and run again on fresh ones.
    let sent = alice.send_text(&conv, "after", "after the cut").await.unwrap();
    // Live delivery resumed too (the tailer and the listener reconnected), once.
    let items = feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::Message { .. })).await;
    assert_eq!(texts(&items), ["after the cut"]);
    let again = alice.send_text(&conv, "after", "after the cut").await.unwrap();
    assert_eq!(again.seq, sent.seq, "not duplicated by the retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_its_database_is_down_natterd_answers_unavailable_then_carries_on() {
    let Some(db) = PgDatabase::create().await else { return };
    let relay = PgRelay::start(&db).await;
    let url = relay.url().to_owned();
    let server = TestServer::start_with(move |c| {
        c.store.backend = natter_server::config::StoreBackend::Postgres;
        c.store.url = Some(url);
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let (mut bob_feed, _) = bob.sync(None).await.unwrap();
    feed_until(&mut bob_feed, WAIT, |i| matches!(i, FeedItem::CaughtUp { .. })).await;
    alice.send_text(&conv, "up", "before").await.unwrap();

    relay.set_down(true);
    match alice.send_text(&conv, "down", "while down").await.unwrap_err() {
        ClientError::Server { code, retry_after_ms, .. } => {
            assert_eq!(code, natter_proto::ErrorCode::UNAVAILABLE);
            assert!(retry_after_ms > 0);
        }
        other => panic!("{other}"),
    }
    relay.set_down(false);
    // The retry (same client_msg_id) goes through, and the message exists once.
    let sent = alice.send_text(&conv, "down", "while down").await.unwrap();
    let items = feed_until(
        &mut bob_feed,
        WAIT,
        |i| matches!(i, FeedItem::Message { message, .. } if message.client_msg_id == "down"),
    )
    .await;
    assert!(texts(&items).contains(&"while down".to_owned()), "{items:?}");
    let again = alice.send_text(&conv, "down", "while down").await.unwrap();
    assert_eq!(again.seq, sent.seq);
    let page =
        alice.history(GetHistory { conversation_id: conv.clone(), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(message_texts(&page.messages), ["before", "while down"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_locked_on_one_node_is_locked_on_every_node() {
    let Some(db) = PgDatabase::create().await else { return };
    let node_a = TestServer::start_postgres(&db).await;
    let node_b = TestServer::start_postgres(&db).await;
    node_a.new_user("alice@example.org").await;
    node_b.new_user("bob@example.org").await;
    // Guesses spread over both nodes count together: five wrong passwords lock the account.
    for guess in 0..5 {
        let node = if guess % 2 == 0 { &node_a } else { &node_b };
        let e = node.client().await.login("alice@example.org", "wrong guess", "d").await.unwrap_err();
        assert_eq!(e.code(), Some(natter_proto::ErrorCode::INVALID_CREDENTIALS), "guess {guess}: {e}");
    }
    for node in [&node_a, &node_b] {
        match node.client().await.login("alice@example.org", PASSWORD, "d").await.unwrap_err() {
            ClientError::Server { code, retry_after_ms, .. } => {
                assert_eq!(code, natter_proto::ErrorCode::RATE_LIMITED);
                assert!(retry_after_ms > 0 && retry_after_ms <= 30_000, "{retry_after_ms}");
            }
            other => panic!("{other}"),
        }
    }
    // Other accounts are not affected.
    node_b.client().await.login("bob@example.org", PASSWORD, "d").await.unwrap();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_second_factors_and_sign_in_limits_hold_across_nodes() {
    use natter_proto::ErrorCode;
    use natter_server::auth::totp::code_at;
    let Some(db) = PgDatabase::create().await else { return };
    let limited = |c: &mut natter_server::config::Config| c.auth.attempts_per_minute = Some(8);
    let node_a = TestServer::start_postgres_with(&db, limited).await;
    let node_b = TestServer::start_postgres_with(&db, limited).await;
    let (laptop, _) = node_a.new_user("alice@example.org").await;
    let (phone, _) = node_b.new_device("alice@example.org", "phone").await;

    // Signed out from node A, the phone's connection on node B closes at once.
    let sessions = laptop.sessions().await.unwrap();
    let phone_id = sessions.iter().find(|s| s.device_name == "phone").unwrap().session_id.clone();
    assert_eq!(laptop.revoke_sessions(Some(&phone_id)).await.unwrap(), 1);
    let closed = tokio::time::timeout(WAIT, phone.closed()).await.expect("closed on the other node");
    assert_eq!(closed.code(), Some(ErrorCode::SESSION_INVALID));

    // TOTP turned on at node A guards a sign-in at node B; the challenge from
    // B is completed at A; a code spent at A is refused at B.
    let setup = laptop.enable_totp().await.unwrap();
    let secret = natter_tests::totp_secret(&setup.secret_base32);
    laptop.confirm_totp(&code_at(&secret, now_secs())).await.unwrap();
    let at_b = node_b.client().await;
    let Err(ClientError::MfaRequired { challenge, .. }) = at_b.login("alice@example.org", PASSWORD, "tablet").await
    else {
        panic!("the second factor is required on every node")
    };
    let at_a = node_a.client().await;
    let next = code_at(&secret, now_secs() + 30);
    at_a.verify_mfa(&challenge, &next, false).await.expect("the challenge is shared");
    let at_b = node_b.client().await;
    let Err(ClientError::MfaRequired { challenge, .. }) = at_b.login("alice@example.org", PASSWORD, "tablet").await
    else {
        panic!()
    };
    let e = at_b.verify_mfa(&challenge, &next, false).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CODE_INVALID), "replayed on another node: {e}");

    // One address's sign-ins are counted over both nodes: 8 a minute in all.
    // (Sign-ins so far: 1 signup + 2 logins + 2 first factors = 5 attempts.)
    let mut refused = None;
    for i in 0..8 {
        let node = if i % 2 == 0 { &node_a } else { &node_b };
        let c = node.client().await;
        match c.login("nobody@example.org", PASSWORD, "d").await {
            Err(e) if e.code() == Some(ErrorCode::RATE_LIMITED) => {
                refused = Some(i);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS)),
            Ok(_) => panic!("nobody has no account"),
        }
    }
    // Each node's own bucket (8) would allow 8 more on each; the shared count stops the 4th.
    assert_eq!(refused, Some(3), "the limit holds for the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_to_a_number_are_limited_over_every_node() {
    use natter_proto::ErrorCode;
    let Some(db) = PgDatabase::create().await else { return };
    let fake = natter_tests::twilio_fake::TwilioFake::start().await;
    let (sms_a, sms_b) = (fake.messaging_config(), fake.messaging_config());
    let node_a = TestServer::start_postgres_with(&db, move |c| c.sms = sms_a).await;
    let node_b = TestServer::start_postgres_with(&db, move |c| c.sms = sms_b).await;
    let (a, b) = (node_a.client().await, node_b.client().await);
    a.start_phone("+4915123456789").await.unwrap();
    b.start_phone("+4915123456789").await.unwrap();
    a.start_phone("+4915123456789").await.unwrap();
    let e = b.start_phone("+4915123456789").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED), "3 texts per number in 10 minutes, whichever node: {e}");
    assert_eq!(fake.sent().len(), 3);
    // A code texted through one node is checked on the other.
    let code: String = fake.sent()[2].body.chars().filter(char::is_ascii_digit).take(6).collect();
    let (token, who) = node_b.client().await.sign_in_with_phone("+4915123456789", &code, "d", "Zoe").await.unwrap();
    assert_eq!((who.email.as_str(), who.display_name.as_str()), ("", "Zoe"), "a new account, made by the number");
    // The account made through node B signs in on node A.
    let on_a = node_a.resume(&token).await;
    assert_eq!(on_a.identity().unwrap().user_id, who.user_id);
}
