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
