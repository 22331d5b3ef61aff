//! Web Push through the protocol, to a push service that checks VAPID and
//! decrypts every payload (tests/src/push_service.rs).

use std::time::Duration;

use natter_client::Client;
use natter_proto::ErrorCode;
use natter_tests::push_service::{FakeSubscription, PushServiceFake, Received};
use natter_tests::TestServer;

const COALESCE_MS: u64 = 300;
const WAIT: Duration = Duration::from_secs(10);

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = COALESCE_MS;
        c.push.retry_base_ms = 50;
        c.push.retry_max_ms = 200;
        c.push.max_attempts = 3;
        c.push.request_timeout_ms = 1000;
    })
    .await
}

/// Subscribes the client's device with a new subscription of `push`.
async fn subscribe(client: &Client, push: &PushServiceFake) -> FakeSubscription {
    let key = client.push_config().await.unwrap().application_server_key;
    assert_eq!(key.len(), 65);
    let sub = push.subscribe(&key);
    client.register_push(&sub.endpoint, &sub.p256dh, &sub.auth).await.unwrap();
    sub
}

/// Drops `client` and waits until `observer` sees `user_id` offline.
async fn go_offline(client: Client, observer: &Client, user_id: &str) {
    drop(client);
    natter_tests::wait_offline(observer, user_id).await;
}

/// Alice, and Bob subscribed to a new push service and offline, in a direct
/// conversation.
struct Dm {
    server: TestServer,
    push: PushServiceFake,
    alice: Client,
    bob_token: String,
    bob_id: String,
    dm: String,
}

async fn alice_and_offline_bob() -> Dm {
    let server = server().await;
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let bob_id = bob.identity().unwrap().user_id;
    subscribe(&bob, &push).await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    go_offline(bob, &alice, &bob_id).await;
    Dm { server, push, alice, bob_token, bob_id, dm }
}

fn for_endpoint<'a>(received: &'a [Received], sub: &FakeSubscription) -> Vec<&'a Received> {
    received.iter().filter(|r| r.endpoint == sub.endpoint).collect()
}

#[tokio::test]
async fn an_offline_recipient_gets_one_encrypted_signed_notification_and_an_online_one_none() {
    let server = server().await;
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let bob_id = bob.identity().unwrap().user_id;
    let bob_sub = subscribe(&bob, &push).await;
    let carol_sub = subscribe(&carol, &push).await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let group = alice.create_group("plans", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    go_offline(bob, &alice, &bob_id).await;

    let seq = alice.send_text(&dm, "m1", "are you there?").await.unwrap().seq;
    let got = push.wait_for(WAIT, "bob's notification", |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0];
    assert_eq!(n.endpoint, bob_sub.endpoint);
    assert_eq!(n.payload["conversation_id"], dm.as_str());
    assert_eq!(n.payload["conversation_kind"], "direct");
    assert_eq!(n.payload["seq"], seq);
    assert_eq!(n.payload["count"], 1);
    assert_eq!(n.payload["sender_id"], alice.identity().unwrap().user_id.as_str());
    assert_eq!(n.payload["text"], "are you there?");
    assert_eq!(n.urgency.as_deref(), Some("high"));
    assert!(n.ttl > 0);
    assert_eq!(n.topic.as_ref().map(String::len), Some(32));

    // A group message: bob (offline) is told, carol (connected) is not.
    alice.send_text(&group, "g1", "lunch at noon").await.unwrap();
    let got = push.wait_for(WAIT, "the group notification", |r| r.len() == 2).await;
    assert_eq!(got[1].endpoint, bob_sub.endpoint);
    assert_eq!(got[1].payload["conversation_kind"], "group");
    assert_eq!(got[1].payload["conversation_name"], "plans");
    assert_eq!(got[1].urgency.as_deref(), Some("normal"));
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert!(for_endpoint(&push.received(), &carol_sub).is_empty());

    // Bob back online: nothing more for him.
    let bob = server.resume(&bob_token).await;
    let _ = bob.push_config().await.unwrap();
    alice.send_text(&dm, "m2", "oh, you're back").await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(push.received().len(), 2, "{:?}", push.received());
}

#[tokio::test]
async fn muted_conversations_are_silent_and_previews_can_be_turned_off() {
    let Dm { server, push, alice, bob_token, bob_id, dm, .. } = alice_and_offline_bob().await;
    let bob = server.resume(&bob_token).await;
    bob.mute(&dm, 0).await.unwrap();
    let config = bob.push_config().await.unwrap();
    assert!(config.registered && config.show_text);
    assert_eq!(config.muted.len(), 1);
    assert_eq!((config.muted[0].conversation_id.as_str(), config.muted[0].until_ms), (dm.as_str(), 0));
    go_offline(bob, &alice, &bob_id).await;

    alice.send_text(&dm, "m1", "muted one").await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert!(push.received().is_empty(), "{:?}", push.received());

    let bob = server.resume(&bob_token).await;
    bob.unmute(&dm).await.unwrap();
    bob.set_push_previews(false).await.unwrap();
    let config = bob.push_config().await.unwrap();
    assert!(config.muted.is_empty() && !config.show_text);
    go_offline(bob, &alice, &bob_id).await;
    alice.send_text(&dm, "m2", "a secret plan").await.unwrap();
    let got = push.wait_for(WAIT, "the notification without text", |r| !r.is_empty()).await;
    assert!(got[0].payload.get("text").is_none(), "{:?}", got[0].payload);
    assert_eq!(got[0].payload["count"], 1);

    // Muted for a while only: past that time, notifications come again.
    let bob = server.resume(&bob_token).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    bob.mute(&dm, now + 800).await.unwrap();
    go_offline(bob, &alice, &bob_id).await;
    alice.send_text(&dm, "m3", "during the mute").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(push.received().len(), 1);
    alice.send_text(&dm, "m4", "after the mute").await.unwrap();
    push.wait_for(WAIT, "the notification after the mute", |r| r.len() == 2).await;
}

#[tokio::test]
async fn a_burst_is_coalesced_into_few_notifications_that_count_every_message() {
    let Dm { server: _server, push, alice, dm, .. } = alice_and_offline_bob().await;

    let mut last = 0;
    for i in 0..20 {
        last = alice.send_text(&dm, &format!("b{i}"), &format!("burst {i}")).await.unwrap().seq;
    }
    let got = push
        .wait_for(WAIT, "all 20 messages counted", |r| {
            r.iter().map(|n| n.payload["count"].as_u64().unwrap()).sum::<u64>() == 20
        })
        .await;
    assert!(got.len() <= 4, "coalesced: {} notifications", got.len());
    let newest = got.last().unwrap();
    assert_eq!(newest.payload["seq"], last);
    assert_eq!(newest.payload["text"], "burst 19");
    // One topic for the conversation: a newer notification replaces an older one.
    assert!(got.iter().all(|n| n.topic == newest.topic));
}

#[tokio::test]
async fn a_gone_subscription_is_removed_and_never_tried_again() {
    let Dm { server, push, alice, bob_token, bob_id, dm, .. } = alice_and_offline_bob().await;
    push.answer_next(410, None, 1);
    alice.send_text(&dm, "m1", "hello?").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while push.attempts().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bob = server.resume(&bob_token).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.push_config().await.unwrap().registered {
        assert!(tokio::time::Instant::now() < deadline, "the subscription stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go_offline(bob, &alice, &bob_id).await;
    alice.send_text(&dm, "m2", "anyone?").await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(push.attempts().len(), 1, "{:?}", push.attempts());
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_given_up_and_retry_after_is_honoured() {
    let Dm { server: _server, push, alice, dm, .. } = alice_and_offline_bob().await;

    // max_attempts = 3: three 500s, and the notification is given up.
    push.answer_next(500, None, 3);
    alice.send_text(&dm, "m1", "first").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while push.attempts().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "not retried: {:?}", push.attempts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(push.attempts().len(), 3, "given up after three tries");
    assert!(push.received().is_empty());

    // 429 with Retry-After: 1 second: waited for, then delivered.
    push.answer_next(429, Some(1), 1);
    let sent = std::time::Instant::now();
    alice.send_text(&dm, "m2", "second").await.unwrap();
    let got = push.wait_for(WAIT, "the retried notification", |r| !r.is_empty()).await;
    assert!(sent.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    assert_eq!(got[0].payload["text"], "second");
    let statuses: Vec<u16> = push.attempts().iter().map(|a| a.1).collect();
    assert_eq!(statuses, vec![500, 500, 500, 429, 201]);
}

#[tokio::test]
async fn a_hanging_push_service_never_holds_up_chat() {
    let server = server().await;
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let bob_id = bob.identity().unwrap().user_id;
    subscribe(&bob, &push).await;
    let group = alice.create_group("g", &["bob@example.org", "carol@example.org"]).await.unwrap().conversation_id;
    go_offline(bob, &alice, &bob_id).await;
    push.hang(true);
    let (mut feed, _) = carol.sync(None).await.unwrap();
    alice.send_text(&group, "h0", "first").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while push.attempts().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The push service holds natterd's request; chat goes on.
    for i in 1..30 {
        alice.send_text(&group, &format!("h{i}"), &format!("message {i}")).await.unwrap();
    }
    let items = natter_tests::feed_until(&mut feed, WAIT, |item| {
        natter_tests::texts(std::slice::from_ref(item)).iter().any(|t| t == "message 29")
    })
    .await;
    assert!(natter_tests::texts(&items).contains(&"message 29".to_string()));
    push.hang(false);
    push.wait_for(WAIT, "a notification once the service answers", |r| !r.is_empty()).await;
}

#[tokio::test]
async fn push_requests_are_checked_and_a_device_only_touches_its_own_subscription() {
    let server = TestServer::start().await;
    let push = PushServiceFake::start().await;
    let anonymous = server.client().await;
    let code = |r: Result<(), natter_client::ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(anonymous.register_push("https://push.example/x", &[4; 65], &[0; 16]).await),
        Some(ErrorCode::UNAUTHENTICATED)
    );
    assert_eq!(code(anonymous.unregister_push().await), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(anonymous.push_config().await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(code(anonymous.set_push_previews(false).await), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(code(anonymous.mute("00000000-0000-4000-8000-000000000000", 0).await), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(code(anonymous.unmute("00000000-0000-4000-8000-000000000000").await), Some(ErrorCode::UNAUTHENTICATED));

    let (bob, _) = server.new_user("bob@example.org").await;
    let key = bob.push_config().await.unwrap().application_server_key;
    let sub = push.subscribe(&key);
    // This server does not allow plain http, even to loopback.
    let e = code(bob.register_push(&sub.endpoint, &sub.p256dh, &sub.auth).await);
    assert_eq!(e, Some(ErrorCode::INVALID_ARGUMENT));
    let e = bob.register_push("http://push.example.net/x", &sub.p256dh, &sub.auth).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT));
    assert!(e.to_string().contains("https"), "{e}");
    let https = "https://push.example.net/push/abc?up=1";
    for (p256dh, auth) in
        [(&sub.p256dh[..64], &sub.auth[..]), (&sub.p256dh[..], &sub.auth[..15]), (&[4u8; 65][..], &sub.auth[..])]
    {
        assert_eq!(code(bob.register_push(https, p256dh, auth).await), Some(ErrorCode::INVALID_ARGUMENT));
    }
    assert!(!bob.push_config().await.unwrap().registered);
    bob.register_push(https, &sub.p256dh, &sub.auth).await.unwrap();
    let config = bob.push_config().await.unwrap();
    assert!(config.registered);
    assert_eq!(config.endpoint, https);

    // Bob's other device has none, and unregistering there leaves this one.
    let (bob2, _) = server.new_device("bob@example.org", "phone").await;
    assert!(!bob2.push_config().await.unwrap().registered);
    bob2.unregister_push().await.unwrap();
    assert!(bob.push_config().await.unwrap().registered);

    // Someone else's conversation cannot be muted; nor an unknown one.
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("carol@example.org").await;
    let theirs = alice.open_direct("carol@example.org").await.unwrap().conversation_id;
    assert_eq!(code(bob.mute(&theirs, 0).await), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(code(bob.unmute(&theirs).await), Some(ErrorCode::NOT_A_MEMBER));
    assert_eq!(code(bob.mute("00000000-0000-4000-8000-000000000000", 0).await), Some(ErrorCode::NOT_FOUND));
    assert_eq!(code(bob.mute("not-an-id", 0).await), Some(ErrorCode::INVALID_ARGUMENT));
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    assert_eq!(code(bob.mute(&dm, 1).await), Some(ErrorCode::INVALID_ARGUMENT), "a time in the past");

    // Signing out removes the device's subscription.
    bob.logout().await.unwrap();
    let (bob, _) = server.new_device("bob@example.org", "laptop").await;
    assert!(!bob.push_config().await.unwrap().registered);
}

#[tokio::test]
async fn with_push_off_registering_is_unavailable() {
    let server = TestServer::start_with(|c| c.push.enabled = false).await;
    let (bob, _) = server.new_user("bob@example.org").await;
    assert_eq!(bob.push_config().await.unwrap_err().code(), Some(ErrorCode::UNAVAILABLE));
    let e = bob.register_push("https://push.example.net/x", &[4; 65], &[0; 16]).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAVAILABLE));
}

#[tokio::test]
async fn natter_admin_vapid_show_prints_the_key_clients_subscribe_with() {
    use base64::Engine as _;
    let server = server().await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let key = bob.push_config().await.unwrap().application_server_key;
    let show = |dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_natter-admin-under-test"))
            .args(["vapid", "show", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = show(server.data_dir());
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(printed.trim()).unwrap(), key);
    // Never a key of its own: a directory natterd never started on has none.
    let empty = tempfile::tempdir().unwrap();
    let out = show(empty.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server key"), "{out:?}");
    assert!(!empty.path().join("secret.key").exists());
}

/// What a natterd child needs to send to the test push service.
const PUSH_ENV: &[(&str, &str)] =
    &[("NATTER_PUSH_ALLOW_HTTP_LOOPBACK", "1"), ("NATTER_PUSH_COALESCE_MS", "100"), ("NATTER_PUSH_LEASE_MS", "1500")];

/// Who holds the push worker's lease (it names the node's data directory),
/// once someone does.
async fn push_lease_holder(db: &natter_tests::PgDatabase) -> String {
    let (pg, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    loop {
        let rows = pg.query("SELECT holder FROM followers WHERE name = 'push'", &[]).await.unwrap();
        if let Some(row) = rows.first() {
            return row.get::<_, String>(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Signs `email` up on `node` with a subscription of `push`, then
/// disconnects; returns the subscription.
async fn offline_subscriber(
    config: &natter_client::ClientConfig,
    email: &str,
    push: &PushServiceFake,
) -> FakeSubscription {
    let c = Client::connect(config).await.unwrap();
    c.signup(email, natter_tests::PASSWORD, "").await.unwrap();
    c.login(email, natter_tests::PASSWORD, "phone").await.unwrap();
    let sub = subscribe(&c, push).await;
    c.close().await;
    sub
}

async fn signed_in(config: &natter_client::ClientConfig, email: &str) -> Client {
    let c = Client::connect(config).await.unwrap();
    c.signup(email, natter_tests::PASSWORD, "").await.unwrap();
    c.login(email, natter_tests::PASSWORD, "laptop").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natterd_killed_mid_burst_sends_every_due_notification_after_restart() {
    let push = PushServiceFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = crate::crash::free_udp_port();
    // Retries far apart: at the kill, every notification is waiting for one.
    let mut env = PUSH_ENV.to_vec();
    env.extend([("NATTER_PUSH_RETRY_BASE_MS", "60000"), ("NATTER_PUSH_MAX_ATTEMPTS", "5")]);
    let mut node = natter_tests::ChildServer::spawn_with_env(&crate::natterd(), dir.path(), addr, &env);
    let config = node.client_config();
    let alice = signed_in(&config, "alice@example.org").await;
    let mut due = Vec::new();
    for i in 0..8 {
        let email = format!("bob{i}@example.org");
        let sub = offline_subscriber(&config, &email, &push).await;
        let dm = alice.open_direct(&email).await.unwrap().conversation_id;
        due.push((sub, dm));
    }
    push.answer_next(500, None, 1000);
    let mut last = Vec::new();
    for (_, dm) in &due {
        alice.send_text(dm, "m1", "first").await.unwrap();
        last.push(alice.send_text(dm, "m2", "second").await.unwrap().seq);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while push.attempts().len() < due.len() {
        assert!(tokio::time::Instant::now() < deadline, "not attempted: {:?}", push.attempts());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(alice);
    node.kill9();
    assert!(push.received().is_empty());

    push.clear_script();
    let _node = natter_tests::ChildServer::spawn_with_env(&crate::natterd(), dir.path(), addr, &env);
    let got = push
        .wait_for(WAIT, "a notification of every conversation's newest message", |r| {
            due.iter().zip(&last).all(|((sub, _), seq)| {
                r.iter().any(|n| n.endpoint == sub.endpoint && n.payload["seq"].as_u64() == Some(*seq))
            })
        })
        .await;
    assert!(got.iter().all(|n| n.payload["text"] == "second" || n.payload["text"] == "first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_each_notification_once_and_the_survivor_takes_over_the_lease() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let push = PushServiceFake::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut env_a = PUSH_ENV.to_vec();
    env_a.extend([("NATTER_STORE_BACKEND", "postgres"), ("NATTER_STORE_URL", db.url())]);
    let node_a = natter_tests::ChildServer::spawn_with_env(
        &crate::natterd(),
        dir_a.path(),
        crate::crash::free_udp_port(),
        &env_a,
    );
    // One certificate and one server key (so one VAPID key) for both.
    let cert = dir_a.path().join("tls/cert.pem");
    let key = dir_a.path().join("tls/key.pem");
    let secret = dir_a.path().join("secret.key");
    let mut env_b = env_a.clone();
    env_b.extend([
        ("NATTER_TLS_CERT", cert.to_str().unwrap()),
        ("NATTER_TLS_KEY", key.to_str().unwrap()),
        ("NATTER_AUTH_SECRET_KEY_FILE", secret.to_str().unwrap()),
    ]);
    let node_b = natter_tests::ChildServer::spawn_with_env(
        &crate::natterd(),
        dir_b.path(),
        crate::crash::free_udp_port(),
        &env_b,
    );

    // Who holds the lease: its holder names the node's data directory.
    let holder = push_lease_holder(&db).await;
    let a_holds = holder.ends_with(&dir_a.path().canonicalize().unwrap().display().to_string());
    let (mut holding, other) = if a_holds { (node_a, node_b) } else { (node_b, node_a) };

    // Alice writes on the node that will survive; Bob is offline.
    let config = other.client_config();
    let bob = offline_subscriber(&config, "bob@example.org", &push).await;
    let alice = signed_in(&config, "alice@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&dm, "m1", "one").await.unwrap();
    push.wait_for(WAIT, "the first notification", |r| !r.is_empty()).await;
    // Both nodes follow the log; one sends.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(push.received().len(), 1, "{:?}", push.received());

    holding.kill9();
    let mut last = 0;
    for i in 2..=5 {
        last = alice.send_text(&dm, &format!("m{i}"), &format!("message {i}")).await.unwrap().seq;
    }
    let got = push
        .wait_for(WAIT, "the rest, from the surviving node", |r| {
            r.iter().any(|n| n.payload["seq"].as_u64() == Some(last))
        })
        .await;
    let after: u64 = got[1..].iter().map(|n| n.payload["count"].as_u64().unwrap()).sum();
    assert!(after >= 4, "every later message counted: {got:?}");
    assert!(got.iter().all(|n| n.endpoint == bob.endpoint));
}

#[tokio::test]
async fn too_large_is_sent_again_without_the_text() {
    let Dm { server: _server, push, alice, dm, .. } = alice_and_offline_bob().await;
    push.answer_next(413, None, 1);
    alice.send_text(&dm, "m1", &"long words ".repeat(300)).await.unwrap();
    let got = push.wait_for(WAIT, "the smaller notification", |r| !r.is_empty()).await;
    assert!(got[0].payload.get("text").is_none(), "{:?}", got[0].payload);
    assert_eq!(got[0].payload["count"], 1);
    let statuses: Vec<u16> = push.attempts().iter().map(|a| a.1).collect();
    assert_eq!(statuses, vec![413, 201]);
}

#[tokio::test]
async fn membership_changes_are_followed_a_removed_member_is_not_told_and_a_new_one_is() {
    let server = server().await;
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (dave, _) = server.new_user("dave@example.org").await;
    let (bob_id, dave_id) = (bob.identity().unwrap().user_id, dave.identity().unwrap().user_id);
    let bob_sub = subscribe(&bob, &push).await;
    let dave_sub = subscribe(&dave, &push).await;
    let group = alice.create_group("crew", &["bob@example.org"]).await.unwrap().conversation_id;
    go_offline(bob, &alice, &bob_id).await;
    go_offline(dave, &alice, &dave_id).await;

    alice.send_text(&group, "g1", "one").await.unwrap();
    push.wait_for(WAIT, "bob's notification", |r| r.len() == 1).await;
    alice.remove_member(&group, &bob_id).await.unwrap();
    alice.add_members(&group, &["dave@example.org"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 2)).await;
    let seq = alice.send_text(&group, "g2", "two").await.unwrap().seq;
    let got = push.wait_for(WAIT, "dave's notification", |r| r.len() == 2).await;
    assert_eq!(got[1].endpoint, dave_sub.endpoint);
    assert_eq!(got[1].payload["seq"], seq);
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    let to_bob = for_endpoint(&push.received(), &bob_sub).len();
    assert_eq!(to_bob, 1, "nothing for bob after his removal: {:?}", push.received());
}

/// With `idle_after_ms`, a connected device that has made no request for
/// that long counts as away: its user is notified. A request (not the feed's
/// own acknowledgements) makes it active again.
#[tokio::test]
async fn with_idle_after_a_connected_but_idle_device_is_notified_and_an_active_one_is_not() {
    const IDLE_MS: u64 = 1500;
    let server = TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = COALESCE_MS;
        c.push.idle_after_ms = IDLE_MS;
    })
    .await;
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let bob_sub = subscribe(&bob, &push).await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    // Bob's feed runs and acknowledges what it gets, by itself.
    let (mut feed, _) = bob.sync(None).await.unwrap();

    alice.send_text(&dm, "m1", "you just did something").await.unwrap();
    natter_tests::feed_until(&mut feed, WAIT, |i| natter_tests::texts(std::slice::from_ref(i)).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert!(push.received().is_empty(), "bob was active: {:?}", push.received());

    idle_then_active(&push, (&alice, &dm), (&bob, &bob_sub), IDLE_MS + 200, Duration::ZERO).await;
}

/// Bob stays idle for `idle_ms`: a message is due a notification though he
/// is connected; then he makes a request, and (once `recorded`, the time his
/// activity takes to reach the sending node) a message is not.
async fn idle_then_active(
    push: &PushServiceFake,
    (alice, dm): (&Client, &str),
    (bob, bob_sub): (&Client, &FakeSubscription),
    idle_ms: u64,
    recorded: Duration,
) {
    tokio::time::sleep(Duration::from_millis(idle_ms)).await;
    let seq = alice.send_text(dm, "m2", "still there?").await.unwrap().seq;
    let got = push.wait_for(WAIT, "a notification for connected but idle bob", |r| !r.is_empty()).await;
    assert_eq!(got[0].endpoint, bob_sub.endpoint);
    assert_eq!(got[0].payload["seq"], seq);

    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    bob.conversations(10).await.unwrap();
    tokio::time::sleep(recorded).await;
    alice.send_text(dm, "m3", "oh, you're back").await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(push.received().len(), 1, "bob was active again: {:?}", push.received());
}

/// The same across two nodes on PostgreSQL: Bob is connected to the node
/// that does not send notifications, which learns of his activity through
/// the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_nodes_activity_on_one_node_is_seen_by_the_node_that_sends() {
    const IDLE_MS: u64 = 3000;
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let tweak = |c: &mut natter_server::config::Config| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = COALESCE_MS;
        c.push.idle_after_ms = IDLE_MS;
        c.push.lease_ms = 1500;
    };
    let nodes = [TestServer::start_postgres_with(&db, tweak).await, TestServer::start_postgres_with(&db, tweak).await];
    let holder = push_lease_holder(&db).await;
    let holds = |n: &TestServer| holder.ends_with(&n.data_dir().canonicalize().unwrap().display().to_string());
    let (sending, other) = if holds(&nodes[0]) { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    assert!(holds(sending), "the lease names a node's data directory: {holder}");

    let push = PushServiceFake::start().await;
    let (alice, _) = sending.new_user("alice@example.org").await;
    let (bob, _) = other.new_user("bob@example.org").await;
    let bob_sub = subscribe(&bob, &push).await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.send_text(&dm, "m1", "you just did something").await.unwrap();
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert!(push.received().is_empty(), "bob was active on the other node: {:?}", push.received());

    // His request is recorded for the other node within a second.
    idle_then_active(&push, (&alice, &dm), (&bob, &bob_sub), IDLE_MS + 500, Duration::from_millis(1500)).await;
}
