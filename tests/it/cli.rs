//! The README's "try it": two people chatting with the `natter` CLI.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use natter_tests::{TestServer, PASSWORD};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

fn natter() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_natter-under-test"))
}

fn cmd(server: &TestServer, profile: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(natter());
    c.arg("--profile").arg(profile);
    c.arg("--server").arg(server.addr().to_string()).arg("--pin").arg(server.fingerprint());
    c.args(args);
    c.kill_on_drop(true);
    c
}

/// Runs a command to completion with `stdin`, returning stdout; panics on failure.
async fn run(mut c: Command, stdin: &str) -> String {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn natter");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("natter finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "natter failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[tokio::test]
async fn two_people_chat_with_the_cli() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let pw = format!("{PASSWORD}\n");

    let out = run(cmd(&server, &alice, &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    assert!(out.contains("signed in as alice@example.org"), "{out}");
    run(cmd(&server, &bob, &["signup", "--email", "bob@example.org", "--name", "Bob", "--password-stdin"]), &pw).await;

    // Bob listens; Alice sends; Bob's listener prints it as JSON and exits.
    let mut listen = cmd(&server, &bob, &["listen", "--json", "--count", "2"]);
    listen.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut listener = listen.spawn().unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();

    let out = run(cmd(&server, &alice, &["send", "bob@example.org", "hi bob"]), "").await;
    assert!(out.starts_with("sent #2 to bob@example.org"), "{out}");
    run(cmd(&server, &alice, &["send", "bob@example.org", "second"]), "").await;

    let mut seen = Vec::new();
    while let Some(line) =
        tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.expect("listen prints").unwrap()
    {
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
        seen.push(v);
    }
    let status = listener.wait().await.unwrap();
    assert!(status.success());
    let messages: Vec<&serde_json::Value> = seen.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(messages.len(), 2, "{seen:?}");
    assert_eq!(messages[0]["text"], "hi bob");
    assert_eq!(messages[0]["sender"], "alice@example.org");
    assert_eq!(messages[1]["text"], "second");

    // A second listen resumes from the saved cursor: only the new message.
    run(cmd(&server, &alice, &["send", "bob@example.org", "third"]), "").await;
    let out = run(cmd(&server, &bob, &["listen", "--json", "--count", "1"]), "").await;
    let v: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let texts: Vec<&serde_json::Value> = v.iter().filter(|v| v["type"] == "message").map(|v| &v["text"]).collect();
    assert_eq!(texts, vec!["third"]);

    let history = run(cmd(&server, &bob, &["history", "alice@example.org"]), "").await;
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "{history}");
    assert!(lines[0].ends_with("#2 alice@example.org: hi bob"), "{history}");
    let convs = run(cmd(&server, &bob, &["conversations"]), "").await;
    assert!(convs.starts_with("alice@example.org"), "{convs}");
    assert!(convs.contains("third"), "{convs}");

    // Logout; afterwards the CLI says to log in.
    run(cmd(&server, &bob, &["logout"]), "").await;
    let mut c = cmd(&server, &bob, &["conversations"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = c.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed in"));
    // The profile holding the token is private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(alice.join("profile.toml")).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn cli_without_trust_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(natter())
        .arg("--profile")
        .arg(dir.path())
        .args(["signup", "--email", "x@example.org", "--password-stdin"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pin"), "{err}");
}

#[tokio::test]
async fn listen_reconnects_after_a_server_restart_and_misses_nothing() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let pw = format!("{PASSWORD}\n");
    run(cmd(&server, &alice, &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    run(cmd(&server, &bob, &["signup", "--email", "bob@example.org", "--password-stdin"]), &pw).await;

    let mut listen = cmd(&server, &bob, &["listen", "--json", "--count", "3"]);
    listen.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut listener = listen.spawn().unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let mut next_message = async || loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("listen prints in time")
            .unwrap()
            .expect("listen still running");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "message" {
            return v["text"].as_str().unwrap().to_owned();
        }
    };

    run(cmd(&server, &alice, &["send", "bob@example.org", "before restart"]), "").await;
    assert_eq!(next_message().await, "before restart");
    server.restart().await;
    // Sent while the listener may still be reconnecting: delivered from the log.
    run(cmd(&server, &alice, &["send", "bob@example.org", "after restart 1"]), "").await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "after restart 2"]), "").await;
    assert_eq!(next_message().await, "after restart 1");
    assert_eq!(next_message().await, "after restart 2");
    assert!(listener.wait().await.unwrap().success());
}

#[tokio::test]
async fn a_group_with_the_cli_unread_read_and_receipts() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = |who: &str| dir.path().join(who);
    let pw = format!("{PASSWORD}\n");
    for who in ["alice", "bob", "carol"] {
        let email = format!("{who}@example.org");
        run(cmd(&server, &profile(who), &["signup", "--email", &email, "--password-stdin"]), &pw).await;
    }
    let out =
        run(cmd(&server, &profile("alice"), &["group", "create", "team", "bob@example.org", "carol@example.org"]), "")
            .await;
    assert!(out.starts_with("'team' ["), "{out}");
    assert!(out.contains("alice@example.org (owner)") && out.contains("bob@example.org (member)"), "{out}");

    let out = run(cmd(&server, &profile("alice"), &["send", "team", "hello team"]), "").await;
    assert!(out.starts_with("sent #2 to 'team'"), "{out}");
    let convs = run(cmd(&server, &profile("carol"), &["conversations"]), "").await;
    assert!(convs.starts_with("'team' (1 unread)"), "{convs}");
    let out = run(cmd(&server, &profile("carol"), &["read", "team"]), "").await;
    assert_eq!(out.trim(), "'team' read up to #2");
    let convs = run(cmd(&server, &profile("carol"), &["conversations"]), "").await;
    assert!(convs.starts_with("'team'  "), "{convs}");
    let out = run(cmd(&server, &profile("alice"), &["receipts", "team", "2"]), "").await;
    assert!(out.contains("read by 1 of 2"), "{out}");
    assert!(out.contains("read by carol@example.org"), "{out}");

    // Bob is made admin, renames the group, removes Carol; Carol is told.
    run(cmd(&server, &profile("alice"), &["group", "role", "team", "bob@example.org", "admin"]), "").await;
    run(cmd(&server, &profile("bob"), &["group", "rename", "team", "crew"]), "").await;
    let out = run(cmd(&server, &profile("bob"), &["group", "remove", "crew", "carol@example.org"]), "").await;
    assert!(!out.contains("carol@example.org"), "{out}");
    let listen = run(cmd(&server, &profile("carol"), &["listen", "--count", "1"]), "").await;
    assert!(listen.contains("group 'team' created with 3 members"), "{listen}");
    assert!(listen.contains("#2 alice@example.org: hello team"), "{listen}");
    let mut c = cmd(&server, &profile("carol"), &["send", "crew", "am I still here?"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = c.output().await.unwrap();
    assert!(!out.status.success(), "carol can no longer find or send to the group");
    run(cmd(&server, &profile("alice"), &["group", "leave", "crew"]), "").await;
    let show = run(cmd(&server, &profile("bob"), &["group", "show", "crew"]), "").await;
    assert!(show.contains("bob@example.org (owner)"), "ownership handed over: {show}");
}
