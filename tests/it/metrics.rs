//! The metrics endpoint: Prometheus text that moves with traffic, and /healthz.

use std::net::SocketAddr;

use natter_tests::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: natter\r\n\r\n")).await
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_traffic_and_health_says_writable() {
    let server = TestServer::start_with(|c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics_addr().expect("metrics enabled");
    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text");

    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let (mut feed, _) = bob.sync(None).await.unwrap();
    for i in 0..5 {
        alice.send_text(&conv, &format!("{i}"), "hi").await.unwrap();
    }
    natter_tests::feed_until(&mut feed, std::time::Duration::from_secs(10), |i| {
        natter_tests::texts(std::slice::from_ref(i)).len() == 1
            && matches!(i, natter_client::FeedItem::Message { message, .. } if message.client_msg_id == "4")
    })
    .await;
    let _ = alice.send_text("not-an-id", "x", "hi").await;

    let (_, after) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&after, "natter_messages_appended_total") - sample(&before, "natter_messages_appended_total"),
        5.0
    );
    assert_eq!(sample(&after, "natter_requests_total{kind=\"send_message\",result=\"ok\"}"), 5.0);
    assert_eq!(sample(&after, "natter_requests_total{kind=\"send_message\",result=\"INVALID_ARGUMENT\"}"), 1.0);
    assert_eq!(sample(&after, "natter_connections_opened_total"), 2.0, "alice and bob");
    assert_eq!(sample(&after, "natter_connections "), 2.0, "current connections gauge");
    assert!(sample(&after, "natter_deliveries_total") >= 5.0);
    assert!(sample(&after, "natter_commit_seconds_count") > sample(&before, "natter_commit_seconds_count"));
    assert!(sample(&after, "natter_commit_fsync_seconds_count") > 0.0);
    assert!(sample(&after, "natter_process_resident_bytes") > 0.0);

    let (status, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok: the store is writable"));
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.0, 405);
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: natter\r\nX-Padding: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(addr, &huge).await.0, 431, "a request head over 8 KiB");
    assert_eq!(http(addr, "NOT HTTP AT ALL\r\n\r\n").await.0, 400);
    let (status, _) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "still serving");
}

#[tokio::test]
async fn transfers_are_counted_by_direction_result_and_bytes() {
    let server = TestServer::start_with(|c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = server.metrics_addr().expect("metrics enabled");
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let conv = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    let pdf = [b"%PDF-1.7\n".as_slice(), &[7u8; 10_000]].concat();
    let (sha256, size) = natter_client::transfer::digest(&mut std::io::Cursor::new(&pdf)).await.unwrap();
    let spec = natter_client::transfer::UploadSpec {
        conversation_id: conv,
        file_name: "a.pdf".into(),
        size,
        sha256,
        upload_id: None,
    };
    let media = alice.upload(&spec, &mut std::io::Cursor::new(pdf.clone()), |_| {}).await.unwrap();
    let mut out = Vec::new();
    alice.download(&media.media_id, 9, 100, &mut out, |_| {}).await.unwrap();
    let _ = alice.download("00000000-0000-4000-8000-000000000000", 0, 0, &mut out, |_| {}).await;
    // The counters move when each stream ends, just after its last byte.
    let mut text = String::new();
    for _ in 0..50 {
        text = get(addr, "/metrics").await.1;
        if sample(&text, "natter_media_transfers_total{direction=\"download\",result=\"NOT_FOUND\"}") == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&text, "natter_media_transfers_total{direction=\"upload\",result=\"ok\"}"), 1.0, "{text}");
    assert_eq!(sample(&text, "natter_media_transfers_total{direction=\"download\",result=\"ok\"}"), 1.0);
    assert_eq!(sample(&text, "natter_media_transfers_total{direction=\"download\",result=\"NOT_FOUND\"}"), 1.0);
    assert_eq!(sample(&text, "natter_media_transfer_bytes_total{direction=\"upload\"}"), pdf.len() as f64);
    assert_eq!(sample(&text, "natter_media_transfer_bytes_total{direction=\"download\"}"), 100.0);
    assert_eq!(sample(&text, "natter_media_transfers_active"), 0.0);
}

#[tokio::test]
async fn the_search_projection_reports_its_position_and_lag() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        c.search.commit_interval_ms = 50;
    })
    .await;
    let addr = server.metrics_addr().expect("metrics enabled");
    let (alice, _) = server.new_user("alice@example.org").await;
    server.new_user("bob@example.org").await;
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    for i in 0..5 {
        alice.send_text(&dm, &format!("m{i}"), "metrics are searchable").await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, text) = get(addr, "/metrics").await;
        let documents = sample(&text, "natter_search_documents_total ");
        if documents >= 5.0 && sample(&text, "natter_search_lag_events ") == 0.0 {
            assert!(sample(&text, "natter_search_indexed_position ") > 0.0, "{text}");
            assert!(sample(&text, "natter_search_commits_total ") >= 1.0, "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the projection never caught up:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_push_worker_counts_results_retries_removals_and_its_lag() {
    use natter_tests::push_service::PushServiceFake;
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = 50;
        c.push.max_attempts = 2;
        c.push.retry_base_ms = 20;
        c.push.lease_ms = 300;
    })
    .await;
    let addr = server.metrics_addr().expect("metrics enabled");
    let push = PushServiceFake::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let bob_id = bob.identity().unwrap().user_id;
    let key = bob.push_config().await.unwrap().application_server_key;
    let sub = push.subscribe(&key);
    bob.register_push(&sub.endpoint, &sub.p256dh, &sub.auth).await.unwrap();
    let dm = alice.open_direct("bob@example.org").await.unwrap().conversation_id;
    drop(bob);
    natter_tests::wait_offline(&alice, &bob_id).await;
    // Delivered; then two 500s (given up after max_attempts = 2, one retry); then 410.
    let wait_for = |name: &'static str, want: f64| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, text) = get(addr, "/metrics").await;
            if sample(&text, name) >= want {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "{name} never reached {want}:\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    alice.send_text(&dm, "m1", "one").await.unwrap();
    wait_for("natter_push_notifications_total{result=\"delivered\"} ", 1.0).await;
    push.answer_next(500, None, 2);
    alice.send_text(&dm, "m2", "two").await.unwrap();
    let text = wait_for("natter_push_notifications_total{result=\"gave_up\"} ", 1.0).await;
    assert_eq!(sample(&text, "natter_push_retries_total "), 1.0, "{text}");
    push.answer_next(410, None, 1);
    alice.send_text(&dm, "m3", "three").await.unwrap();
    let text = wait_for("natter_push_subscriptions_removed_total ", 1.0).await;
    assert_eq!(sample(&text, "natter_push_notifications_total{result=\"gone\"} "), 1.0, "{text}");
    // Renewals report the position and a lag of nothing once all is handled.
    let text = wait_for("natter_push_handled_position ", 1.0).await;
    assert!(text.contains("natter_push_lag_events "), "{text}");
}

/// The `natter_…` metric names an expression refers to.
fn natter_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("natter_") {
        let boundary = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if boundary {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

/// Whether the exposition `text` has a sample name `name`: a family, or a
/// counter's `_total`, or a histogram's `_bucket`, `_sum` and `_count`.
fn exposed(text: &str, name: &str) -> bool {
    text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).any(|l| {
        let (family, kind) = l.split_once(' ').unwrap_or((l, ""));
        match kind {
            "counter" => name == format!("{family}_total"),
            "histogram" => ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{family}{s}")),
            _ => name == family,
        }
    })
}

#[tokio::test]
async fn the_dashboard_and_the_alert_rules_query_only_metrics_natterd_exposes() {
    let server = TestServer::start_with(|c| c.metrics.listen = Some("127.0.0.1:0".parse().unwrap())).await;
    // natter_requests has a sample once something was asked.
    let (client, _) = server.new_user("alice@example.org").await;
    client.close().await;
    let (_, text) = get(server.metrics_addr().expect("metrics enabled"), "/metrics").await;
    assert!(sample(&text, "natter_data_dir_free_bytes") > 0.0, "the data directory's free space is reported");
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ops.join("grafana/natter.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "the dashboard's panels");
    let mut seen = std::collections::BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} queries something", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = natter_names(expr);
            assert!(!names.is_empty(), "{expr}: names no natter metric");
            for name in names {
                assert!(
                    exposed(&text, name),
                    "the dashboard's {expr:?} names {name}, which /metrics does not expose:\n{}",
                    text.lines().filter(|l| l.starts_with("# TYPE")).collect::<Vec<_>>().join("\n")
                );
                seen.insert(name.to_owned());
            }
        }
    }
    // What an operator watches is all on it.
    for needed in [
        "natter_connections",
        "natter_requests_total",
        "natter_messages_appended_total",
        "natter_commit_seconds_bucket",
        "natter_commit_batch_jobs_sum",
        "natter_deliveries_total",
        "natter_outbound_overflows_total",
        "natter_media_transfer_bytes_total",
        "natter_push_notifications_total",
        "natter_search_lag_events",
        "natter_process_resident_bytes",
    ] {
        assert!(seen.contains(needed), "the dashboard shows {needed}");
    }

    let rules = std::fs::read_to_string(ops.join("prometheus/natter-alerts.yml")).unwrap();
    let exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")).map(str::trim).collect();
    assert!(exprs.len() >= 8, "the alert rules: {exprs:?}");
    for expr in exprs {
        let names = natter_names(expr);
        assert!(!names.is_empty() || expr.starts_with("up{job=\"natter\"}"), "{expr}: names no natter metric");
        for name in names {
            assert!(exposed(&text, name), "the alert {expr:?} names {name}, which /metrics does not expose");
        }
    }
}
