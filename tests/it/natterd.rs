//! The `natterd` binary as an operator meets it: signals, its output, its
//! configuration from the environment.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use natter_client::proto::GetHistory;
use natter_client::Client;
use natter_tests::{parse_listening_line, CHILD_ENV, PASSWORD};

/// natterd with only the test's `NATTER_*` variables (none of the caller's).
fn natterd(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = std::process::Command::new(crate::natterd());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("NATTER_")) {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--data-dir").arg(data_dir).arg("--listen").arg(crate::crash::free_udp_port().to_string());
    for (k, v) in CHILD_ENV.iter().chain(env) {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    let mut cmd = Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd
}

/// Waits at most `limit` for the child to exit (`None`: it did not).
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    tokio::time::timeout(limit, child.wait()).await.ok().map(|r| r.expect("wait natterd"))
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = child.id().expect("natterd is running");
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Spawns natterd with stdout piped and reads its "listening" line.
async fn started(mut cmd: Command) -> (Child, std::net::SocketAddr, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn natterd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).await.unwrap();
    let (addr, fingerprint) = parse_listening_line(&line).unwrap_or_else(|| panic!("listening line: {line:?}"));
    (child, addr, fingerprint)
}

/// SIGTERM, and a clean exit soon after.
async fn stop(mut child: Child) {
    signal(&child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(15)).await.expect("natterd stops on SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// `natterd … 2>&1 | tee log`, then the reader goes away: SIGTERM (and
/// SIGINT) still stop natterd, cleanly, with everything acknowledged kept.
async fn stops_on_signal_after_its_log_reader_is_gone(sig: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = natterd(dir.path(), &[("NATTER_LOG", "info")]);
    cmd.stderr(Stdio::piped());
    let (mut child, addr, fingerprint) = started(cmd).await;
    // Read what it logged so far, then close the pipe: every later log line
    // (the shutdown's own included) meets a broken pipe.
    let mut stderr = child.stderr.take().unwrap();
    let mut first = [0u8; 64];
    let n = stderr.read(&mut first).await.unwrap();
    assert!(n > 0, "natterd logs at info");
    drop(stderr);

    let config = natter_client::ClientConfig::new(addr, natter_client::Trust::pin(&fingerprint).unwrap());
    let alice = Client::connect(&config).await.unwrap();
    alice.signup("alice@example.org", PASSWORD, "").await.unwrap();
    let (token, _) = alice.login("alice@example.org", PASSWORD, "d").await.unwrap();
    let bob = Client::connect(&config).await.unwrap();
    bob.signup("bob@example.org", PASSWORD, "").await.unwrap();
    let conv = alice.open_direct("bob@example.org").await.unwrap();
    let sent = alice.send_text(&conv.conversation_id, "m1", "kept").await.unwrap();
    drop((alice, bob));

    signal(&child, sig);
    let status = wait_exit(&mut child, Duration::from_secs(15))
        .await
        .expect("natterd exits on the signal although its log pipe is closed");
    assert!(status.success(), "a clean exit: {status:?}");

    // What it acknowledged is there after a restart.
    let (again, addr, fingerprint) = started(natterd(dir.path(), &[])).await;
    let mut config = natter_client::ClientConfig::new(addr, natter_client::Trust::pin(&fingerprint).unwrap());
    config.session_token = Some(token);
    let alice = Client::connect(&config).await.unwrap();
    let page = alice
        .history(GetHistory { conversation_id: conv.conversation_id.clone(), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(natter_tests::message_texts(&page.messages), vec!["kept"]);
    assert_eq!(page.messages[0].seq, sent.seq);
    stop(again).await;
}

#[tokio::test]
async fn sigterm_stops_natterd_after_its_log_pipe_closed() {
    stops_on_signal_after_its_log_reader_is_gone(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_stops_natterd_after_its_log_pipe_closed() {
    stops_on_signal_after_its_log_reader_is_gone(libc::SIGINT).await;
}

/// Runs natterd expecting it to refuse to start; returns what it said.
async fn refused(data_dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = natterd(data_dir, env);
    cmd.args(args);
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output()).await.expect("natterd exits").unwrap();
    assert!(!out.status.success(), "natterd should refuse: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn other_programs_natter_variables_do_not_stop_natterd_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // The client's own variable is not natterd's business.
    let (child, _, _) = started(natterd(dir.path(), &[("NATTER_PROFILE", "/home/alice/.natter")])).await;
    stop(child).await;

    let other = tempfile::tempdir().unwrap();
    let said = refused(other.path(), &[("NATTER_MAX_CONNECTIONS", "lots")], &[]).await;
    assert!(said.contains("NATTER_MAX_CONNECTIONS=lots: expected a whole number"), "{said}");
    let said = refused(other.path(), &[("NATTER_MAX_CONECTIONS", "5")], &[]).await;
    assert!(said.contains("did you mean NATTER_MAX_CONNECTIONS?"), "{said}");
}

#[tokio::test]
async fn load_test_data_and_peoples_data_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let people = dir.path().join("people");
    let load = dir.path().join("load");
    // An ordinary data directory is refused for a load test.
    let (child, _, _) = started(natterd(&people, &[])).await;
    stop(child).await;
    let said = refused(&people, &[], &["--load-test"]).await;
    assert!(said.contains("--load-test needs a data directory of its own"), "{said}");

    // A load-test directory is marked, and an ordinary natterd refuses it.
    let mut cmd = natterd(&load, &[]);
    cmd.arg("--load-test");
    let (child, _, _) = started(cmd).await;
    stop(child).await;
    assert!(load.join(natter_server::LOAD_TEST_MARKER).exists());
    let said = refused(&load, &[], &[]).await;
    assert!(said.contains("holds load-test data"), "{said}");
}

/// `NATTER_LOG_FORMAT=json`: every log line is a JSON object with a level,
/// a time and the message, for a log collector; another format is refused.
#[tokio::test]
async fn json_logs_are_one_object_per_line_and_a_bad_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = natterd(dir.path(), &[("NATTER_LOG", "info"), ("NATTER_LOG_FORMAT", "json")]);
    cmd.stderr(Stdio::piped());
    let (mut child, _, _) = started(cmd).await;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
        .await
        .expect("natterd logs at info")
        .unwrap()
        .expect("a line");
    let object: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object: {line:?}: {e}"));
    assert_eq!(object["level"], "INFO", "{line}");
    assert!(object["timestamp"].is_string(), "{line}");
    assert!(object["message"].as_str().is_some_and(|m| !m.is_empty()), "{line}");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    stop(child).await;

    let said = refused(dir.path(), &[("NATTER_LOG_FORMAT", "xml")], &[]).await;
    assert!(said.contains("NATTER_LOG_FORMAT=xml: expected text or json"), "{said}");
}

/// `natterd check-config FILE`: the effective configuration (file, then
/// variables) with secrets masked, or the reason it is not one natterd runs
/// with; `natterd config-reference` is docs/configuration.md.
#[tokio::test]
async fn check_config_prints_the_effective_configuration_masked_and_refuses_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("natter.toml");
    std::fs::write(
        &file,
        "max_connections = 123\n[google]\nclient_id = \"id.apps.example\"\nclient_secret = \"MARKER-secret\"\n",
    )
    .unwrap();
    let out = natterd(dir.path(), &[("NATTER_PUSH_IDLE_AFTER_MS", "60000")])
        .arg("check-config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("MARKER-secret"), "{stdout}");
    assert!(stdout.contains("client_secret = \"********\""), "{stdout}");
    assert!(stdout.contains("max_connections = 123"), "the file: {stdout}");
    assert!(stdout.contains("idle_after_ms = 60000"), "the variables over it: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("valid"));

    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let out = natterd(dir.path(), &[]).arg("check-config").arg(&file).output().await.unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("max_conections"), "names the key: {said}");

    let out = natterd(dir.path(), &[]).arg("config-reference").output().await.unwrap();
    assert!(out.status.success());
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let written = std::fs::read_to_string(&reference).unwrap_or_default();
    if std::env::var_os("NATTER_WRITE_REFERENCE").is_some() {
        std::fs::write(&reference, &out.stdout).unwrap();
    } else {
        assert_eq!(
            written,
            String::from_utf8_lossy(&out.stdout),
            "docs/configuration.md is not what `natterd config-reference` prints: run this test with \
             NATTER_WRITE_REFERENCE=1"
        );
    }
}

/// ops/systemd: natterd.service and the nightly natter-backup.service with
/// its timer: systemd accepts them (with the binaries under test in place of
/// the installed ones), and the services' exposure, as `systemd-analyze
/// security` rates it, is low.
#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/systemd");
    let admin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_natter-admin-under-test"));
    let dir = tempfile::tempdir().unwrap();
    for name in ["natterd.service", "natter-backup.service", "natter-backup.timer"] {
        let unit = std::fs::read_to_string(ops.join(name)).unwrap();
        let unit = unit
            .replace("/usr/local/bin/natterd ", &format!("{} ", crate::natterd().display()))
            .replace("/usr/local/bin/natter-admin ", &format!("{} ", admin.display()));
        assert!(!unit.contains("/usr/local/bin/"), "{name} runs the binaries under test: {unit}");
        std::fs::write(dir.path().join(name), unit).unwrap();
    }
    let analyze = |args: &[&str], name: &str| {
        let out = std::process::Command::new("systemd-analyze")
            .args(args)
            .arg(dir.path().join(name))
            .output()
            .expect("systemd-analyze (Debian's systemd package) checks the unit");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    for name in ["natterd.service", "natter-backup.service", "natter-backup.timer"] {
        let (ok, said) = analyze(&["verify"], name);
        assert!(ok && said.trim().is_empty(), "systemd-analyze verify {name}: {said}");
    }
    for name in ["natterd.service", "natter-backup.service"] {
        let (ok, said) = analyze(&["security", "--offline=yes"], name);
        assert!(ok, "{said}");
        let level: f64 = said
            .lines()
            .find_map(|l| l.split(&format!("Overall exposure level for {name}: ")).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {said}"));
        assert!(level <= 1.5, "{name}: exposure {level} (0 is best, 10 worst):\n{said}");
    }
}

/// Each program prints completions naming its subcommands and a manual page.
#[tokio::test]
async fn every_program_prints_shell_completions_and_a_manual_page() {
    let dir = tempfile::tempdir().unwrap();
    let programs = [
        (std::path::PathBuf::from(env!("CARGO_BIN_EXE_natter-under-test")), "natter", "signup"),
        (std::path::PathBuf::from(env!("CARGO_BIN_EXE_natter-admin-under-test")), "natter-admin", "copy-log"),
        (crate::natterd(), "natterd", "check-config"),
    ];
    for (bin, name, subcommand) in programs {
        let run = |args: &[&str]| {
            let mut c = std::process::Command::new(&bin);
            c.args(args).env("NATTER_PROFILE", dir.path()).env_remove("NATTER_LOG_FORMAT");
            let out = c.output().unwrap();
            assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let bash = run(&["completions", "bash"]);
        assert!(
            bash.contains("complete -F") && bash.contains(name) && bash.contains(subcommand),
            "{name}: {bash:.300}"
        );
        assert!(run(&["completions", "zsh"]).starts_with(&format!("#compdef {name}")), "{name}");
        let man = run(&["man"]);
        // roff writes a hyphen as \-.
        assert!(
            man.contains(&format!(".TH {name}")) && man.contains(&subcommand.replace('-', "\\-")),
            "{name}: {man:.300}"
        );
    }
}
