//! End-to-end encryption's delivery service through the protocol: device keys
//! and KeyPackages, made by the SDK's real openmls device state.

use std::collections::HashSet;
use std::time::Duration;

use natter_client::e2ee::{self, MlsDevice};
use natter_client::{proto, Client, FeedItem};
use natter_proto::wire::request::Body;
use natter_proto::ErrorCode;
use natter_server::config::Config;
use natter_server::domain::{DeviceId, Millis, UserId};
use natter_tests::TestServer;

/// `client`'s MLS device, its state in a fresh directory.
fn device_of(client: &Client) -> (MlsDevice, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let id = client.identity().unwrap();
    (MlsDevice::open(dir.path(), &id.user_id, &id.device_id).unwrap(), dir)
}

fn code(e: impl Into<natter_client::ClientError>) -> ErrorCode {
    e.into().code().expect("a server error")
}

/// The claimed package is a valid KeyPackage of `owner`'s `device` with `key`.
fn assert_package_of(bytes: &[u8], owner: &Client, key: &[u8], last_resort: bool) {
    let id = owner.identity().unwrap();
    let (user, device) = (UserId::parse(&id.user_id).unwrap(), DeviceId(id.device_id.parse().unwrap()));
    let now = Millis(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64);
    natter_server::mls::check(bytes, user, device, key, last_resort, now, &Default::default())
        .unwrap_or_else(|e| panic!("claimed package {e}"));
}

async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(tweak).await
}

#[tokio::test]
async fn a_contact_claims_each_key_package_once_then_the_last_resort_and_the_device_is_told() {
    let server = server_with(|c| c.mls.low_water = 3).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let alice_id = alice.identity().unwrap();
    let (device, _dir) = device_of(&alice);
    assert!(device.register(&alice).await.unwrap(), "a first key changes the record");
    assert!(!device.register(&alice).await.unwrap(), "the same key again changes nothing");
    // Before it has any, a claim finds the device exhausted.
    let stock = device.top_up(&alice).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort, stock.device_id.as_str()), (100, true, &*alice_id.device_id));
    assert_eq!(e2ee::key_package_stock(&alice).await.unwrap(), stock);

    // Bob shares no conversation with Alice yet: she is not there for him.
    let e = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NOT_FOUND);
    assert_eq!(code(e2ee::device_keys(&bob, &alice_id.user_id).await.unwrap_err()), ErrorCode::NOT_FOUND);
    bob.open_direct("alice@example.org").await.unwrap();
    let keys = e2ee::device_keys(&bob, &alice_id.user_id).await.unwrap();
    assert_eq!(keys.devices.len(), 1);
    assert_eq!(keys.devices[0].device_id, alice_id.device_id);
    assert_eq!(keys.devices[0].signature_key, device.signature_key());

    let (mut feed, _) = alice.sync(None).await.unwrap();
    let mut seen = HashSet::new();
    for i in 0..100u32 {
        let claimed = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap();
        assert_eq!(claimed.packages.len(), 1, "one per device");
        let p = &claimed.packages[0];
        assert!(!p.last_resort, "claim {i}");
        assert_package_of(&p.key_package, &alice, device.signature_key(), false);
        assert!(seen.insert(p.key_package.clone()), "claim {i} handed out a package twice");
    }
    // The ordinary ones are gone: the last-resort one now, every time.
    for _ in 0..2 {
        let claimed = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap();
        assert!(claimed.packages[0].last_resort);
        assert_package_of(&claimed.packages[0].key_package, &alice, device.signature_key(), true);
    }
    let stock = e2ee::key_package_stock(&alice).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort), (0, true));
    // Alice's connection heard that her stock ran low.
    let items = natter_tests::feed_until(
        &mut feed,
        Duration::from_secs(5),
        |i| matches!(i, FeedItem::KeyPackageStock(s) if s.remaining == 0),
    )
    .await;
    let FeedItem::KeyPackageStock(signal) = items.last().unwrap() else { panic!("no stock signal: {items:?}") };
    assert_eq!((signal.device_id.as_str(), signal.low_water), (&*alice_id.device_id, 3));
    // Topping up refills it.
    assert_eq!(device.top_up(&alice).await.unwrap().remaining, 100);
    // Her own claim skips her calling device.
    let own = e2ee::claim_key_packages(&alice, &alice_id.user_id).await.unwrap();
    assert!(own.packages.is_empty() && own.exhausted_device_ids.is_empty());
}

#[tokio::test]
async fn a_device_without_packages_is_reported_exhausted_and_a_new_key_drops_the_old_stock() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let alice_id = alice.identity().unwrap();
    bob.open_direct("alice@example.org").await.unwrap();
    let (device, _dir) = device_of(&alice);
    device.register(&alice).await.unwrap();
    let one = device.key_package(false).unwrap();
    let stock = e2ee::publish_key_packages(&alice, vec![one.clone(), one], Vec::new()).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort), (1, false), "the same package twice is stored once");
    assert_eq!(e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap().packages.len(), 1);
    let claimed = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap();
    assert!(claimed.packages.is_empty());
    assert_eq!(claimed.exhausted_device_ids, vec![alice_id.device_id.clone()]);

    // The device lost its state: a new key pair replaces the old, whose
    // KeyPackages are never handed out again.
    device.top_up(&alice).await.unwrap();
    let (again, _dir2) = device_of(&alice);
    assert_ne!(again.signature_key(), device.signature_key());
    assert!(again.register(&alice).await.unwrap());
    assert_eq!(e2ee::key_package_stock(&alice).await.unwrap().remaining, 0);
    let claimed = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap();
    assert_eq!(claimed.exhausted_device_ids, vec![alice_id.device_id.clone()]);
    let keys = e2ee::device_keys(&bob, &alice_id.user_id).await.unwrap();
    assert_eq!(keys.devices[0].signature_key, again.signature_key());

    // Signing out removes the device's key.
    alice.logout().await.unwrap();
    assert!(e2ee::device_keys(&bob, &alice_id.user_id).await.unwrap().devices.is_empty());
    assert!(e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap().exhausted_device_ids.is_empty());
}

#[tokio::test]
async fn bad_keys_and_key_packages_get_typed_errors_and_store_nothing() {
    let server = server_with(|c| c.mls.stock_capacity = 5).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let alice_id = alice.identity().unwrap();
    let (device, _dir) = device_of(&alice);
    let (bob_device, _bob_dir) = device_of(&bob);

    // Unauthenticated: every request.
    let anonymous = server.client().await;
    let requests = [
        Body::RegisterDeviceKey(proto::RegisterDeviceKey::default()),
        Body::ListDeviceKeys(proto::ListDeviceKeys { user_id: alice_id.user_id.clone() }),
        Body::PublishKeyPackages(proto::PublishKeyPackages::default()),
        Body::GetKeyPackageStock(proto::GetKeyPackageStock {}),
        Body::ClaimKeyPackages(proto::ClaimKeyPackages { user_id: alice_id.user_id.clone() }),
    ];
    for body in requests {
        assert_eq!(code(anonymous.request(body).await.unwrap_err()), ErrorCode::UNAUTHENTICATED);
    }

    // No key registered yet.
    let package = device.key_package(false).unwrap();
    let e = e2ee::publish_key_packages(&alice, vec![package.clone()], Vec::new()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NO_DEVICE_KEY);
    assert_eq!(code(e2ee::key_package_stock(&alice).await.unwrap_err()), ErrorCode::NO_DEVICE_KEY);

    // A key with someone else's proof, or the wrong length.
    let register =
        |key: Vec<u8>, proof: Vec<u8>| Body::RegisterDeviceKey(proto::RegisterDeviceKey { signature_key: key, proof });
    // Bob's registration, replayed by Alice: his proof is for his ids.
    let bobs_registration = bob_device.register_request().unwrap();
    for body in [
        Body::RegisterDeviceKey(bobs_registration),
        register(device.signature_key().to_vec(), vec![0; 64]),
        register(vec![1; 31], vec![0; 64]),
        register(device.signature_key().to_vec(), vec![0; 63]),
        register(bob_device.signature_key().to_vec(), vec![0; 64]),
    ] {
        assert_eq!(code(alice.request(body).await.unwrap_err()), ErrorCode::INVALID_ARGUMENT);
    }
    device.register(&alice).await.unwrap();

    // Packages that do not validate, each alone and among good ones.
    let mut tampered = package.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let mut trailing = package.clone();
    trailing.push(0);
    let bobs = bob_device.key_package(false).unwrap();
    let last_resort = device.key_package(true).unwrap();
    let bad = [tampered, trailing, bobs, last_resort.clone(), b"not a key package".to_vec(), vec![0; 9000]];
    for (i, b) in bad.iter().enumerate() {
        let e = e2ee::publish_key_packages(&alice, vec![package.clone(), b.clone()], Vec::new()).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::KEY_PACKAGE_INVALID, "bad package {i}");
    }
    // An ordinary package in the last-resort place.
    let e = e2ee::publish_key_packages(&alice, Vec::new(), package.clone()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::KEY_PACKAGE_INVALID);
    let e = e2ee::publish_key_packages(&alice, Vec::new(), Vec::new()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::INVALID_ARGUMENT);
    let stock = e2ee::key_package_stock(&alice).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort), (0, false), "nothing was stored");

    // The stock's capacity, within one request and across two.
    let six: Vec<Vec<u8>> = (0..6).map(|_| device.key_package(false).unwrap()).collect();
    let e = e2ee::publish_key_packages(&alice, six.clone(), Vec::new()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::KEY_PACKAGES_FULL);
    e2ee::publish_key_packages(&alice, six[..4].to_vec(), last_resort).await.unwrap();
    let e = e2ee::publish_key_packages(&alice, six[4..].to_vec(), Vec::new()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::KEY_PACKAGES_FULL);
    let stock = e2ee::key_package_stock(&alice).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort, stock.capacity), (4, true, 5));

    // Malformed and unknown ids.
    for bad_id in ["", "not-an-id"] {
        assert_eq!(code(e2ee::claim_key_packages(&bob, bad_id).await.unwrap_err()), ErrorCode::INVALID_ARGUMENT);
        assert_eq!(code(e2ee::device_keys(&bob, bad_id).await.unwrap_err()), ErrorCode::INVALID_ARGUMENT);
    }
    let stranger = uuid::Uuid::new_v4().to_string();
    assert_eq!(code(e2ee::claim_key_packages(&bob, &stranger).await.unwrap_err()), ErrorCode::NOT_FOUND);
}

#[tokio::test]
async fn claims_are_rate_limited_per_caller_and_per_target() {
    let server = server_with(|c| {
        c.mls.claims_per_caller_per_hour = 3;
        c.mls.claims_per_target_per_hour = 3;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let alice_id = alice.identity().unwrap();
    bob.create_group("three", &["alice@example.org", "carol@example.org"]).await.unwrap();
    let (device, _dir) = device_of(&alice);
    device.register(&alice).await.unwrap();
    device.top_up(&alice).await.unwrap();
    for _ in 0..3 {
        e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap();
    }
    let e = e2ee::claim_key_packages(&bob, &alice_id.user_id).await.unwrap_err();
    let natter_client::ClientError::Server { code, retry_after_ms, .. } = e else { panic!("{e}") };
    assert_eq!(code, ErrorCode::RATE_LIMITED);
    assert!(retry_after_ms > 0);
    // Carol has claims left, but Alice has been claimed from enough.
    let e = e2ee::claim_key_packages(&carol, &alice_id.user_id).await.unwrap_err();
    assert_eq!(code_of(e), ErrorCode::RATE_LIMITED);
    // Refused claims took nothing: 3 of 100 went.
    assert_eq!(e2ee::key_package_stock(&alice).await.unwrap().remaining, 97);
}

fn code_of(e: natter_client::ClientError) -> ErrorCode {
    e.code().expect("a server error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_hand_each_key_package_out_once_under_concurrent_claims() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let tweak = |c: &mut Config| c.mls.claims_per_target_per_hour = 1000;
    let node_a = TestServer::start_postgres_with(&db, tweak).await;
    let node_b = TestServer::start_postgres_with(&db, tweak).await;
    let (alice, _) = node_a.new_user("alice@example.org").await;
    let (bob, _) = node_a.new_user("bob@example.org").await;
    let (carol, _) = node_b.new_user("carol@example.org").await;
    let alice_id = alice.identity().unwrap();
    bob.create_group("three", &["alice@example.org", "carol@example.org"]).await.unwrap();
    let (device, _dir) = device_of(&alice);
    device.register(&alice).await.unwrap();
    let packages: Vec<Vec<u8>> = (0..40).map(|_| device.key_package(false).unwrap()).collect();
    e2ee::publish_key_packages(&alice, packages, device.key_package(true).unwrap()).await.unwrap();
    let claim_many = |client: Client| {
        let user = alice_id.user_id.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                let c = e2ee::claim_key_packages(&client, &user).await.unwrap();
                got.push(c.packages[0].clone());
            }
            got
        })
    };
    let (on_a, on_b) = (claim_many(bob), claim_many(carol));
    let all: Vec<proto::ClaimedKeyPackage> = [on_a.await.unwrap(), on_b.await.unwrap()].concat();
    let ordinary: Vec<&Vec<u8>> = all.iter().filter(|p| !p.last_resort).map(|p| &p.key_package).collect();
    let distinct: HashSet<&Vec<u8>> = ordinary.iter().copied().collect();
    assert_eq!(ordinary.len(), 40, "every ordinary package handed out");
    assert_eq!(distinct.len(), 40, "and none twice");
    assert_eq!(all.iter().filter(|p| p.last_resort).count(), 10, "then the last-resort one");
    let stock = e2ee::key_package_stock(&alice).await.unwrap();
    assert_eq!((stock.remaining, stock.has_last_resort), (0, true));
}

/// A signed-in device with its MLS state set up: key registered, stock full.
struct Member {
    client: Client,
    device: MlsDevice,
    dir: tempfile::TempDir,
}

impl Member {
    async fn new(client: Client) -> Self {
        let (device, dir) = device_of(&client);
        device.register(&client).await.unwrap();
        device.top_up(&client).await.unwrap();
        Self { client, device, dir }
    }

    fn user_id(&self) -> String {
        self.client.identity().unwrap().user_id
    }

    /// Opens everything new in the conversation; returns the texts.
    async fn read(&self, conv: &str) -> Vec<String> {
        let opened = self.device.catch_up(&self.client, conv).await.unwrap();
        opened
            .into_iter()
            .filter_map(|o| if let e2ee::Opened::Text { text, .. } = o { Some(text) } else { None })
            .collect()
    }
}

const MARKER: &str = "MARKER-4f1c9e-plaintext";

use natter_tests::files_containing;

fn mls_history(page: &proto::HistoryPage) -> (usize, usize) {
    let kinds = page.messages.iter().filter_map(|m| m.content.as_ref().and_then(|c| c.body.as_ref()));
    kinds.fold((0, 0), |(apps, commits), body| match body {
        proto::content::Body::Mls(_) => (apps + 1, commits),
        proto::content::Body::MlsCommit(_) => (apps, commits + 1),
        other => panic!("plaintext in an encrypted conversation: {other:?}"),
    })
}

async fn history(client: &Client, conv: &str) -> proto::HistoryPage {
    client.history(proto::GetHistory { conversation_id: conv.into(), limit: 100, ..Default::default() }).await.unwrap()
}

#[tokio::test]
async fn a_dm_and_a_group_with_a_two_device_member_chat_encrypted_and_no_server_file_holds_the_text() {
    let server = TestServer::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let carol = Member::new(server.new_user("carol@example.org").await.0).await;
    let carol2 = Member::new(server.new_device("carol@example.org", "carol's laptop").await.0).await;

    // A direct conversation: its own id, apart from the plaintext one.
    let plain = alice.client.open_direct("bob@example.org").await.unwrap();
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    assert!(dm.e2ee && !plain.e2ee);
    assert_ne!(dm.conversation_id, plain.conversation_id);
    let again = bob.client.open_direct_with("alice@example.org", true).await.unwrap();
    assert_eq!(again.conversation_id, dm.conversation_id, "the same from either side");
    let dm = dm.conversation_id;
    alice.device.create_group(&alice.client, &again).await.unwrap();
    assert_eq!(bob.device.catch_up(&bob.client, &dm).await.unwrap(), [e2ee::Opened::Joined { epoch: 1 }]);
    alice.device.send_text(&alice.client, &dm, &format!("{MARKER} hello bob")).await.unwrap();
    assert_eq!(bob.read(&dm).await, [format!("{MARKER} hello bob")]);
    bob.device.send_text(&bob.client, &dm, &format!("{MARKER} hi alice")).await.unwrap();
    assert_eq!(alice.read(&dm).await, [format!("{MARKER} hi alice")]);

    // A group of three, Carol with two devices: every device is a leaf.
    let group = alice.client.create_group_with("trio", &["bob@example.org", "carol@example.org"], true).await.unwrap();
    assert!(group.e2ee);
    let g = group.conversation_id.clone();
    alice.device.create_group(&alice.client, &group).await.unwrap();
    for m in [&bob, &carol, &carol2] {
        assert_eq!(m.device.catch_up(&m.client, &g).await.unwrap(), [e2ee::Opened::Joined { epoch: 1 }]);
    }
    let same = alice.device.epoch_authenticator(&g).unwrap();
    for m in [&bob, &carol, &carol2] {
        assert_eq!(m.device.epoch_authenticator(&g).unwrap(), same, "one group state");
    }
    carol2.device.send_text(&carol2.client, &g, &format!("{MARKER} from carol's laptop")).await.unwrap();
    for m in [&alice, &bob, &carol] {
        assert_eq!(m.read(&g).await, [format!("{MARKER} from carol's laptop")]);
    }
    alice.device.send_text(&alice.client, &g, &format!("{MARKER} from alice")).await.unwrap();
    for m in [&bob, &carol, &carol2] {
        assert_eq!(m.read(&g).await, [format!("{MARKER} from alice")]);
    }
    // The sender's own message opens from what it kept.
    let page = history(&alice.client, &g).await;
    let own = page.messages.last().unwrap();
    assert_eq!(
        alice.device.open_message(own).unwrap(),
        e2ee::Opened::Text { sender_user_id: alice.user_id(), text: format!("{MARKER} from alice") }
    );
    assert_eq!(mls_history(&page), (2, 1), "two application messages and the commit, nothing else");

    // Each device finds what it decrypted or sent in its own index (natterd
    // has none of it): every word, the last as a prefix, accents folded.
    let hits = bob.device.search_local("carol's lapt", None, 10).unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!((hits[0].conversation_id.as_str(), hits[0].sender_user_id.as_str()), (g.as_str(), &*carol2.user_id()));
    assert!(hits[0].snippet.contains("[laptop]"), "{hits:?}");
    assert_eq!(alice.device.search_local("HELLO", Some(&dm), 10).unwrap().len(), 1, "her own message, in the DM only");
    assert!(alice.device.search_local("hello", Some(&g), 10).unwrap().is_empty());
    assert!(bob.device.search_local("", None, 10).unwrap().is_empty());
    let search = proto::Search { query: "laptop".into(), limit: 10, ..Default::default() };
    assert!(bob.client.search(search).await.unwrap().groups.is_empty(), "natterd's index has nothing of it");

    // A restarted client carries on with its groups.
    let Member { client: bob_client, device, dir: bob_dir } = bob;
    drop(device);
    let id = bob_client.identity().unwrap();
    let device = MlsDevice::open(bob_dir.path(), &id.user_id, &id.device_id).unwrap();
    assert_eq!(device.epoch(&g).unwrap(), Some(1));
    carol.device.send_text(&carol.client, &g, "after bob's restart").await.unwrap();
    let opened = device.catch_up(&bob_client, &g).await.unwrap();
    assert!(matches!(&opened[..], [e2ee::Opened::Text { text, .. }] if text == "after bob's restart"), "{opened:?}");

    // What natterd refuses.
    let text = |t: &str| proto::Content { body: Some(proto::content::Body::Text(proto::Text { body: t.into() })) };
    let e = alice.client.send_content(&g, "plain-1", text("in the clear")).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ENCRYPTION_MISMATCH);
    let ciphertext = page.messages.last().unwrap().content.clone().unwrap();
    let e = alice.client.send_content(&plain.conversation_id, "mls-1", ciphertext.clone()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ENCRYPTION_MISMATCH);
    let e = alice.client.send_content(&dm, "mls-2", ciphertext).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::MLS_MESSAGE_INVALID, "the group's message does not go in the DM");
    let garbage = proto::Content {
        body: Some(proto::content::Body::Mls(proto::MlsMessage { message: vec![0, 1, 2], media_id: String::new() })),
    };
    assert_eq!(
        code(alice.client.send_content(&g, "mls-3", garbage).await.unwrap_err()),
        ErrorCode::MLS_MESSAGE_INVALID
    );
    let e = carol.client.send_content(&dm, "mls-4", text("x")).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NOT_A_MEMBER, "someone else's conversation");
    let anonymous = server.client().await;
    assert_eq!(code(anonymous.send_content(&dm, "mls-5", text("x")).await.unwrap_err()), ErrorCode::UNAUTHENTICATED);

    // natterd's files never held the text: database, WAL, the MLS store, the
    // search index, the media store.
    let found = files_containing(server.data_dir(), MARKER.as_bytes());
    assert!(found.is_empty(), "plaintext in {found:?}");
    // (the check can fail: a plaintext message's text is there)
    alice.client.send_text(&plain.conversation_id, "p-1", MARKER).await.unwrap();
    assert!(!files_containing(server.data_dir(), MARKER.as_bytes()).is_empty());
    drop((carol2, bob_client));
}

#[tokio::test]
async fn two_commits_in_one_epoch_one_wins_the_loser_catches_up_and_a_refused_welcome_is_never_delivered() {
    let server = TestServer::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    bob.device.catch_up(&bob.client, &conv).await.unwrap();

    // Both commit in epoch 1 at once: exactly one wins.
    let (a, b) = tokio::join!(alice.device.update(&alice.client, &conv), bob.device.update(&bob.client, &conv));
    let (winner, loser, lost) = match (a, b) {
        (Ok(_), Err(e)) => (&alice, &bob, e),
        (Err(e), Ok(_)) => (&bob, &alice, e),
        (a, b) => panic!("not exactly one winner: {a:?} {b:?}"),
    };
    assert!(e2ee::is_stale_epoch(&lost), "{lost}");
    assert_eq!(winner.device.epoch(&conv).unwrap(), Some(2));
    assert_eq!(loser.device.epoch(&conv).unwrap(), Some(1), "the refused commit was dropped");
    assert_eq!(loser.device.catch_up(&loser.client, &conv).await.unwrap(), [e2ee::Opened::Commit { epoch: 2 }]);
    loser.device.update(&loser.client, &conv).await.unwrap();
    winner.device.catch_up(&winner.client, &conv).await.unwrap();
    assert_eq!(alice.device.epoch(&conv).unwrap(), Some(3));
    assert_eq!(bob.device.epoch(&conv).unwrap(), Some(3));
    assert_eq!(alice.device.epoch_authenticator(&conv).unwrap(), bob.device.epoch_authenticator(&conv).unwrap());

    // A replayed old commit changes nothing; tampered ciphertext is refused
    // and the group stays usable.
    let page = history(&bob.client, &conv).await;
    let first_commit = page
        .messages
        .iter()
        .find(|m| matches!(m.content.as_ref().and_then(|c| c.body.as_ref()), Some(proto::content::Body::MlsCommit(_))))
        .unwrap();
    assert_eq!(bob.device.open_message(first_commit).unwrap(), e2ee::Opened::Commit { epoch: 3 });
    let seq = alice.device.send_text(&alice.client, &conv, "intact").await.unwrap();
    let page = history(&bob.client, &conv).await;
    let mut tampered = page.messages.iter().find(|m| m.seq == seq).unwrap().clone();
    if let Some(proto::content::Body::Mls(m)) = tampered.content.as_mut().and_then(|c| c.body.as_mut()) {
        let last = m.message.len() - 1;
        m.message[last] ^= 0x40;
    }
    assert!(bob.device.open_message(&tampered).is_err(), "tampered ciphertext does not open");
    assert_eq!(bob.read(&conv).await, ["intact"], "the real one still does");

    // Bob's new device, added by Alice, who is behind: her commit is refused
    // with its Welcome, which therefore never reaches the device.
    let bob2 = Member::new(server.new_device("bob@example.org", "bob's phone").await.0).await;
    bob.device.update(&bob.client, &conv).await.unwrap();
    let e = alice.device.create_group(&alice.client, &dm).await.unwrap_err();
    assert!(e2ee::is_stale_epoch(&e), "{e}");
    let welcomes = |page: &proto::HistoryPage| {
        page.messages
            .iter()
            .filter(|m| matches!(m.content.as_ref().and_then(|c| c.body.as_ref()), Some(proto::content::Body::MlsCommit(c)) if !c.welcome.is_empty()))
            .count()
    };
    assert_eq!(welcomes(&history(&bob2.client, &conv).await), 1, "only the first commit's Welcome is stored");
    assert!(bob2.device.catch_up(&bob2.client, &conv).await.unwrap().iter().all(|o| *o == e2ee::Opened::NotForMe));
    alice.device.catch_up(&alice.client, &conv).await.unwrap();
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    assert_eq!(welcomes(&history(&bob2.client, &conv).await), 2);
    let joined = bob2.device.catch_up(&bob2.client, &conv).await.unwrap();
    assert!(matches!(joined.last(), Some(e2ee::Opened::Joined { .. })), "{joined:?}");
    bob.device.catch_up(&bob.client, &conv).await.unwrap();
    alice.device.send_text(&alice.client, &conv, "hello both of bob's devices").await.unwrap();
    assert_eq!(bob2.read(&conv).await, ["hello both of bob's devices"]);
    assert_eq!(bob.read(&conv).await, ["hello both of bob's devices"]);
}

#[tokio::test]
async fn a_new_device_joins_by_external_commit_and_a_device_that_lost_its_state_rejoins() {
    let server = TestServer::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let dave = Member::new(server.new_user("dave@example.org").await.0).await;
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    let info = e2ee::group_info(&alice.client, &conv).await.unwrap();
    assert_eq!((info.epoch, info.group_info.is_empty()), (0, true), "nobody started the group yet");
    alice.device.enter(&alice.client, &dm).await.unwrap();
    bob.device.enter(&bob.client, &dm).await.unwrap();
    assert_eq!(bob.device.epoch(&conv).unwrap(), Some(1), "bob joined by alice's Welcome, no commit of his own");
    alice.device.send_text(&alice.client, &conv, "before the phone").await.unwrap();
    assert_eq!(bob.read(&conv).await, ["before the phone"]);

    // GetGroupInfo: members of encrypted conversations only.
    let anonymous = server.client().await;
    let ask = |id: &str| Body::GetGroupInfo(proto::GetGroupInfo { conversation_id: id.into() });
    assert_eq!(code(anonymous.request(ask(&conv)).await.unwrap_err()), ErrorCode::UNAUTHENTICATED);
    assert_eq!(code(e2ee::group_info(&dave.client, &conv).await.unwrap_err()), ErrorCode::NOT_A_MEMBER);
    let plain = alice.client.open_direct("bob@example.org").await.unwrap();
    let e = e2ee::group_info(&alice.client, &plain.conversation_id).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ENCRYPTION_MISMATCH);
    assert_eq!(code(e2ee::group_info(&alice.client, "nope").await.unwrap_err()), ErrorCode::INVALID_ARGUMENT);
    let e = e2ee::group_info(&alice.client, &uuid::Uuid::new_v4().to_string()).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NOT_FOUND);

    // Bob's new phone joins on its own, by an external commit on the GroupInfo
    // natterd keeps; it reads what is sent from then on, not what came before.
    let phone = Member::new(server.new_device("bob@example.org", "bob's phone").await.0).await;
    phone.device.enter(&phone.client, &dm).await.unwrap();
    assert_eq!(phone.device.epoch(&conv).unwrap(), Some(2));
    assert_eq!(alice.device.catch_up(&alice.client, &conv).await.unwrap(), [e2ee::Opened::Commit { epoch: 2 }]);
    assert_eq!(bob.device.catch_up(&bob.client, &conv).await.unwrap(), [e2ee::Opened::Commit { epoch: 2 }]);
    alice.device.send_text(&alice.client, &conv, "hello phone").await.unwrap();
    assert_eq!(phone.read(&conv).await, ["hello phone"]);
    assert_eq!(bob.read(&conv).await, ["hello phone"]);
    let authenticator = alice.device.epoch_authenticator(&conv).unwrap();
    assert_eq!(phone.device.epoch_authenticator(&conv).unwrap(), authenticator);
    assert_eq!(bob.device.epoch_authenticator(&conv).unwrap(), authenticator);

    // A join made on an old GroupInfo loses to the commit that came first:
    // STALE_EPOCH, and nothing of it stays on the device.
    let tablet = Member::new(server.new_device("bob@example.org", "bob's tablet").await.0).await;
    let old = e2ee::group_info(&tablet.client, &conv).await.unwrap();
    alice.device.update(&alice.client, &conv).await.unwrap();
    let e = tablet.device.join_external(&tablet.client, &conv, &old).await.unwrap_err();
    assert!(e2ee::is_stale_epoch(&e), "{e}");
    assert_eq!(tablet.device.epoch(&conv).unwrap(), None);
    tablet.device.enter(&tablet.client, &dm).await.unwrap();
    assert_eq!(tablet.device.epoch(&conv).unwrap(), Some(4));

    // Nobody joins as another device: an external commit whose leaf is not
    // the sending device's own (here, the phone's id under bob's laptop).
    let phone_id = phone.client.identity().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let impostor = MlsDevice::open(dir.path(), &phone_id.user_id, &phone_id.device_id).unwrap();
    let fresh = e2ee::group_info(&bob.client, &conv).await.unwrap();
    let e = impostor.join_external(&bob.client, &conv, &fresh).await.unwrap_err();
    assert_eq!(code_of_e2ee(&e), Some(ErrorCode::MLS_MESSAGE_INVALID), "{e}");

    // The phone loses its state: a fresh device state (a new key) joins
    // again, and its old leaf goes in the same step.
    for m in [&alice, &bob, &tablet] {
        m.device.catch_up(&m.client, &conv).await.unwrap();
    }
    let old_phone = phone;
    let reborn = Member::new(old_phone.client).await;
    reborn.device.enter(&reborn.client, &dm).await.unwrap();
    for m in [&alice, &bob, &tablet] {
        m.device.catch_up(&m.client, &conv).await.unwrap();
    }
    let seq = alice.device.send_text(&alice.client, &conv, "hello again phone").await.unwrap();
    assert_eq!(reborn.read(&conv).await, ["hello again phone"]);
    assert_eq!(tablet.read(&conv).await, ["hello again phone"]);
    let page = history(&bob.client, &conv).await;
    let after = page.messages.iter().find(|m| m.seq == seq).unwrap();
    assert!(old_phone.device.open_message(after).is_err(), "the lost state's leaf is gone");
    assert_eq!(reborn.device.epoch(&conv).unwrap(), alice.device.epoch(&conv).unwrap());
    assert_eq!(reborn.device.epoch_authenticator(&conv).unwrap(), alice.device.epoch_authenticator(&conv).unwrap());
    drop((old_phone.dir, dave));
}

fn code_of_e2ee(e: &e2ee::E2eeError) -> Option<ErrorCode> {
    match e {
        e2ee::E2eeError::Client(c) => c.code(),
        _ => None,
    }
}

#[tokio::test]
async fn membership_follows_the_conversation_and_natterd_refuses_commits_that_do_not() {
    let server = TestServer::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let carol = Member::new(server.new_user("carol@example.org").await.0).await;
    let carol2 = Member::new(server.new_device("carol@example.org", "carol's laptop").await.0).await;
    let dave = Member::new(server.new_user("dave@example.org").await.0).await;
    let group = alice.client.create_group_with("trio", &["bob@example.org", "carol@example.org"], true).await.unwrap();
    let g = group.conversation_id.clone();
    alice.device.create_group(&alice.client, &group).await.unwrap();
    for m in [&bob, &carol, &carol2] {
        m.device.catch_up(&m.client, &g).await.unwrap();
    }

    // Someone who is not a member cannot be added; a member's signed-in
    // device cannot be removed; nobody commits for another device.
    alice.client.open_direct("dave@example.org").await.unwrap();
    let daves = e2ee::claim_key_packages(&alice.client, &dave.user_id()).await.unwrap();
    let e =
        alice.device.add_key_packages(&alice.client, &g, &[daves.packages[0].key_package.clone()]).await.unwrap_err();
    assert!(e.to_string().contains("not a registered device of a member"), "{e}");
    let carol2_device = carol2.client.identity().unwrap().device_id;
    let e = bob.device.remove_devices(&bob.client, &g, &[&carol2_device]).await.unwrap_err();
    assert!(e.to_string().contains("still signed in"), "{e}");
    assert_eq!(alice.device.epoch(&g).unwrap(), Some(1), "the refused commits were dropped");
    assert_eq!(bob.device.epoch(&g).unwrap(), Some(1));

    // Carol is removed. Until a commit takes her two leaves out, natterd
    // takes no message into the group (she could decrypt it); the SDK
    // commits the removal itself before it sends, and she cannot decrypt
    // what is sent afterwards.
    alice.client.remove_member(&g, &carol.user_id()).await.unwrap();
    let conv = alice.client.get_conversation(&g).await.unwrap();
    let sealed = bob.device.seal_text(&g, "carol could read this").unwrap();
    let e = bob.client.send_content(&g, &uuid::Uuid::new_v4().to_string(), sealed).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::REMOVAL_PENDING), "{e}");
    assert!(e.to_string().contains(&carol.user_id()), "the error names her: {e}");
    let seq = bob.device.send_text(&bob.client, &g, "after carol left").await.unwrap();
    assert_eq!(bob.device.epoch(&g).unwrap(), Some(2), "bob's send committed the removal first");
    assert_eq!(alice.read(&g).await, ["after carol left"]);
    assert_eq!(alice.device.create_group(&alice.client, &conv).await.unwrap(), None, "carol's leaves are gone");
    let page = history(&alice.client, &g).await;
    for m in page.messages.iter().filter(|m| m.seq > 4) {
        let _ = carol.device.open_message(m);
    }
    let after = page.messages.iter().find(|m| m.seq == seq).unwrap();
    assert!(carol.device.open_message(after).is_err(), "a removed member cannot decrypt");
    assert!(carol2.device.open_message(after).is_err());
    assert_eq!(alice.device.epoch_authenticator(&g).unwrap(), bob.device.epoch_authenticator(&g).unwrap());

    // A member signs a device out: the next commit removes its leaf.
    let bob2 = Member::new(server.new_device("bob@example.org", "bob's phone").await.0).await;
    alice.device.create_group(&alice.client, &conv).await.unwrap().expect("bob's phone added");
    bob.device.catch_up(&bob.client, &g).await.unwrap();
    assert!(matches!(bob2.device.catch_up(&bob2.client, &g).await.unwrap().last(), Some(e2ee::Opened::Joined { .. })));
    bob2.client.logout().await.unwrap();
    alice.device.create_group(&alice.client, &conv).await.unwrap().expect("bob's phone removed");
    let seq = alice.device.send_text(&alice.client, &g, "after bob's phone left").await.unwrap();
    assert_eq!(bob.read(&g).await, ["after bob's phone left"]);
    let page = history(&bob.client, &g).await;
    let after = page.messages.iter().find(|m| m.seq == seq).unwrap();
    assert!(bob2.device.open_message(after).is_err(), "a signed-out device cannot decrypt");
    assert_eq!(alice.device.create_group(&alice.client, &conv).await.unwrap(), None, "nothing left to change");
    drop(dave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_postgres_nodes_one_commit_per_epoch_wins_and_no_table_holds_the_text() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let node_a = TestServer::start_postgres(&db).await;
    let node_b = TestServer::start_postgres(&db).await;
    let alice = Member::new(node_a.new_user("alice@example.org").await.0).await;
    let bob = Member::new(node_b.new_user("bob@example.org").await.0).await;
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    bob.device.catch_up(&bob.client, &conv).await.unwrap();
    for round in 0..3 {
        let (a, b) = tokio::join!(alice.device.update(&alice.client, &conv), bob.device.update(&bob.client, &conv));
        let lost = match (a, b) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            (a, b) => panic!("round {round}: not exactly one winner across the nodes: {a:?} {b:?}"),
        };
        assert!(e2ee::is_stale_epoch(&lost), "{lost}");
        alice.device.catch_up(&alice.client, &conv).await.unwrap();
        bob.device.catch_up(&bob.client, &conv).await.unwrap();
        assert_eq!(alice.device.epoch(&conv).unwrap(), Some(2 + round));
        assert_eq!(alice.device.epoch_authenticator(&conv).unwrap(), bob.device.epoch_authenticator(&conv).unwrap());
    }
    alice.device.send_text(&alice.client, &conv, &format!("{MARKER} over postgres")).await.unwrap();
    assert_eq!(bob.read(&conv).await, [format!("{MARKER} over postgres")]);

    // No row of any table holds the text (the log, the read models, the MLS store).
    let (pg, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let tables: Vec<String> = pg
        .query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() > 10 && tables.iter().any(|t| t == "events"), "{tables:?}");
    // Every row as text (text columns), and every bytea column as bytes (the
    // log's payloads, stored content, KeyPackages).
    let holding = |table: &str, column: Option<&str>| match column {
        None => {
            format!("SELECT count(*) FROM \"{table}\" t WHERE position($1::bytea in convert_to(t::text, 'UTF8')) > 0")
        }
        Some(c) => format!("SELECT count(*) FROM \"{table}\" WHERE position($1::bytea in \"{c}\") > 0"),
    };
    let bytea: Vec<(String, String)> = pg
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND data_type = 'bytea'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(bytea.iter().any(|(t, c)| t == "events" && c == "payload"), "{bytea:?}");
    let checks =
        tables.iter().map(|t| (t.clone(), None)).chain(bytea.iter().map(|(t, c)| (t.clone(), Some(c.clone()))));
    for (table, column) in checks {
        let n: i64 = pg.query_one(&holding(&table, column.as_deref()), &[&MARKER.as_bytes()]).await.unwrap().get(0);
        assert_eq!(n, 0, "the text is in {table} {column:?}");
    }
    // (the check can fail: plaintext is found)
    let plain = alice.client.open_direct("bob@example.org").await.unwrap().conversation_id;
    alice.client.send_text(&plain, "p-1", MARKER).await.unwrap();
    let n: i64 = pg.query_one(&holding("events", Some("payload")), &[&MARKER.as_bytes()]).await.unwrap().get(0);
    assert_eq!(n, 1, "a plaintext message's text is found in the log");
}

#[tokio::test]
async fn a_push_notification_for_an_encrypted_message_carries_no_text_and_commits_none_at_all() {
    let server = TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = 200;
    })
    .await;
    let push = natter_tests::push_service::PushServiceFake::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let bob_id = bob.user_id();
    let key = bob.client.push_config().await.unwrap().application_server_key;
    let sub = push.subscribe(&key);
    bob.client.register_push(&sub.endpoint, &sub.p256dh, &sub.auth).await.unwrap();
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    let Member { client: bob_client, device: bob_device, dir: _bob_dir } = bob;
    drop(bob_client);
    natter_tests::wait_offline(&alice.client, &bob_id).await;

    // The commit that adds Bob tells him nothing; the message, that there is one.
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    let seq = alice.device.send_text(&alice.client, &conv, &format!("{MARKER} while you were away")).await.unwrap();
    let got = push.wait_for(Duration::from_secs(10), "bob's notification", |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "one notification, for the message: {got:?}");
    let n = &got[0].payload;
    assert_eq!(
        (n["conversation_id"].as_str(), n["seq"].as_u64(), n["count"].as_u64()),
        (Some(&*conv), Some(seq), Some(1))
    );
    assert!(n.get("text").is_none(), "no text, not even empty: {n}");
    assert!(!n.to_string().contains(MARKER));
    drop(bob_device);
}

/// Signs in `email` on `server` again with the saved session.
async fn resume_child(server: &natter_tests::ChildServer, token: &str) -> Client {
    let mut config = server.client_config();
    config.session_token = Some(token.to_owned());
    Client::connect(&config).await.expect("the session survived")
}

#[tokio::test]
async fn natterd_killed_during_commits_leaves_exactly_one_outcome_and_no_fork() {
    let dir = tempfile::tempdir().unwrap();
    let addr = crate::crash::free_udp_port();
    let mut server = natter_tests::ChildServer::spawn(&crate::natterd(), dir.path(), addr);
    let signup = |email: &'static str| {
        let config = server.client_config();
        async move {
            let c = Client::connect(&config).await.unwrap();
            c.signup(email, natter_tests::PASSWORD, "").await.unwrap();
            let (token, _) = c.login(email, natter_tests::PASSWORD, "d").await.unwrap();
            (c, token)
        }
    };
    let ((alice_client, alice_token), (bob_client, bob_token)) =
        (signup("alice@example.org").await, signup("bob@example.org").await);
    let alice = Member::new(alice_client).await;
    let bob = Member::new(bob_client).await;
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    bob.device.catch_up(&bob.client, &conv).await.unwrap();
    let (Member { device: alice_device, dir: _a, .. }, Member { device: bob_device, dir: _b, .. }) = (alice, bob);

    let (mut landed, mut lost, mut unanswered) = (0, 0, 0);
    // From before the commit leaves to after it is stored (a debug build takes
    // some milliseconds to check a commit).
    for (cycle, delay_ms) in (1..=24u64).chain([40, 80]).enumerate() {
        let client = resume_child(&server, &alice_token).await;
        let before = alice_device.epoch(&conv).unwrap();
        // Kill natterd at some moment while Alice's commit is on its way.
        let answered = tokio::select! {
            r = alice_device.update(&client, &conv) => { r.unwrap(); true }
            () = tokio::time::sleep(Duration::from_millis(delay_ms)) => false,
        };
        server.kill9();
        drop(client);
        server = natter_tests::ChildServer::spawn(&crate::natterd(), dir.path(), addr);
        let (alice_client, bob_client) =
            (resume_child(&server, &alice_token).await, resume_child(&server, &bob_token).await);
        alice_device.catch_up(&alice_client, &conv).await.unwrap();
        bob_device.catch_up(&bob_client, &conv).await.unwrap();
        let (a, b) = (alice_device.epoch(&conv).unwrap(), bob_device.epoch(&conv).unwrap());
        assert_eq!(a, b, "cycle {cycle}: one outcome for both");
        if a > before {
            landed += 1;
            // Stored, but the answer never came: the pending commit was merged.
            unanswered += u32::from(!answered);
        } else {
            assert!(!answered, "cycle {cycle}: an accepted commit is never lost");
            lost += 1;
        }
        assert_eq!(
            alice_device.epoch_authenticator(&conv).unwrap(),
            bob_device.epoch_authenticator(&conv).unwrap(),
            "cycle {cycle}: no fork"
        );
        // And the group works on.
        let text = format!("after cycle {cycle}");
        alice_device.send_text(&alice_client, &conv, &text).await.unwrap();
        let opened = bob_device.catch_up(&bob_client, &conv).await.unwrap();
        assert!(matches!(opened.last(), Some(e2ee::Opened::Text { text: t, .. }) if *t == text), "{opened:?}");
    }
    eprintln!("commits stored before the kill: {landed} ({unanswered} of them unanswered), not stored: {lost}");
    assert!(landed > 0, "some commits were stored before the kill");
}

#[tokio::test]
async fn an_encrypted_file_is_opaque_to_natterd_and_only_members_fetch_and_decrypt_it() {
    let server = TestServer::start().await;
    let alice = Member::new(server.new_user("alice@example.org").await.0).await;
    let bob = Member::new(server.new_user("bob@example.org").await.0).await;
    let carol = Member::new(server.new_user("carol@example.org").await.0).await;
    let dm = alice.client.open_direct_with("bob@example.org", true).await.unwrap();
    let conv = dm.conversation_id.clone();
    alice.device.create_group(&alice.client, &dm).await.unwrap();
    bob.device.catch_up(&bob.client, &conv).await.unwrap();

    // A PNG whose bytes hold the marker: natterd must neither see nor refuse it.
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png.extend(MARKER.as_bytes().iter().cycle().take(40_000));
    let seq =
        alice.device.send_file(&alice.client, &conv, &png, "holiday.png", "image/png", "the beach").await.unwrap();
    let opened = bob.device.catch_up(&bob.client, &conv).await.unwrap();
    let [e2ee::Opened::File { file, .. }] = &opened[..] else { panic!("{opened:?}") };
    assert_eq!(
        (file.file_name.as_str(), file.mime_type.as_str(), file.size),
        ("holiday.png", "image/png", png.len() as u64)
    );
    assert_eq!(file.caption, "the beach");
    assert_eq!(bob.device.fetch_file(&bob.client, file).await.unwrap(), png);

    // What natterd knows of it: opaque bytes, no name, no type, no preview.
    let page = history(&bob.client, &conv).await;
    let m = page.messages.iter().find(|m| m.seq == seq).unwrap();
    let Some(proto::content::Body::Mls(mls)) = m.content.as_ref().and_then(|c| c.body.as_ref()) else { panic!() };
    assert_eq!(mls.media_id, file.media_id);
    let mut header_only = Vec::new();
    let header = bob.client.download(&file.media_id, 0, 1, &mut header_only, |_| {}).await.unwrap();
    let media = header.media.unwrap();
    assert_eq!((media.file_name.as_str(), media.mime_type.as_str()), ("encrypted", "application/octet-stream"));
    assert!(media.preview_media_id.is_empty() && media.width == 0);
    assert_eq!(media.size, png.len() as u64 + 16, "the ciphertext and its tag");
    assert!(files_containing(server.data_dir(), MARKER.as_bytes()).is_empty(), "natterd holds no plaintext");

    // Someone else cannot fetch it; a message cannot carry another's upload.
    let e = carol.client.download(&file.media_id, 0, 0, &mut Vec::new(), |_| {}).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NOT_FOUND);
    let stolen = proto::Content {
        body: Some(proto::content::Body::Mls(proto::MlsMessage {
            message: mls.message.clone(),
            media_id: file.media_id.clone(),
        })),
    };
    let e = bob.client.send_content(&conv, "steal-1", stolen).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::NOT_FOUND, "not an upload of bob's");

    // Bytes changed in the store do not decrypt.
    let mut stack = vec![server.data_dir().join("blobs")];
    let mut blob = None;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::metadata(&path).unwrap().len() == media.size {
                blob = Some(path);
            }
        }
    }
    let blob = blob.expect("the stored ciphertext");
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let e = bob.device.fetch_file(&bob.client, file).await.unwrap_err();
    assert!(e.to_string().contains("do not decrypt"), "{e}");
}
