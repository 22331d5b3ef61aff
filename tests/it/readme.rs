//! README.md, followed literally: its commands are extracted from the file
//! itself and run in order against a fresh natterd, so the walkthrough cannot
//! drift from what the programs do.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use natter_tests::{TestServer, PASSWORD};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The placeholders a reader replaces by hand.
const README_PIN: &str = "sha256:3f9c…e1";
const README_SERVER: &str = "127.0.0.1:7443";
/// The subscription the walkthrough hands over (a reader's comes from their browser).
const README_ENDPOINT: &str = "https://push.example.net/wpush/v2/gAAAAABk";
const README_P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
const README_AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the section headed `## {title}…`, up to the next `## `.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme.find(&format!("\n## {title}")).unwrap_or_else(|| panic!("README has no section {title:?}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

/// The shell commands of a section's ```sh blocks, continuation lines joined,
/// in order.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.trim();
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        if !command.trim().is_empty() && !command.trim_start().starts_with('#') {
            out.push(command);
        }
    }
    out
}

/// One command as a reader runs it: in a shell, with `natter` on the PATH, the
/// reader's home directory, and the password typed when asked.
fn shell(command: &str, home: &Path, bin: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(command);
    c.env("HOME", home);
    // Files the walkthrough makes (what it sends) go there too.
    c.current_dir(home);
    c.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
    c.env_remove("NATTER_PROFILE");
    c.kill_on_drop(true);
    c
}

async fn run_to_end(mut c: Command, command: &str) -> String {
    c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn bash");
    use tokio::io::AsyncWriteExt;
    // A command that reads no password may be done before it is typed
    // (the pipe is closed then): that is no failure of the command.
    if let Err(e) = child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).await {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "typing the password into {command}: {e}");
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("README command did not finish: {command}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README command failed: {command}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A `listen` without `--count` runs until stopped: a terminal of its own.
struct Terminal {
    child: Child,
}

impl Terminal {
    /// Stops it (Ctrl-C) and returns what it printed.
    async fn output(mut self) -> String {
        let pid = self.child.id().expect("listen is still running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        let mut out = String::new();
        let mut stdout = self.child.stdout.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), stdout.read_to_string(&mut out))
            .await
            .expect("listen stops on Ctrl-C")
            .unwrap();
        let _ = self.child.wait().await;
        out
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_in_order_as_written() {
    let text = readme();
    // A reader types slower than this harness: new messages are searchable
    // within a second, and the walkthrough searches soon after sending.
    let server = TestServer::start_with(|c| {
        c.search.commit_interval_ms = 100;
        c.push.allow_http_loopback = true;
    })
    .await;
    // Dave's subscription is one of the push service in the harness.
    let push = natter_tests::push_service::PushServiceFake::start().await;
    let (probe, _) = server.new_user("probe@example.org").await;
    let sub = push.subscribe(&probe.push_config().await.unwrap().application_server_key);
    probe.close().await;
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(PathBuf::from(env!("CARGO_BIN_EXE_natter-under-test")), bin.path().join("natter"))
        .unwrap();

    let mut walkthrough = commands(section(&text, "Try it"));
    assert!(walkthrough.len() >= 20, "the walkthrough has its commands: {walkthrough:#?}");
    let mut terminals = Vec::new();
    let mut outputs = Vec::new();
    for command in walkthrough.drain(..) {
        // `printf` makes a file to send; everything else is the installed `natter`.
        let ok = command.starts_with("natter ") || command.starts_with("printf ");
        assert!(ok, "the walkthrough uses the installed `natter`: {command}");
        let real = command
            .replace(README_PIN, server.fingerprint())
            .replace(README_SERVER, &server.addr().to_string())
            .replace(README_ENDPOINT, &sub.endpoint)
            .replace(README_P256DH, &b64(&sub.p256dh))
            .replace(README_AUTH, &b64(&sub.auth));
        let mut c = shell(&real, home.path(), bin.path());
        if command.contains(" listen") && !command.contains("--count") {
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = c.spawn().expect("spawn listen");
            // A reader starts the next command once listen says it is
            // listening (typing, unlike messages, reaches only those connected).
            let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
            loop {
                let line = tokio::time::timeout(Duration::from_secs(20), stderr.next_line())
                    .await
                    .unwrap_or_else(|_| panic!("{command}: no 'listening as' line"))
                    .unwrap()
                    .unwrap_or_else(|| panic!("{command} ended"));
                if line.contains("listening as") {
                    break;
                }
            }
            tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
            terminals.push((command, Terminal { child }));
        } else {
            outputs.push((command.clone(), run_to_end(c, &command).await));
        }
    }

    // What the walkthrough promises people see.
    let said = |needle: &str| outputs.iter().find(|(c, _)| c.contains(needle)).map(|(_, o)| o.clone()).unwrap();
    assert!(said("--profile ~/.natter-carol conversations").contains("'team' (1 unread)"));
    assert!(said("receipts team 2").contains("read by 1 of 2"));
    assert!(said("history crew").contains("hello team"), "a removed member reads what was said while she was in");
    assert!(said("group show crew").contains("bob@example.org (owner)"));
    let found = said("natter-carol search");
    assert!(found.contains("'crew'") && found.contains("[hello] [team]"), "Carol finds the group's message:\n{found}");
    assert!(said("natter-bob search").contains("[minutes]"), "Bob finds the file by its caption");
    assert!(said("find da").contains("dave@example.org"), "Bob finds Dave, with whom he is in 'crew'");
    assert!(said("send-file bob@example.org minutes.pdf").contains("application/pdf"));
    assert!(said("download alice@example.org 4").contains("saved minutes-from-alice.pdf"));
    let saved = std::fs::read(home.path().join("minutes-from-alice.pdf")).expect("Bob saved the file");
    assert_eq!(saved, std::fs::read(home.path().join("minutes.pdf")).unwrap(), "byte for byte");
    assert!(said("push status").contains("application server key: "));
    // End-to-end encrypted: the texts read back on the other devices, never in natterd's files.
    assert!(said("history --e2ee alice@example.org").contains("[e2ee] the spare key is under the blue pot"));
    assert!(said("natter-bob   history vault").contains("[e2ee] encrypted for the three of us"));
    let carol_reads = said("natter-carol history vault");
    assert!(carol_reads.contains("[e2ee] now from my phone too"), "Bob's new phone joined and sent:\n{carol_reads}");
    let (number_a, number_b) = (said("natter-alice verify"), said("natter-bob   verify"));
    let digits = |out: &str| out.lines().filter(|l| l.starts_with("  ")).map(str::trim).collect::<Vec<_>>().join(" ");
    assert_eq!(digits(&number_a).split(' ').count(), 12, "{number_a}");
    assert_eq!(digits(&number_a), digits(&number_b), "the same safety number on both sides");
    for words in ["the spare key is under the blue pot", "encrypted for the three of us", "now from my phone too"] {
        let found = natter_tests::files_containing(server.data_dir(), words.as_bytes());
        assert!(found.is_empty(), "{words:?} in {found:?}");
    }
    let (alice_listen, alice) = terminals.remove(0);
    assert!(alice_listen.contains("natter-alice listen"), "{alice_listen}");
    let alice = alice.output().await;
    assert!(alice.contains("hi Alice!"), "Alice's listen shows Bob's message:\n{alice}");
    assert!(alice.contains("is typing"), "Alice's listen shows Bob typing:\n{alice}");
    for (_, t) in terminals {
        t.output().await;
    }
}

#[test]
fn the_readme_opens_with_the_two_commands_and_installs_every_binary() {
    let text = readme();
    let first_block = text.split("```sh").nth(1).expect("a first command block");
    assert!(first_block.contains("cargo run --release --bin natterd"), "{first_block}");
    assert!(first_block.contains("cargo test --workspace"), "{first_block}");
    // The test command of the README is what CI runs.
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/run")).unwrap();
    assert!(ci.contains("cargo test --workspace"), "CI runs the README's test command");

    let install = commands(section(&text, "Install"));
    for (path, binary) in
        [("server", "natterd"), ("client", "natter"), ("admin-cli", "natter-admin"), ("loadgen", "natter-loadgen")]
    {
        let line = format!("cargo install --locked --path {path}");
        assert!(
            install.iter().any(|c| c.split('#').next().is_some_and(|c| c.trim() == line)),
            "README installs {binary} with --locked: {install:#?}"
        );
    }
}
