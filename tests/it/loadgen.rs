//! Smoke runs of the load generator's scenarios: short, small, and checked for
//! consistency (every acknowledged send reaches every recipient, no errors).

use std::sync::Arc;
use std::time::Duration;

use natter_loadgen::{Counters, Pace, Target, Timing};
use natter_tests::TestServer;

fn timing() -> Timing {
    Timing { warmup: Duration::from_millis(200), duration: Duration::from_millis(800) }
}

fn target(server: &TestServer) -> Target {
    Target { config: server.client_config(), endpoints: 2 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_pairs_smoke_is_consistent() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    let r = natter_loadgen::dm_pairs(&target(&server), 4, Pace::Closed { in_flight: 2 }, timing(), 64, counters)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.sends > 0 && r.total_sends >= r.sends);
    assert_eq!(r.total_deliveries, r.total_sends, "each send reaches its partner once");
    assert_eq!(r.ack.len(), r.sends);
    assert!(r.deliver.len() >= r.sends, "a delivery latency for every measured send");
    assert!(r.table().contains("dm-pairs"));
    assert_eq!(r.json()["fanout"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_pairs_open_loop_smoke() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    let r = natter_loadgen::dm_pairs(&target(&server), 2, Pace::Open { rate: 200.0 }, timing(), 64, counters)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.total_deliveries, r.total_sends);
    // About 200/s for ~1 s in all: bounded by the rate, not by latency.
    assert!(r.total_sends > 50 && r.total_sends < 400, "{}", r.total_sends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fanout_smoke_delivers_every_message_to_every_other_member() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    let r = natter_loadgen::group_fanout(&target(&server), 5, 2, Pace::Closed { in_flight: 1 }, timing(), 64, counters)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.fanout, 4);
    assert!(r.total_sends > 0);
    assert_eq!(r.total_deliveries, r.total_sends * 4, "deliveries = sends × fan-out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_smoke_holds_authenticated_connections_and_reads_memory() {
    let server = TestServer::start().await;
    let r =
        natter_loadgen::idle(&target(&server), 20, Duration::from_millis(100), Some(std::process::id())).await.unwrap();
    assert_eq!(r.connections, 20);
    assert!(r.rss_before.is_some() && r.rss_after.is_some());
    assert!(r.table().contains("20 authenticated connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_relay_baseline_smoke() {
    let (addr, cert, _relay) = natter_loadgen::relay::start_relay("127.0.0.1:0".parse().unwrap()).unwrap();
    let r = natter_loadgen::relay::relay_pairs(addr, cert, 2, 2, timing(), 64).await.unwrap();
    assert!(r.total_sends > 0, "the relay carried messages");
    assert!(r.total_deliveries >= r.total_sends.saturating_sub(4), "nearly every acknowledged frame was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_smoke_runs_every_operation_without_errors() {
    let server = TestServer::start().await;
    let r = natter_loadgen::mixed(&target(&server), 4, 200.0, Duration::from_millis(1500)).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    for op in ["send", "typing", "read", "history"] {
        assert!(r.ops.get(op).is_some_and(|h| !h.is_empty()), "{op} ran: {:?}", r.ops.keys().collect::<Vec<_>>());
    }
    assert!(r.table().contains("mixed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_load_generator_says_what_to_do_and_load_test_mode_lifts_the_limit() {
    // An ordinary natterd: sign-ins from one address are limited.
    let server = TestServer::start_with(|c| c.auth.attempts_per_minute = Some(3)).await;
    let counters = Arc::new(Counters::default());
    let e = natter_loadgen::dm_pairs(&target(&server), 4, Pace::Closed { in_flight: 1 }, timing(), 64, counters)
        .await
        .err()
        .expect("the sign-in limit stops the load generator");
    let said = format!("{e:#}");
    assert!(said.contains("RATE_LIMITED") || said.contains("too many"), "{said}");
    assert!(said.contains("natterd --load-test") && said.contains("NATTER_AUTH_ATTEMPTS_PER_MINUTE"), "{said}");

    // The same limit configured, but natterd serves a load test.
    let server = TestServer::start_with(|c| {
        c.auth.attempts_per_minute = Some(3);
        c.load_test = true;
    })
    .await;
    assert!(server.data_dir().join(natter_server::LOAD_TEST_MARKER).exists());
    let counters = Arc::new(Counters::default());
    let r = natter_loadgen::dm_pairs(&target(&server), 4, Pace::Closed { in_flight: 1 }, timing(), 64, counters)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_smoke_moves_every_byte_both_ways_and_chats_beside_an_upload() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    let size = 4 * 1024 * 1024;
    let short = Timing { warmup: Duration::from_millis(100), duration: Duration::from_millis(300) };
    let r = natter_loadgen::media::media(&target(&server), size, 2, 100.0, short, Some(std::process::id()), counters)
        .await
        .unwrap();
    assert_eq!(r.size, size);
    assert!(r.rss_before.is_some() && r.rss_growth().is_some());
    for chat in [&r.chat_alone, &r.chat_during] {
        assert!(chat.errors.is_empty(), "{:?}", chat.errors);
        assert!(chat.sends > 0);
        assert_eq!(chat.total_deliveries, chat.total_sends);
    }
    let table = r.table();
    assert!(table.contains("of raw") && table.contains("during an upload"), "{table}");
    assert_eq!(r.json()["size_bytes"], size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_smoke_notifies_every_offline_recipient_every_round() {
    let server = TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = 100;
    })
    .await;
    let r = natter_loadgen::push::push(&target(&server), 2, 3, 2, Duration::from_millis(200)).await.unwrap();
    assert_eq!((r.recipients, r.rounds, r.per_second.len()), (6, 2, 2));
    assert_eq!(r.latency.len(), 12, "one notification per message");
    assert!(r.per_second.iter().all(|x| *x > 0.0));
    assert!(r.table().contains("notifications/s"), "{}", r.table());
    assert_eq!(r.json()["recipients"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sustained_smoke_notifies_every_recipients_last_message() {
    let server = TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = 100;
    })
    .await;
    let r = natter_loadgen::push::push_sustained(&target(&server), 2, 3, Duration::from_millis(600)).await.unwrap();
    assert_eq!(r.recipients, 6);
    assert!(r.sent >= 6, "every recipient got a message: {}", r.table());
    assert_eq!(r.drain.len(), 6, "each recipient's last message was notified");
    assert!(r.notifications >= 6 && (r.notifications as u64) < r.sent + 6, "coalesced: {}", r.table());
    assert!(r.table().contains("last ack"), "{}", r.table());
    assert_eq!(r.json()["recipients"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_smoke_writes_the_corpus_finds_the_marker_and_times_every_query() {
    let server = TestServer::start_with(|c| c.search.commit_interval_ms = 100).await;
    let load = natter_loadgen::search::SearchLoad {
        conversations: 6,
        messages: 300,
        member_of: 3,
        writers: 3,
        in_flight: 4,
        queries: 40,
    };
    let r = natter_loadgen::search::search(&target(&server), load).await.unwrap();
    let by_kind: Vec<u64> = r.latency.iter().map(|(_, h)| h.len()).collect();
    assert_eq!(by_kind, [10, 10, 10, 10], "every query timed, by kind");
    assert!(r.hits > 0, "the common words are found: {}", r.table());
    assert!(r.fill_per_second > 0.0);
    assert!(r.table().contains("prefix"), "{}", r.table());
    assert_eq!(r.json()["latency"]["queries"], 40);
    // Shapes that cannot run are refused before anything is made.
    let bad = natter_loadgen::search::SearchLoad { member_of: 7, ..load };
    assert!(natter_loadgen::search::search(&target(&server), bad).await.is_err());
}

#[test]
fn the_benchmark_video_is_the_same_bytes_however_it_is_read() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let size = 100_003;
        let mut whole = Vec::new();
        natter_loadgen::media::Video::new(7, size).read_to_end(&mut whole).await.unwrap();
        assert_eq!(whole.len() as u64, size);
        assert_eq!(&whole[4..8], b"ftyp");
        // In odd pieces, from an odd offset: the same bytes.
        let mut v = natter_loadgen::media::Video::new(7, size);
        v.seek(std::io::SeekFrom::Start(13)).await.unwrap();
        let mut piece = vec![0u8; 997];
        let mut got = Vec::new();
        loop {
            let n = v.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, whole[13..]);
        let mut other = Vec::new();
        natter_loadgen::media::Video::new(8, size).read_to_end(&mut other).await.unwrap();
        assert_ne!(other[24..], whole[24..], "another seed, other bytes");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_pairs_e2ee_smoke_decrypts_every_message() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    // Volatile device state (the benchmark's mode for natterd's own ceiling);
    // every other test's devices are durable.
    let volatile = natter_client::e2ee::Durability::Volatile;
    let r = natter_loadgen::e2ee::dm_pairs(&target(&server), 4, 2, timing(), 64, volatile, counters).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.sends > 0);
    assert_eq!(r.total_deliveries, r.total_sends, "each encrypted send is decrypted by its partner once");
    assert!(r.deliver.len() >= r.sends);
    assert!(r.table().contains("dm-pairs-e2ee"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fanout_e2ee_smoke_every_other_member_decrypts_every_message() {
    let server = TestServer::start().await;
    let counters = Arc::new(Counters::default());
    let durable = natter_client::e2ee::Durability::Durable;
    let r =
        natter_loadgen::e2ee::group_fanout(&target(&server), 4, 2, 2, timing(), 64, durable, counters).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.fanout, 3);
    assert!(r.total_sends > 0);
    assert_eq!(r.total_deliveries, r.total_sends * 3, "each encrypted send decrypted by every other member once");
    assert!(r.table().contains("group-fanout-e2ee"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2ee_group_smoke_every_member_joins() {
    let server = TestServer::start().await;
    let r = natter_loadgen::e2ee::group_create(&target(&server), 5).await.unwrap();
    assert_eq!(r.members, 5);
    assert!(r.create > Duration::ZERO && r.table().contains("5 members"));
}

fn chaos_plan(dir: &std::path::Path, env: &[(&str, &str)]) -> natter_loadgen::chaos::ChaosPlan {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    natter_loadgen::chaos::ChaosPlan {
        natterd: crate::natterd(),
        data_dir: dir.join("natterd"),
        listen: port,
        users: 4,
        cycles: 3,
        kill_every: Duration::from_millis(700),
        env: natter_tests::CHILD_ENV.iter().chain(env).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        nodes: 1,
        restart_database: None,
    }
}

fn assert_nothing_lost(r: &natter_loadgen::chaos::ChaosReport) {
    assert_eq!((r.lost, r.duplicated, r.out_of_order), (0, 0, 0), "{}", r.table());
    assert_eq!(r.cycles, 3);
    assert!(r.acknowledged > 20, "it was under load: {}", r.table());
    assert!(r.delivered >= r.acknowledged * 2, "each message reaches both members: {}", r.table());
    assert!(r.reconnects >= 3, "the kills broke the connections: {}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_cycles_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let r = natter_loadgen::chaos::chaos(&chaos_plan(dir.path(), &[])).await.unwrap();
    assert_nothing_lost(&r);
    assert!(r.table().contains("lost           0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_postgres_loses_and_duplicates_nothing() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [("NATTER_STORE_BACKEND", "postgres"), ("NATTER_STORE_URL", db.url())];
    let r = natter_loadgen::chaos::chaos(&chaos_plan(dir.path(), &env)).await.unwrap();
    assert_nothing_lost(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_killing_one_of_two_nodes_loses_and_duplicates_nothing() {
    let Some(db) = natter_tests::PgDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let env = [("NATTER_STORE_BACKEND", "postgres"), ("NATTER_STORE_URL", db.url())];
    let mut plan = chaos_plan(dir.path(), &env);
    plan.nodes = 2;
    // Two free ports in a row for the two nodes.
    plan.listen = loop {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        if std::net::UdpSocket::bind(("127.0.0.1", a.port() + 1)).is_ok() {
            break a;
        }
    };
    let r = natter_loadgen::chaos::chaos(&plan).await.unwrap();
    assert_nothing_lost(&r);
}
