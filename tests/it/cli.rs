//! The README's "try it": two people chatting with the `natter` CLI; and the
//! CLI's account security: devices, password change and reset, email
//! verification, two-factor sign-in (codes computed as an authenticator app
//! would, mail read from a real SMTP server in the harness).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_server::auth::totp::{code_at, TotpSecret};
use natter_tests::smtp_sink::{ReceivedMail, SmtpSink};
use natter_tests::{TestServer, PASSWORD};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

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

const NEW_PASSWORD: &str = "an entirely new passphrase";
const WAIT: Duration = Duration::from_secs(20);

/// A `natter` still running, talked to line by line (a prompt it answers
/// after showing something, such as the TOTP secret or "a code was mailed").
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: ChildStderr,
}

impl Running {
    fn start(mut c: Command) -> Self {
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn natter");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = child.stderr.take().unwrap();
        Self { child, stdin, stdout, stderr }
    }

    async fn line(&mut self, what: &str) -> String {
        tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("natter prints {what} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("natter ended before {what}"))
    }

    async fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes its input and waits: (succeeded, the rest of stdout, stderr).
    async fn finish(mut self) -> (bool, String, String) {
        drop(self.stdin.take());
        let mut rest = String::new();
        while let Some(line) = tokio::time::timeout(WAIT, self.stdout.next_line()).await.expect("natter ends").unwrap()
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        let mut stderr = String::new();
        self.stderr.read_to_string(&mut stderr).await.unwrap();
        let status = tokio::time::timeout(WAIT, self.child.wait()).await.expect("natter ends").unwrap();
        (status.success(), rest, stderr)
    }
}

async fn signup(server: &TestServer, profile: &Path, email: &str) {
    let out =
        run(cmd(server, profile, &["signup", "--email", email, "--password-stdin"]), &format!("{PASSWORD}\n")).await;
    assert!(out.contains(&format!("signed in as {email}")), "{out}");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn secret_of(base32: &str) -> TotpSecret {
    natter_tests::totp_secret(base32)
}

async fn server_with_mail() -> (TestServer, SmtpSink) {
    TestServer::start_with_mail().await
}

/// The code of the `nth` (0-based) mail to `to` whose subject contains `what`
/// (the subject ends with the code).
async fn mailed_code(sink: &SmtpSink, to: &str, what: &str, nth: usize) -> String {
    let to = to.to_owned();
    let matches = |m: &ReceivedMail| m.rcpt_to.contains(&to) && m.header("Subject").is_some_and(|s| s.contains(what));
    let mail = loop {
        let found: Vec<ReceivedMail> = sink.messages().into_iter().filter(|m| matches(m)).collect();
        if let Some(mail) = found.get(nth) {
            break mail.clone();
        }
        sink.wait_for(|m| matches(m) && !found.contains(m), WAIT).await;
    };
    let subject = mail.header("Subject").unwrap();
    let code = subject.rsplit(' ').next().unwrap().to_owned();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{subject}");
    code
}

/// The ids of `natter sessions`' rows (the header and the legend left out),
/// with whether each is this device.
fn session_rows(table: &str) -> Vec<(String, bool, String)> {
    table
        .lines()
        .skip(1)
        .filter(|l| *l != "* this device")
        .map(|line| {
            let current = line.starts_with('*');
            let mut words = line.trim_start_matches('*').split_whitespace();
            let id = words.next().expect("an id").to_owned();
            (id, current, line.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn two_factor_sign_in_with_the_cli() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    signup(&server, &alice, "alice@example.org").await;

    // `mfa enable` shows the secret, then confirms the app's code on the same connection.
    let mut enable = Running::start(cmd(&server, &alice, &["mfa", "enable", "--json", "--code-stdin"]));
    let setup: serde_json::Value = serde_json::from_str(&enable.line("the secret").await).expect("JSON");
    let base32 = setup["secret"].as_str().expect("a secret").to_owned();
    let uri = setup["uri"].as_str().expect("an otpauth URI");
    assert!(uri.starts_with("otpauth://totp/") && uri.contains(&format!("secret={base32}")), "{uri}");
    let secret = secret_of(&base32);
    let now = unix_now();
    enable.write(&format!("{}\n", code_at(&secret, now))).await;
    let codes: serde_json::Value = serde_json::from_str(&enable.line("the recovery codes").await).expect("JSON");
    let (ok, rest, stderr) = enable.finish().await;
    assert!(ok, "mfa enable failed: {stderr}\n{rest}");
    assert!(stderr.contains("shown once"), "{stderr}");
    let codes: Vec<String> =
        codes["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), 10, "{codes:?}");

    // A password alone no longer signs in; with the next step's code it does
    // (this step's code was spent by the confirmation).
    let laptop = dir.path().join("laptop");
    let login = ["login", "--email", "alice@example.org", "--password-stdin", "--code-stdin"];
    let next = code_at(&secret, now + 30);
    let out = run(cmd(&server, &laptop, &login), &format!("{PASSWORD}\n{next}\n")).await;
    assert!(out.contains("signed in as alice@example.org"), "{out}");
    run(cmd(&server, &laptop, &["conversations"]), "").await;
    let err = run_fail(cmd(&server, &laptop, &login), &format!("{PASSWORD}\n{next}\n")).await;
    assert!(err.contains("CODE_INVALID") && err.contains("already used"), "a code signs in once: {err}");
    let err = run_fail(cmd(&server, &laptop, &login), &format!("{PASSWORD}\n")).await;
    assert!(err.contains("standard input ended before the code"), "no code, no sign-in: {err}");

    // A recovery code signs in once.
    let out = run(cmd(&server, &laptop, &login), &format!("{PASSWORD}\n{}\n", codes[0])).await;
    assert!(out.contains("signed in as alice@example.org"), "{out}");
    let err = run_fail(cmd(&server, &laptop, &login), &format!("{PASSWORD}\n{}\n", codes[0])).await;
    assert!(err.contains("CODE_INVALID"), "{err}");

    // A new set replaces the old one; a code of the new set turns TOTP off.
    let out = run(cmd(&server, &laptop, &["mfa", "recovery-codes", "--code-stdin"]), &format!("{}\n", codes[1])).await;
    assert!(out.contains("shown once"), "{out}");
    let fresh: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(fresh.len(), 10, "{out}");
    assert!(!fresh.contains(&codes[2].as_str()), "{out}");
    let err = run_fail(cmd(&server, &laptop, &["mfa", "disable", "--code-stdin"]), &format!("{}\n", codes[2])).await;
    assert!(err.contains("CODE_INVALID"), "the old set no longer works: {err}");
    let out = run(cmd(&server, &laptop, &["mfa", "disable", "--code-stdin"]), &format!("{}\n", fresh[0])).await;
    assert!(out.contains("two-factor sign-in is off"), "{out}");
    let out = run(cmd(&server, &alice, &["login", "--password-stdin"]), &format!("{PASSWORD}\n")).await;
    assert!(out.contains("signed in as alice@example.org"), "the password alone signs in again: {out}");
    let err = run_fail(cmd(&server, &alice, &["mfa", "disable", "--code-stdin"]), "123456\n").await;
    assert!(err.contains("MFA_NOT_ENABLED"), "{err}");
}

#[tokio::test]
async fn mfa_enable_for_people_shows_a_qr_code_and_the_key_to_type() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bob = dir.path().join("bob");
    signup(&server, &bob, "bob@example.org").await;

    let mut enable = Running::start(cmd(&server, &bob, &["mfa", "enable", "--code-stdin"]));
    let mut qr = Vec::new();
    let key = loop {
        let line = enable.line("the key to type").await;
        if let Some(key) = line.strip_prefix("or type this key into it: ") {
            break key.to_owned();
        }
        qr.push(line);
    };
    let blocks: Vec<&String> = qr.iter().filter(|l| l.contains(['\u{2580}', '\u{2584}', '\u{2588}'])).collect();
    assert!(blocks.len() > 10, "a QR code of half blocks: {qr:#?}");
    assert!(qr.iter().skip(1).all(|l| l.chars().count() == qr[1].chars().count()), "a square: {qr:#?}");
    assert!(key.split(' ').all(|group| group.len() == 4) && key.split(' ').count() == 8, "{key}");
    enable.write(&format!("{}\n", code_at(&secret_of(&key), unix_now()))).await;
    let (ok, out, stderr) = enable.finish().await;
    assert!(ok, "mfa enable failed: {stderr}\n{out}");
    assert!(out.contains("two-factor sign-in is on") && out.contains("shown once"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("  ")).count(), 10, "{out}");

    // Once on, a second `enable` is refused before showing any secret.
    let err = run_fail(cmd(&server, &bob, &["mfa", "enable", "--json", "--code-stdin"]), "").await;
    assert!(err.contains("MFA_ALREADY_ENABLED"), "{err}");
}

#[tokio::test]
async fn devices_are_listed_and_signed_out_with_the_cli() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let profile = |name: &str| dir.path().join(name);
    signup(&server, &profile("laptop"), "alice@example.org").await;
    let pw = format!("{PASSWORD}\n");
    for device in ["phone", "tablet"] {
        let login = ["login", "--email", "alice@example.org", "--password-stdin", "--device", device];
        run(cmd(&server, &profile(device), &login), &pw).await;
    }
    let laptop = |args: &[&str]| cmd(&server, &profile("laptop"), args);

    let table = run(laptop(&["sessions"]), "").await;
    assert!(table.lines().next().unwrap().contains("DEVICE"), "{table}");
    let rows = session_rows(&table);
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(rows.iter().filter(|(_, current, _)| *current).count(), 1, "{table}");
    assert!(rows[0].1, "the laptop signed in first and is this device: {table}");
    assert!(rows[1].2.contains("phone") && rows[2].2.contains("tablet"), "{table}");
    assert!(rows.iter().all(|(_, _, l)| l.contains("password") && l.contains("127.0.0.1")), "{table}");
    assert!(rows.iter().all(|(id, _, _)| uuid::Uuid::try_parse(id).is_ok()), "{table}");

    let err = run_fail(laptop(&["sessions", "revoke", "00000000-0000-4000-8000-000000000000"]), "").await;
    assert!(err.contains("none of your devices"), "{err}");
    let err = run_fail(laptop(&["sessions", "revoke", &rows[0].0]), "").await;
    assert!(err.contains("natter logout"), "this device signs out with logout: {err}");

    // The phone, by the start of its id.
    let out = run(laptop(&["sessions", "revoke", &rows[1].0[..8]]), "").await;
    assert!(out.contains("signed out 'phone'"), "{out}");
    let err = run_fail(cmd(&server, &profile("phone"), &["conversations"]), "").await;
    assert!(err.contains("session has ended"), "{err}");

    // Every other device: the tablet.
    let out = run(laptop(&["sessions", "--others"]), "").await;
    assert!(out.contains("signed out 1 other device"), "{out}");
    let err = run_fail(cmd(&server, &profile("tablet"), &["conversations"]), "").await;
    assert!(err.contains("session has ended"), "{err}");
    let rows = session_rows(&run(laptop(&["sessions"]), "").await);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].1);
}

#[tokio::test]
async fn a_changed_password_with_the_cli() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, phone) = (dir.path().join("alice"), dir.path().join("phone"));
    signup(&server, &alice, "alice@example.org").await;
    let login = ["login", "--email", "alice@example.org", "--password-stdin"];
    run(cmd(&server, &phone, &login), &format!("{PASSWORD}\n")).await;

    let change = ["password", "change", "--password-stdin"];
    let err = run_fail(cmd(&server, &alice, &change), &format!("not my password\n{NEW_PASSWORD}\n")).await;
    assert!(err.contains("INVALID_CREDENTIALS"), "{err}");
    let err = run_fail(cmd(&server, &alice, &change), &format!("{PASSWORD}\nshort\n")).await;
    assert!(err.contains("WEAK_PASSWORD"), "{err}");
    let out = run(cmd(&server, &alice, &change), &format!("{PASSWORD}\n{NEW_PASSWORD}\n")).await;
    assert!(out.contains("password changed; 1 other device signed out"), "{out}");

    // This device stays signed in; the other is signed out; only the new password works.
    run(cmd(&server, &alice, &["conversations"]), "").await;
    let err = run_fail(cmd(&server, &phone, &["conversations"]), "").await;
    assert!(err.contains("session has ended"), "{err}");
    let err = run_fail(cmd(&server, &phone, &login), &format!("{PASSWORD}\n")).await;
    assert!(err.contains("INVALID_CREDENTIALS"), "{err}");
    let out = run(cmd(&server, &phone, &login), &format!("{NEW_PASSWORD}\n")).await;
    assert!(out.contains("signed in as alice@example.org"), "{out}");
}

#[tokio::test]
async fn a_forgotten_password_is_reset_with_the_mailed_code() {
    let (server, sink) = server_with_mail().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, phone) = (dir.path().join("alice"), dir.path().join("phone"));
    signup(&server, &alice, "alice@example.org").await;
    let login = ["login", "--email", "alice@example.org", "--password-stdin"];
    run(cmd(&server, &phone, &login), &format!("{PASSWORD}\n")).await;
    let reset = ["password", "reset", "--email", "alice@example.org", "--code-stdin"];

    // A wrong code changes nothing.
    let mut wrong = Running::start(cmd(&server, &alice, &reset));
    let said = wrong.line("that a code was mailed").await;
    assert_eq!(said, "if alice@example.org has an account, a code was mailed to it, valid 5 minutes");
    let code = mailed_code(&sink, "alice@example.org", "password reset", 0).await;
    let other = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    wrong.write(&format!("{other}\n{NEW_PASSWORD}\n")).await;
    let (ok, _, stderr) = wrong.finish().await;
    assert!(!ok && stderr.contains("CODE_INVALID") && stderr.contains("tries left"), "{stderr}");
    run(cmd(&server, &phone, &["conversations"]), "").await;

    // The right one (of a new mail) replaces the password and signs every device out.
    let mut right = Running::start(cmd(&server, &alice, &reset));
    right.line("that a code was mailed").await;
    let code = mailed_code(&sink, "alice@example.org", "password reset", 1).await;
    right.write(&format!("{code}\n{NEW_PASSWORD}\n")).await;
    let (ok, out, stderr) = right.finish().await;
    assert!(ok, "reset failed: {stderr}");
    assert!(out.contains("every device was signed out (2 devices)") && out.contains("natter login"), "{out}");
    let err = run_fail(cmd(&server, &alice, &["conversations"]), "").await;
    assert!(err.contains("not signed in"), "this profile's token was cleared: {err}");
    let err = run_fail(cmd(&server, &phone, &["conversations"]), "").await;
    assert!(err.contains("session has ended"), "{err}");
    let err = run_fail(cmd(&server, &alice, &["login", "--password-stdin"]), &format!("{PASSWORD}\n")).await;
    assert!(err.contains("INVALID_CREDENTIALS"), "{err}");
    let out = run(cmd(&server, &alice, &["login", "--password-stdin"]), &format!("{NEW_PASSWORD}\n")).await;
    assert!(out.contains("signed in as alice@example.org"), "{out}");

    // An address without an account gets the same answer, and no code works for it.
    let nobody = ["password", "reset", "--email", "nobody@example.org", "--code-stdin"];
    let err = run_fail(cmd(&server, &dir.path().join("nobody"), &nobody), &format!("123456\n{NEW_PASSWORD}\n")).await;
    assert!(err.contains("CODE_EXPIRED"), "{err}");
}

#[tokio::test]
async fn the_email_address_is_verified_with_the_mailed_code() {
    let (server, sink) = server_with_mail().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));

    // Signup mails the first code.
    signup(&server, &alice, "alice@example.org").await;
    let code = mailed_code(&sink, "alice@example.org", "verification", 0).await;
    let out = run(cmd(&server, &alice, &["verify-email", "--code-stdin"]), &format!("{code}\n")).await;
    assert_eq!(out.trim(), "alice@example.org is verified");
    let out = run(cmd(&server, &alice, &["verify-email", "--resend"]), "").await;
    assert_eq!(out.trim(), "alice@example.org is already verified");

    // `--resend` mails a new code, which replaces the first.
    signup(&server, &bob, "bob@example.org").await;
    let first = mailed_code(&sink, "bob@example.org", "verification", 0).await;
    let mut verify = Running::start(cmd(&server, &bob, &["verify-email", "--resend", "--code-stdin"]));
    let said = verify.line("that a code was mailed").await;
    assert_eq!(said, "a new code was mailed to bob@example.org, valid 5 minutes");
    let second = mailed_code(&sink, "bob@example.org", "verification", 1).await;
    if first != second {
        let err = run_fail(cmd(&server, &bob, &["verify-email", "--code-stdin"]), &format!("{first}\n")).await;
        assert!(err.contains("CODE_INVALID"), "the first code was replaced: {err}");
    }
    verify.write(&format!("{second}\n")).await;
    let (ok, out, stderr) = verify.finish().await;
    assert!(ok, "verify-email failed: {stderr}");
    assert_eq!(out.trim(), "bob@example.org is verified");
}

/// Runs `c`, waits for the text it makes natterd send to `to`, and answers
/// the code on its standard input.
async fn answer_texted_code(
    mut c: Command,
    fake: &natter_tests::twilio_fake::TwilioFake,
    to: &str,
) -> std::process::Output {
    let before = fake.sent();
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let to2 = to.to_owned();
    let sms = fake.wait_for(move |m| m.to == to2 && !before.contains(m), Duration::from_secs(20)).await;
    let code: String = sms.body.chars().filter(char::is_ascii_digit).take(6).collect();
    child.stdin.take().unwrap().write_all(format!("{code}\n").as_bytes()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("natter finishes").unwrap()
}

#[tokio::test]
async fn a_phone_is_added_and_then_signs_in_with_a_texted_code() {
    let fake = natter_tests::twilio_fake::TwilioFake::start().await;
    let sms = fake.messaging_config();
    let server = TestServer::start_with(move |c| c.sms = sms).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, phone) = (dir.path().join("alice"), dir.path().join("phone"));
    signup(&server, &alice, "alice@example.org").await;

    let out = answer_texted_code(
        cmd(&server, &alice, &["add-phone", "+49 151 2345 6789", "--code-stdin"]),
        &fake,
        "+4915123456789",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("+4915123456789 is on your account"), "{said}");

    let out = answer_texted_code(
        cmd(&server, &phone, &["login", "--phone", "+4915123456789", "--code-stdin", "--device", "phone"]),
        &fake,
        "+4915123456789",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed in as alice@example.org"));
    let sessions = run(cmd(&server, &phone, &["sessions"]), "").await;
    assert!(sessions.lines().any(|l| l.contains("phone") && l.starts_with('*')), "{sessions}");

    // A bad number is refused before anything is sent.
    let err = run_fail(cmd(&server, &phone, &["login", "--phone", "0151 2345", "--code-stdin"]), "").await;
    assert!(err.contains("INVALID_PHONE") && err.contains("country code"), "{err}");
}

/// Runs a `natter` command that signs in with a provider: reads the page it
/// prints, approves it like a browser would, and returns what it printed.
async fn with_browser(mut c: Command, provider: &str) -> (String, String) {
    c.env("NATTER_NO_BROWSER", "1");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn natter");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = format!("open this page to sign in with {provider}: ");
    let mut before = String::new();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
            .await
            .expect("natter prints the page")
            .unwrap()
            .unwrap_or_else(|| panic!("natter ended without a page: {before}"));
        if let Some(url) = line.strip_prefix(&prefix) {
            break url.to_owned();
        }
        before.push_str(&line);
        before.push('\n');
    };
    natter_tests::oidc_provider::browse(&url).await.expect("the loopback listener answered the browser");
    let mut rest = String::new();
    let mut err = stderr.into_inner();
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        err.read_to_string(&mut rest).await.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("natter finishes");
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
    assert!(status.success(), "natter failed: {before}{rest}\n{out}");
    (out, format!("{before}{rest}"))
}

#[tokio::test]
async fn natter_signs_in_with_google_links_github_and_unlinks_while_another_way_remains() {
    use natter_tests::github_fake::GithubFake;
    use natter_tests::oidc_provider::{OidcProvider, OidcUser};
    let idp = OidcProvider::start(crate::oauth::CLIENT_ID, crate::oauth::CLIENT_SECRET).await;
    let hub = GithubFake::start(crate::oauth::CLIENT_ID, crate::oauth::CLIENT_SECRET).await;
    let (google, github) = (crate::oauth::google_config(&idp), crate::oauth::github_config(&hub));
    let server = TestServer::start_with(move |c| {
        c.google = google;
        c.github = github;
    })
    .await;
    idp.set_user(OidcUser {
        sub: "4711".into(),
        email: "erin@example.com".into(),
        name: "Erin".into(),
        email_verified: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path();
    let (out, err) = with_browser(cmd(&server, profile, &["login", "--google"]), "Google").await;
    assert!(format!("{out}{err}").contains("erin@example.com"), "{out}{err}");
    // The profile keeps the session.
    let sessions = run(cmd(&server, profile, &["sessions"]), "").await;
    assert!(sessions.contains("google"), "{sessions}");
    with_browser(cmd(&server, profile, &["link", "--github"]), "GitHub").await;
    let linked = run(cmd(&server, profile, &["identities"]), "").await;
    assert!(linked.contains("google") && linked.contains("github") && linked.contains("erin@example.com"), "{linked}");
    run(cmd(&server, profile, &["unlink", "--google"]), "").await;
    let e = run_fail(cmd(&server, profile, &["unlink", "--github"]), "").await;
    assert!(e.contains("only way"), "{e}");
    // Not configured for Google any more? The message says where to look.
    let other = TestServer::start().await;
    let e = run_fail(cmd(&other, &dir.path().join("p2"), &["login", "--google"]), "").await;
    assert!(e.contains("no Google sign-in configured") && e.contains("README"), "{e}");
}

#[tokio::test]
async fn a_pdf_is_sent_with_send_file_and_saved_with_download() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let pw = format!("{PASSWORD}\n");
    run(cmd(&server, &alice, &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    run(cmd(&server, &bob, &["signup", "--email", "bob@example.org", "--password-stdin"]), &pw).await;
    let mut pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    pdf.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let path = dir.path().join("minutes.pdf");
    std::fs::write(&path, &pdf).unwrap();
    let out = run(
        cmd(&server, &alice, &["send-file", "bob@example.org", path.to_str().unwrap(), "--caption", "today's minutes"]),
        "",
    )
    .await;
    assert!(out.starts_with("sent #2 to bob@example.org") && out.contains("application/pdf"), "{out}");
    let history = run(cmd(&server, &bob, &["history", "alice@example.org"]), "").await;
    assert!(history.contains("[file minutes.pdf, application/pdf, 195.3 KiB] today's minutes"), "{history}");
    let saved = dir.path().join("saved.pdf");
    let out = run(cmd(&server, &bob, &["download", "alice@example.org", "2", "-o", saved.to_str().unwrap()]), "").await;
    assert!(out.starts_with("saved"), "{out}");
    assert_eq!(std::fs::read(&saved).unwrap(), pdf);
    // A message that is not a file, and one that does not exist.
    run(cmd(&server, &alice, &["send", "bob@example.org", "see the pdf"]), "").await;
    let e = run_fail(cmd(&server, &bob, &["download", "alice@example.org", "3"]), "").await;
    assert!(e.contains("not a file"), "{e}");
    let e = run_fail(cmd(&server, &bob, &["download", "alice@example.org", "99"]), "").await;
    assert!(e.contains("no message #99"), "{e}");
}

#[tokio::test]
async fn push_notifications_are_set_up_muted_and_shaped_with_the_cli() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let server = TestServer::start_with(|c| {
        c.push.allow_http_loopback = true;
        c.push.coalesce_ms = 100;
    })
    .await;
    let push = natter_tests::push_service::PushServiceFake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    signup(&server, &alice, "alice@example.org").await;
    signup(&server, &bob, "bob@example.org").await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "hi"]), "").await;

    // The key a browser subscribes with, then the subscription handed over.
    let status = run(cmd(&server, &bob, &["push", "status"]), "").await;
    let key = status.lines().find_map(|l| l.strip_prefix("application server key: ")).expect("the key");
    assert!(status.contains("no subscription"), "{status}");
    let sub = push.subscribe(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).unwrap());
    let args =
        ["push", "register", "--endpoint", &sub.endpoint, "--p256dh", &b64(&sub.p256dh), "--auth", &b64(&sub.auth)];
    let out = run(cmd(&server, &bob, &args), "").await;
    assert!(out.contains(&sub.endpoint), "{out}");
    let bad = ["push", "register", "--endpoint", "http://push.example.net/x", "--p256dh", "AAAA", "--auth", "AAAA"];
    let e = run_fail(cmd(&server, &bob, &bad), "").await;
    assert!(e.contains("INVALID_ARGUMENT"), "{e}");

    let out = run(cmd(&server, &bob, &["mute", "alice@example.org", "--for", "8h"]), "").await;
    assert!(out.contains("muted until") && out.contains("UTC"), "{out}");
    let status = run(cmd(&server, &bob, &["push", "status"]), "").await;
    assert!(status.contains(&format!("this device: {}", sub.endpoint)) && status.contains("muted "), "{status}");
    assert!(run_fail(cmd(&server, &bob, &["mute", "alice@example.org", "--for", "8w"]), "").await.contains("unit"));
    // Muted: alice's message brings nothing (bob's natter is not connected).
    run(cmd(&server, &alice, &["send", "bob@example.org", "muted"]), "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(push.received().is_empty(), "{:?}", push.received());

    run(cmd(&server, &bob, &["unmute", "alice@example.org"]), "").await;
    let out = run(cmd(&server, &bob, &["push", "previews", "off"]), "").await;
    assert!(out.contains("off"), "{out}");
    // Once natterd has seen bob's last command's connection close, he is offline.
    let (probe, _) = server.new_device("alice@example.org", "probe").await;
    let dm = probe.open_direct("bob@example.org").await.unwrap();
    let bob_id = dm.members.iter().find(|m| m.email == "bob@example.org").unwrap().user_id.clone();
    natter_tests::wait_offline(&probe, &bob_id).await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "a secret"]), "").await;
    let got = push.wait_for(WAIT, "bob's notification", |r| !r.is_empty()).await;
    assert!(got[0].payload.get("text").is_none(), "{:?}", got[0].payload);
    assert_eq!(got[0].payload["conversation_kind"], "direct");

    run(cmd(&server, &bob, &["push", "unregister"]), "").await;
    let status = run(cmd(&server, &bob, &["push", "status"]), "").await;
    assert!(status.contains("no subscription") && status.contains("message text in notifications: off"), "{status}");
}

/// The safety number line(s) of `natter verify`'s output, joined.
fn safety_number_of(out: &str) -> String {
    out.lines().filter(|l| l.starts_with("  ")).map(str::trim).collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn devices_and_verify_show_keys_the_same_safety_number_and_warn_when_keys_change() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    signup(&server, &alice, "alice@example.org").await;
    signup(&server, &bob, "bob@example.org").await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "hi"]), "").await;

    let out = run(cmd(&server, &alice, &["devices"]), "").await;
    assert!(out.lines().next().unwrap().starts_with("* "), "this device is marked: {out}");
    assert!(out.contains("this device has 100 KeyPackages waiting on the server and a last-resort one"), "{out}");
    // Bob has not set up his device yet.
    let e = run_fail(cmd(&server, &alice, &["verify", "bob@example.org"]), "").await;
    assert!(e.contains("no device set up for end-to-end encryption"), "{e}");
    run(cmd(&server, &bob, &["devices"]), "").await;

    let from_alice = run(cmd(&server, &alice, &["verify", "bob@example.org"]), "").await;
    assert!(from_alice.contains("first time you see bob@example.org's keys"), "{from_alice}");
    let from_bob = run(cmd(&server, &bob, &["verify", "alice@example.org", "--confirmed"]), "").await;
    let number = safety_number_of(&from_alice);
    assert_eq!(number.split(' ').count(), 12, "{from_alice}");
    assert!(number.split(' ').all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())), "{number}");
    assert_eq!(safety_number_of(&from_bob), number, "both see the same number");
    assert!(from_bob.contains("marked alice@example.org's keys as verified"), "{from_bob}");
    let again = run(cmd(&server, &bob, &["verify", "alice@example.org"]), "").await;
    assert!(again.contains("keys are the ones you verified"), "{again}");

    // Alice's device loses its state: a new key. Bob is warned, loudly.
    std::fs::remove_dir_all(alice.join("mls")).unwrap();
    run(cmd(&server, &alice, &["devices"]), "").await;
    let mut c = cmd(&server, &bob, &["verify", "alice@example.org"]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = c.output().await.unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains("WARNING: alice@example.org's keys CHANGED"), "{stderr}");
    assert!(stderr.contains("new key: ") && stderr.contains("earlier verification no longer holds"), "{stderr}");
    assert_ne!(safety_number_of(&stdout), number, "a new key, a new number");
}

#[tokio::test]
async fn an_encrypted_dm_and_group_through_the_cli_and_natterd_never_holds_the_text() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, carol) = (dir.path().join("alice"), dir.path().join("bob"), dir.path().join("carol"));
    for (profile, email) in [(&alice, "alice@example.org"), (&bob, "bob@example.org"), (&carol, "carol@example.org")] {
        signup(&server, profile, email).await;
        // Each device sets up its MLS identity (key, KeyPackages).
        run(cmd(&server, profile, &["devices"]), "").await;
    }
    let secret = "zebra-crossing-7731";

    // Bob listens; Alice starts an encrypted DM and sends into it.
    let mut listen = cmd(&server, &bob, &["listen", "--json", "--count", "1"]);
    listen.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut listener = listen.spawn().unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let out = run(cmd(&server, &alice, &["dm", "bob@example.org", "--e2ee"]), "").await;
    assert!(out.starts_with("end-to-end encrypted conversation with bob@example.org"), "{out}");
    let out = run(cmd(&server, &alice, &["send", "--e2ee", "bob@example.org", &format!("{secret} one")]), "").await;
    assert!(out.contains("(end-to-end encrypted)"), "{out}");
    let line = line_where(&mut lines, "the message", |l| l.contains(r#""type":"message""#)).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["text"], format!("{secret} one"), "{v}");
    assert_eq!(v["e2ee"], true, "{v}");
    assert!(listener.wait().await.unwrap().success());

    // Bob answers by the conversation's id; both histories show the text.
    let conv = run(cmd(&server, &bob, &["dm", "alice@example.org", "--e2ee"]), "").await;
    let conv = conv.trim().rsplit(' ').next().unwrap().to_owned();
    run(cmd(&server, &bob, &["send", &conv, &format!("{secret} two")]), "").await;
    let history = run(cmd(&server, &alice, &["history", &conv]), "").await;
    assert!(
        history.contains(&format!("[e2ee] {secret} one")) && history.contains(&format!("[e2ee] {secret} two")),
        "{history}"
    );
    let history = run(cmd(&server, &bob, &["history", &conv]), "").await;
    assert!(
        history.contains(&format!("[e2ee] {secret} one")) && history.contains(&format!("[e2ee] {secret} two")),
        "{history}"
    );

    // natter search finds it on the device (natterd's index has none of it).
    let found = run(cmd(&server, &bob, &["search", "zebra-cross"]), "").await;
    assert!(found.contains("found on this device") && found.contains("[zebra]"), "{found}");

    // A file, encrypted on Alice's device, decrypted on Bob's.
    let pdf = [b"%PDF-1.4\n".as_slice(), secret.repeat(500).as_bytes()].concat();
    let sent = dir.path().join("plans.pdf");
    std::fs::write(&sent, &pdf).unwrap();
    let out =
        run(cmd(&server, &alice, &["send-file", &conv, sent.to_str().unwrap(), "--caption", "the plans"]), "").await;
    assert!(out.contains("(end-to-end encrypted): [file plans.pdf, application/pdf"), "{out}");
    let seq = out.trim_start_matches("sent #").split(' ').next().unwrap().to_owned();
    let history = run(cmd(&server, &bob, &["history", &conv]), "").await;
    assert!(history.contains("[e2ee] [file plans.pdf, application/pdf") && history.contains("the plans"), "{history}");
    let got = dir.path().join("got.pdf");
    let out = run(cmd(&server, &bob, &["download", &conv, &seq, "-o", got.to_str().unwrap()]), "").await;
    assert!(out.contains("decrypted and checked"), "{out}");
    assert_eq!(std::fs::read(&got).unwrap(), pdf);

    // An encrypted group of three.
    run(cmd(&server, &alice, &["group", "create", "vault", "--e2ee", "bob@example.org", "carol@example.org"]), "")
        .await;
    run(cmd(&server, &carol, &["send", "vault", &format!("{secret} three")]), "").await;
    for profile in [&alice, &bob] {
        let history = run(cmd(&server, profile, &["history", "vault"]), "").await;
        assert!(history.contains(&format!("[e2ee] {secret} three")), "{history}");
    }

    let found = natter_tests::files_containing(server.data_dir(), secret.as_bytes());
    assert!(found.is_empty(), "the text is in {found:?}");
}

#[tokio::test]
async fn account_export_writes_what_you_sent() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    let pw = format!("{PASSWORD}\n");
    run(cmd(&server, &alice, &["signup", "--email", "alice@example.org", "--password-stdin"]), &pw).await;
    run(cmd(&server, &bob, &["signup", "--email", "bob@example.org", "--password-stdin"]), &pw).await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "exported words"]), "").await;
    let out_dir = dir.path().join("export");
    let out = run(cmd(&server, &alice, &["account", "export", "--out", out_dir.to_str().unwrap()]), "").await;
    assert!(out.contains("1 conversations, 1 messages you sent"), "{out}");
    let lines = std::fs::read_to_string(out_dir.join("messages.jsonl")).unwrap();
    assert!(lines.contains("exported words"), "{lines}");
}

#[tokio::test]
async fn account_delete_and_retention_with_the_cli() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice"), dir.path().join("bob"));
    signup(&server, &alice, "alice@example.org").await;
    signup(&server, &bob, "bob@example.org").await;
    run(cmd(&server, &alice, &["send", "bob@example.org", "words to forget"]), "").await;
    // Retention: shown, then set by either person of a direct conversation.
    let shown = run(cmd(&server, &bob, &["retention", "alice@example.org"]), "").await;
    assert!(shown.contains("keeps messages for ever (its own limit: none; the server's: none)"), "{shown}");
    let set = run(cmd(&server, &bob, &["retention", "alice@example.org", "--keep", "30d"]), "").await;
    assert!(set.contains("keeps messages 30d (its own limit: 30d"), "{set}");
    let bad = run_fail(cmd(&server, &bob, &["retention", "alice@example.org", "--keep", "soon"]), "").await;
    assert!(bad.contains("--keep"), "{bad}");
    let dm = server.new_device("bob@example.org", "sdk").await.0.open_direct("alice@example.org").await.unwrap();
    // Without a terminal, deleting needs --yes; a wrong password deletes nothing.
    let refused = run_fail(cmd(&server, &alice, &["account", "delete", "--password-stdin"]), "x\n").await;
    assert!(refused.contains("--yes"), "{refused}");
    let wrong = run_fail(cmd(&server, &alice, &["account", "delete", "--yes", "--password-stdin"]), "wrong\n").await;
    assert!(wrong.contains("INVALID_CREDENTIALS") || wrong.contains("password"), "{wrong}");
    let out =
        run(cmd(&server, &alice, &["account", "delete", "--yes", "--password-stdin"]), &format!("{PASSWORD}\n")).await;
    assert!(out.contains("account deleted: 1 messages erased, 0 uploads deleted"), "{out}");
    // Her address names no one now: bob finds the conversation by its id.
    let history = run(cmd(&server, &bob, &["history", &dm.conversation_id]), "").await;
    assert!(history.contains("(erased: the account was deleted)") && !history.contains("words to forget"), "{history}");
    // The profile is signed out.
    let gone = run_fail(cmd(&server, &alice, &["conversations"]), "").await;
    assert!(gone.contains("sign in") || gone.contains("login"), "{gone}");
}
