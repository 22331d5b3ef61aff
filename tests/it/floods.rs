//! Floods: too many connections from one address, a handshake flood (QUIC
//! Retry), and a request flood on one connection (RATE_LIMITED).

use std::time::Duration;

use natter_client::proto::{self as wire, request::Body};
use natter_client::{Client, ClientError};
use natter_proto::ErrorCode;
use natter_tests::TestServer;

#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections() {
    let server = TestServer::start_with(|c| c.max_connections_per_address = 3).await;
    let mut held = Vec::new();
    for who in ["a", "b", "c"] {
        held.push(server.new_user(&format!("{who}@example.org")).await.0);
    }
    let Err(e) = Client::connect(&server.client_config()).await else { panic!("a fourth connection from 127.0.0.1") };
    assert_eq!(e.code(), Some(ErrorCode::TOO_MANY_CONNECTIONS), "{e}");
    assert!(e.to_string().contains("from your address"), "{e}");
    // Those it holds keep working; one closed makes room.
    held[0].conversations(10).await.unwrap();
    let mut held = held.into_iter();
    held.next().unwrap().close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Client::connect(&server.client_config()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline && e.code() == Some(ErrorCode::TOO_MANY_CONNECTIONS) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("room again after a close: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_met_with_address_validation() {
    let server = TestServer::start_with(|c| {
        c.retry_above_handshakes = 2;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    // Forty handshakes at once from one address: past two in progress, each
    // must answer a Retry first; they all still get in.
    let config = server.client_config();
    let flood = futures::future::join_all((0..40).map(|_| Client::connect(&config))).await;
    assert!(flood.iter().all(Result::is_ok), "Retry is transparent to a real client");
    alice.conversations(10).await.expect("an established client carries on");
    let url = format!("http://{}/metrics", server.metrics_addr().unwrap());
    let metrics = natter_tests::http_client().get(url).send().await.unwrap().text().await.unwrap();
    let retries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("natter_handshake_retries_total "))
        .and_then(|v| v.parse().ok())
        .expect("the counter is exposed");
    assert!(retries >= 1.0, "some handshakes were asked to validate their address: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_on_one_connection_is_rate_limited_with_the_wait() {
    let server = TestServer::start_with(|c| {
        c.requests_per_second = 50.0;
        c.request_burst = 20;
    })
    .await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let ask = || alice.request(Body::ListConversations(wire::ListConversations { limit: 1, before_activity: 0 }));
    let answers = futures::future::join_all((0..200).map(|_| ask())).await;
    let limited: Vec<u32> = answers
        .iter()
        .filter_map(|a| match a {
            Err(ClientError::Server { code: ErrorCode::RATE_LIMITED, retry_after_ms, .. }) => Some(*retry_after_ms),
            _ => None,
        })
        .collect();
    let served = answers.iter().filter(|a| a.is_ok()).count();
    // The burst (less what signing in took) and what refills meanwhile are served.
    assert!(
        limited.len() >= 150 && served >= 10 && limited.len() + served == 200,
        "{} limited, {served} served",
        limited.len()
    );
    assert!(limited.iter().all(|&ms| ms > 0), "each says how long to wait");
    // Another connection is not affected; after the wait this one is served again.
    bob.conversations(1).await.expect("limits are per connection");
    tokio::time::sleep(Duration::from_millis(u64::from(*limited.iter().max().unwrap()))).await;
    ask().await.expect("served again after the wait");
}
