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

/// Runs a command that must fail, with `stdin`; returns its standard error.
async fn run_fail(mut c: Command, stdin: &str) -> String {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn natter");
    // It may have failed before reading its input: a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes()).await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("natter finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "natter succeeded: {}\n{stderr}", String::from_utf8_lossy(&out.stdout));
    stderr
}

/// The next line of a running `natter listen` that `pred` accepts (others are skipped).
async fn line_where(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("listen prints {what} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("listen ended before {what}"));
        if pred(&line) {
            return line;
        }
    }
}

/// The id in a `'name' [id]` line of `natter group create` or `show`.
fn group_id(out: &str) -> String {
    let (_, rest) = out.split_once('[').expect("an id in brackets");
    rest.split_once(']').expect("closing bracket").0.to_owned()
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
    let mut stderr = listener.stderr.take().unwrap();
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
    let mut said = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut said).await.unwrap();
    assert!(said.contains(&format!("reconnected to {}", server.addr())), "{said}");
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

#[tokio::test]
async fn a_removed_member_reads_the_group_up_to_the_removal_by_its_name() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = |who: &str| dir.path().join(who);
    let pw = format!("{PASSWORD}\n");
    for who in ["alice", "bob", "carol"] {
        let email = format!("{who}@example.org");
        run(cmd(&server, &profile(who), &["signup", "--email", &email, "--password-stdin"]), &pw).await;
    }
    let alice = |args: &'static [&'static str]| cmd(&server, &profile("alice"), args);
    let carol = |args: &[&str]| cmd(&server, &profile("carol"), args);
    let old = group_id(&run(alice(&["group", "create", "crew", "bob@example.org", "carol@example.org"]), "").await);
    run(alice(&["send", "crew", "before the removal"]), "").await;
    run(alice(&["group", "remove", "crew", "carol@example.org"]), "").await;
    run(alice(&["send", "crew", "after the removal"]), "").await;

    // Carol sees the group as left, and reads it by that name up to her removal.
    let convs = run(carol(&["conversations"]), "").await;
    assert!(convs.starts_with("'crew'") && convs.lines().next().unwrap().contains("(left)"), "{convs}");
    let history = run(carol(&["history", "crew"]), "").await;
    assert!(history.contains("alice@example.org: before the removal"), "{history}");
    assert!(!history.contains("after the removal"), "{history}");
    assert!(history.contains("no longer a member"), "{history}");
    let show = run(carol(&["group", "show", "crew"]), "").await;
    assert!(show.starts_with(&format!("'crew' (left) [{old}]")), "{show}");
    // What needs membership says why it is refused.
    let err = run_fail(carol(&["send", "crew", "am I still here?"]), "").await;
    assert!(err.contains("no longer a member of 'crew'"), "{err}");
    let err = run_fail(carol(&["receipts", "crew", "2"]), "").await;
    assert!(err.contains("no longer a member of 'crew'"), "{err}");

    // A group of the same name she is in wins; the old one stays readable by id.
    run(carol(&["group", "create", "crew", "bob@example.org"]), "").await;
    run(carol(&["send", "crew", "in the new crew"]), "").await;
    let history = run(carol(&["history", "crew"]), "").await;
    assert!(history.contains("in the new crew") && !history.contains("before the removal"), "{history}");
    let history = run(carol(&["history", &old]), "").await;
    assert!(history.contains("before the removal") && !history.contains("after the removal"), "{history}");
}

#[tokio::test]
async fn listen_names_people_and_conversations_and_not_my_own_receipts() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = |who: &str| dir.path().join(who);
    let pw = format!("{PASSWORD}\n");
    run(cmd(&server, &profile("alice"), &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    let bob_signup = ["signup", "--email", "bob@example.org", "--name", "Bob Stone", "--password-stdin"];
    run(cmd(&server, &profile("bob"), &bob_signup), &pw).await;
    let alice = |args: &[&str]| cmd(&server, &profile("alice"), args);
    let bob = |args: &[&str]| cmd(&server, &profile("bob"), args);
    let team = group_id(&run(alice(&["group", "create", "team", "bob@example.org"]), "").await);
    run(alice(&["send", "team", "hello team"]), "").await;
    run(alice(&["send", "bob@example.org", "hi bob"]), "").await;
    run(bob(&["read", "team"]), "").await;
    run(bob(&["read", "alice@example.org"]), "").await;
    run(alice(&["read", "team"]), "").await;
    run(bob(&["send", "team", "done"]), "").await;

    // The feed holds Alice's own receipt too (JSON shows everything, with emails) …
    let device = profile("alice-laptop");
    run(cmd(&server, &device, &["login", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    let out = run(cmd(&server, &device, &["listen", "--json", "--count", "3"]), "").await;
    let receipts: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "receipt")
        .collect();
    assert!(receipts.iter().any(|r| r["email"] == "alice@example.org"), "{out}");
    assert!(receipts.iter().any(|r| r["email"] == "bob@example.org" && r["read_up_to"] == 2), "{out}");

    // … but a person reads who did what where, and not her own receipts.
    let out = run(alice(&["listen", "--count", "3"]), "").await;
    assert!(out.contains("* #1 group 'team' created with 2 members by you"), "{out}");
    assert!(out.contains("] 'team' #2 alice@example.org: hello team"), "{out}");
    assert!(out.contains("] (to bob@example.org) #2 alice@example.org: hi bob"), "{out}");
    assert!(out.contains("* bob@example.org (Bob Stone) read up to #2 in 'team'"), "{out}");
    assert!(out.contains("* bob@example.org (Bob Stone) read up to #2 of your conversation"), "{out}");
    assert!(out.contains("] 'team' #3 bob@example.org: done"), "{out}");
    assert!(!out.contains("alice@example.org read") && !out.contains("alice@example.org received"), "{out}");
    assert!(!out.contains(&team) && !out.contains("user "), "no ids: {out}");
}

#[tokio::test]
async fn a_wrong_pin_shows_both_fingerprints() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut c = Command::new(natter());
    c.arg("--profile").arg(dir.path()).arg("--server").arg(server.addr().to_string()).arg("--pin").arg(&wrong);
    c.args(["login", "--email", "alice@example.org", "--password-stdin"]);
    let err = run_fail(c, &format!("{PASSWORD}\n")).await;
    assert!(err.contains("does not match the pin"), "{err}");
    assert!(err.contains(&wrong) && err.contains(server.fingerprint()), "both fingerprints: {err}");
}

#[tokio::test]
async fn nothing_answering_at_the_address_asks_whether_natterd_runs() {
    // A bound port that never answers: nothing else can take it meanwhile.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(natter());
    c.arg("--profile").arg(dir.path()).arg("--server").arg(addr.to_string());
    c.args(["--pin", &format!("sha256:{}", "00".repeat(32)), "--connect-timeout", "0.5"]);
    c.args(["login", "--email", "alice@example.org", "--password-stdin"]);
    let err = run_fail(c, &format!("{PASSWORD}\n")).await;
    assert!(err.contains(&format!("no answer from {addr} within 0.5s")), "{err}");
    assert!(err.contains("is natterd running there?"), "{err}");
}

#[tokio::test]
async fn typing_shows_in_the_members_listen() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = |who: &str| dir.path().join(who);
    let pw = format!("{PASSWORD}\n");
    for who in ["alice", "bob", "carol"] {
        let email = format!("{who}@example.org");
        run(cmd(&server, &profile(who), &["signup", "--email", &email, "--password-stdin"]), &pw).await;
    }
    let team = cmd(&server, &profile("alice"), &["group", "create", "team", "bob@example.org", "carol@example.org"]);
    let team = group_id(&run(team, "").await);

    let spawn = |who: &str, args: &[&str]| {
        let mut c = cmd(&server, &profile(who), args);
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = c.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    };
    // Bob's listen as JSON, Carol's for people; each is live once it has shown the backlog.
    let (_bob, mut bob_lines) = spawn("bob", &["listen", "--json"]);
    line_where(&mut bob_lines, "caught_up", |l| l.contains(r#""type":"caught_up""#)).await;
    let (carol, mut carol_lines) = spawn("carol", &["listen", "--count", "1"]);
    line_where(&mut carol_lines, "the group's creation", |l| l.contains("group 'team' created")).await;

    let out = run(cmd(&server, &profile("alice"), &["typing", "team"]), "").await;
    assert_eq!(out.trim(), "told 'team' that you are typing");
    let typing = line_where(&mut bob_lines, "a typing event", |l| l.contains(r#""type":"typing""#)).await;
    let typing: serde_json::Value = serde_json::from_str(&typing).unwrap();
    assert_eq!(typing["email"], "alice@example.org");
    assert_eq!(typing["conversation_id"], team.as_str());
    line_where(&mut carol_lines, "who types", |l| l == "* alice@example.org is typing in 'team'…").await;

    // Her message ends it.
    run(cmd(&server, &profile("alice"), &["send", "team", "hi"]), "").await;
    line_where(&mut carol_lines, "that she stopped", |l| l == "* alice@example.org stopped typing in 'team'").await;
    line_where(&mut carol_lines, "the message", |l| l.ends_with("'team' #2 alice@example.org: hi")).await;
    assert!(carol.wait_with_output().await.unwrap().status.success());
}

#[tokio::test]
async fn a_locked_account_says_when_to_try_again() {
    let server = TestServer::start_with(|c| {
        c.auth.max_failures = Some(3);
        c.auth.lockout_ms = Some(60_000);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    let pw = format!("{PASSWORD}\n");
    run(cmd(&server, &alice, &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    // `login` takes the email from the profile.
    run(cmd(&server, &alice, &["login", "--password-stdin"]), &pw).await;
    for _ in 0..3 {
        let err = run_fail(cmd(&server, &alice, &["login", "--password-stdin"]), "guess guess guess\n").await;
        assert!(err.contains("INVALID_CREDENTIALS"), "{err}");
    }
    let err = run_fail(cmd(&server, &alice, &["login", "--password-stdin"]), &pw).await;
    assert!(err.contains("RATE_LIMITED") && err.contains("try again in"), "{err}");

    // A profile that never signed in has no email to offer.
    let err = run_fail(cmd(&server, &dir.path().join("new"), &["login", "--password-stdin"]), &pw).await;
    assert!(err.contains("--email"), "{err}");
}
