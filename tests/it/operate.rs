//! Operating a running deployment over the protocol (spec section 5.30):
//! the admin role, accounts, sessions, second factors, the audit trail and
//! the status; through the SDK and through `natter-admin --server`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use natter_client::proto::{self as wire, request::Body};
use natter_client::{Client, ClientError};
use natter_proto::ErrorCode;
use natter_tests::{PgDatabase, TestServer, PASSWORD};

const WAIT: Duration = Duration::from_secs(10);
const OPS: &str = "ops@example.org";

fn natter_admin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_natter-admin-under-test"))
}

fn with_bootstrap(c: &mut natter_server::config::Config) {
    c.admin.bootstrap = vec![OPS.into()];
}

/// One of each admin request, naming `user`.
fn admin_requests(user: &str) -> Vec<Body> {
    vec![
        Body::AdminListUsers(wire::AdminListUsers::default()),
        Body::AdminGetUser(wire::AdminGetUser { user: user.into() }),
        Body::AdminSetDisabled(wire::AdminSetDisabled { user: user.into(), disabled: true, reason: String::new() }),
        Body::AdminRevokeSessions(wire::AdminRevokeSessions { user: user.into(), session_id: String::new() }),
        Body::AdminResetMfa(wire::AdminResetMfa { user: user.into() }),
        Body::AdminSetAdmin(wire::AdminSetAdmin { user: user.into(), admin: true }),
        Body::AdminAudit(wire::AdminAudit::default()),
        Body::AdminStatus(wire::AdminStatus {}),
        Body::AdminListGroups(wire::AdminListGroups::default()),
        Body::AdminGetGroup(wire::AdminGetGroup { conversation_id: "0f5e2a64-3c1d-5b8e-9a47-2d6c1e8b4f90".into() }),
        Body::AdminDeleteUser(wire::AdminDeleteUser { user: user.into() }),
        Body::AdminDeleteGroup(wire::AdminDeleteGroup {
            conversation_id: "0f5e2a64-3c1d-5b8e-9a47-2d6c1e8b4f90".into(),
        }),
    ]
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test]
async fn every_admin_request_is_refused_to_anyone_but_an_admin() {
    let server = TestServer::start_with(with_bootstrap).await;
    let (_ops, _) = server.new_user(OPS).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (_bob, _) = server.new_user("bob@example.org").await;
    let anonymous = server.client().await;
    for body in admin_requests("bob@example.org") {
        let what = format!("{body:?}");
        let e = anonymous.request(body.clone()).await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::UNAUTHENTICATED), "signed out: {what}");
        let e = alice.request(body).await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::FORBIDDEN), "not an admin: {what}");
    }
    // Nothing happened to bob, and nothing was audited.
    let bob = server.client().await;
    bob.login("bob@example.org", PASSWORD, "phone").await.expect("bob was not disabled");
    let ops = server.new_device(OPS, "console").await.0;
    assert!(ops.admin_audit(0, None, 0, 100).await.unwrap().entries.is_empty());
}

#[tokio::test]
async fn admin_totp_can_be_required() {
    use natter_server::auth::totp::code_at;
    let server = TestServer::start_with(|c| {
        with_bootstrap(c);
        c.admin.require_totp = true;
    })
    .await;
    let (ops, _) = server.new_user(OPS).await;
    let e = ops.admin_status().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::FORBIDDEN));
    assert!(e.to_string().contains("require_totp"), "{e}");
    let setup = ops.enable_totp().await.unwrap();
    let secret = natter_tests::totp_secret(&setup.secret_base32);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    ops.confirm_totp(&code_at(&secret, now)).await.unwrap();
    ops.admin_status().await.expect("an admin with TOTP on may");
}

#[tokio::test]
async fn an_admin_manages_accounts_and_every_action_is_audited() {
    let server = TestServer::start_with(with_bootstrap).await;
    let (ops, _) = server.new_user(OPS).await;
    let (bob, bob_token) = server.new_user("bob@example.org").await;
    let (_bob_phone, _) = server.new_device("bob@example.org", "phone").await;
    let (carol, _) = server.new_user("carol@example.org").await;

    // The list, in the order the accounts were made, paged and by prefix.
    let all = ops.admin_users("", "", 0).await.unwrap();
    let emails: Vec<&str> = all.users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails, [OPS, "bob@example.org", "carol@example.org"]);
    assert!(all.next.is_empty());
    assert!(all.users[0].admin && !all.users[1].admin, "the bootstrap admin is shown as one");
    assert_eq!(all.users[1].sessions, 2);
    let first = ops.admin_users("", "", 2).await.unwrap();
    assert_eq!(first.users.len(), 2);
    let rest = ops.admin_users("", &first.next, 2).await.unwrap();
    assert_eq!(rest.users.iter().map(|u| u.email.as_str()).collect::<Vec<_>>(), ["carol@example.org"]);
    assert!(rest.next.is_empty());
    let c = ops.admin_users("CAR", "", 0).await.unwrap();
    assert_eq!(c.users.len(), 1, "prefixes are folded");
    let e = ops.admin_users("", "garbage", 0).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::INVALID_ARGUMENT));

    // One account, by email or by id; unknown and malformed names are typed.
    let shown = ops.admin_user("bob@example.org").await.unwrap();
    let bob_id = shown.user.as_ref().unwrap().user_id.clone();
    assert_eq!(shown.sessions.len(), 2);
    assert_eq!(ops.admin_user(&bob_id).await.unwrap().user, shown.user);
    for (name, want) in [
        ("nobody@example.org", ErrorCode::NOT_FOUND),
        ("00000000-0000-0000-0000-000000000001", ErrorCode::NOT_FOUND),
        ("not an account", ErrorCode::INVALID_ARGUMENT),
        ("", ErrorCode::INVALID_ARGUMENT),
    ] {
        assert_eq!(code(&ops.admin_user(name).await.unwrap_err()), Some(want), "{name:?}");
        assert_eq!(code(&ops.admin_set_disabled(name, true, "").await.unwrap_err()), Some(want), "{name:?}");
    }

    // Disabling closes bob's connections and refuses every way back in.
    assert!(ops.admin_set_disabled("bob@example.org", true, "spam").await.unwrap());
    let closed = tokio::time::timeout(WAIT, bob.closed()).await.expect("bob's connection closes");
    assert_eq!(code(&closed), Some(ErrorCode::SESSION_INVALID));
    let mut resuming = server.client_config();
    resuming.session_token = Some(bob_token.clone());
    let Err(e) = Client::connect(&resuming).await else { panic!("a disabled account's session resumed") };
    assert_eq!(code(&e), Some(ErrorCode::ACCOUNT_DISABLED), "resuming: {e}");
    let e = server.client().await.login("bob@example.org", PASSWORD, "again").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::ACCOUNT_DISABLED), "signing in: {e}");
    let e = server.client().await.login("bob@example.org", "wrong password!", "again").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::INVALID_CREDENTIALS), "a wrong password learns nothing");
    let detail = ops.admin_user("bob@example.org").await.unwrap();
    assert!(detail.user.unwrap().disabled);
    assert!(detail.sessions.is_empty(), "every session was revoked");
    assert!(!ops.admin_set_disabled("bob@example.org", true, "").await.unwrap(), "already disabled");
    let e = ops.admin_set_disabled(OPS, true, "").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::INVALID_ARGUMENT), "not one's own account");

    // Enabled, bob signs in again; then one session revoked, then the rest.
    assert!(ops.admin_set_disabled("bob@example.org", false, "appeal").await.unwrap());
    let (laptop, _) = server.new_device("bob@example.org", "laptop").await;
    let (tablet, _) = server.new_device("bob@example.org", "tablet").await;
    let sessions = ops.admin_user("bob@example.org").await.unwrap().sessions;
    let laptop_id = sessions.iter().find(|s| s.device_name == "laptop").unwrap().session_id.clone();
    assert_eq!(ops.admin_revoke_sessions("bob@example.org", Some(&laptop_id)).await.unwrap(), 1);
    tokio::time::timeout(WAIT, laptop.closed()).await.expect("the laptop is signed out");
    let e = ops.admin_revoke_sessions("carol@example.org", Some(&laptop_id)).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::NOT_FOUND), "another account's session");
    assert_eq!(ops.admin_revoke_sessions("bob@example.org", None).await.unwrap(), 1);
    tokio::time::timeout(WAIT, tablet.closed()).await.expect("the tablet is signed out");

    // A lost authenticator: the admin turns carol's second factor off.
    let setup = carol.enable_totp().await.unwrap();
    let secret = natter_tests::totp_secret(&setup.secret_base32);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    carol.confirm_totp(&natter_server::auth::totp::code_at(&secret, now)).await.unwrap();
    assert!(matches!(
        server.client().await.login("carol@example.org", PASSWORD, "new").await,
        Err(ClientError::MfaRequired { .. })
    ));
    assert!(ops.admin_reset_mfa("carol@example.org").await.unwrap());
    assert!(!ops.admin_reset_mfa("carol@example.org").await.unwrap(), "it was off already");
    server.client().await.login("carol@example.org", PASSWORD, "new").await.expect("the password alone signs in");

    // The role: granted, used, withdrawn (not by oneself).
    assert!(ops.admin_set_admin("carol@example.org", true).await.unwrap());
    carol.admin_status().await.expect("carol is an admin now");
    let e = carol.admin_set_admin("carol@example.org", false).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::INVALID_ARGUMENT), "not one's own role");
    assert!(ops.admin_set_admin("carol@example.org", false).await.unwrap());
    assert_eq!(code(&carol.admin_status().await.unwrap_err()), Some(ErrorCode::FORBIDDEN), "at once");

    // The trail: every change, in order, who, what, whom, from where.
    let trail = ops.admin_audit(0, None, 0, 0).await.unwrap();
    let actions: Vec<(&str, &str, &str)> =
        trail.entries.iter().map(|e| (e.action.as_str(), e.target_email.as_str(), e.detail.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("disable", "bob@example.org", "spam"),
            ("enable", "bob@example.org", "appeal"),
            ("revoke_sessions", "bob@example.org", laptop_id.as_str()),
            ("revoke_sessions", "bob@example.org", "all"),
            ("reset_mfa", "carol@example.org", ""),
            ("grant_admin", "carol@example.org", ""),
            ("revoke_admin", "carol@example.org", ""),
        ]
    );
    for e in &trail.entries {
        assert_eq!(e.actor_email, OPS);
        assert_eq!(e.from, "127.0.0.1");
        assert!(e.at_ms > 0);
    }
    let seqs: Vec<u64> = trail.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    // Paged, filtered by actor and by time.
    let page = ops.admin_audit(0, None, 0, 3).await.unwrap();
    assert_eq!(page.entries.len(), 3);
    let more = ops.admin_audit(page.next, None, 0, 100).await.unwrap();
    assert_eq!(more.entries.first().map(|e| e.seq), Some(4));
    let end = ops.admin_audit(more.next, None, 0, 100).await.unwrap();
    assert!(end.entries.is_empty());
    assert_eq!(end.next, more.next, "nothing more yet");
    assert!(ops.admin_audit(0, Some("carol@example.org"), 0, 0).await.unwrap().entries.is_empty());
    assert_eq!(ops.admin_audit(0, Some(OPS), 0, 0).await.unwrap().entries.len(), 7);
    let last_at = trail.entries.last().unwrap().at_ms;
    let recent = ops.admin_audit(0, None, last_at, 0).await.unwrap();
    assert!(recent.entries.iter().all(|e| e.at_ms >= last_at) && !recent.entries.is_empty());
    assert_eq!(
        code(&ops.admin_audit(0, Some("nobody@example.org"), 0, 0).await.unwrap_err()),
        Some(ErrorCode::NOT_FOUND)
    );

    // Groups: listed by name, shown with their members; direct conversations
    // are nobody's business but their two people's.
    let group = carol.create_group("Book club", &["bob@example.org"]).await.unwrap().conversation_id;
    carol.create_group("Chess", &[]).await.unwrap();
    let dm = carol.open_direct("bob@example.org").await.unwrap().conversation_id;
    let groups = ops.admin_groups("", "", 0).await.unwrap();
    assert_eq!(groups.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["Book club", "Chess"]);
    assert_eq!(groups.groups[0].members, 2);
    let one = ops.admin_groups("book", "", 1).await.unwrap();
    assert_eq!(one.groups.len(), 1);
    assert!(ops.admin_groups("book", &one.next, 1).await.unwrap().groups.is_empty());
    let shown = ops.admin_group(&group).await.unwrap();
    let members: Vec<(&str, i32)> = shown.members.iter().map(|m| (m.email.as_str(), m.role)).collect();
    assert_eq!(
        members,
        [("carol@example.org", wire::Role::Owner as i32), ("bob@example.org", wire::Role::Member as i32)]
    );
    assert_eq!(code(&ops.admin_group(&dm).await.unwrap_err()), Some(ErrorCode::NOT_FOUND), "not a group");
    assert_eq!(
        code(&ops.admin_group("00000000-0000-0000-0000-000000000009").await.unwrap_err()),
        Some(ErrorCode::NOT_FOUND)
    );
    assert_eq!(code(&ops.admin_group("nope").await.unwrap_err()), Some(ErrorCode::INVALID_ARGUMENT));
    assert_eq!(code(&ops.admin_groups("", "nope", 0).await.unwrap_err()), Some(ErrorCode::INVALID_ARGUMENT));

    // The status of this one node.
    let status = ops.admin_status().await.unwrap();
    assert_eq!(status.store, "sqlite");
    assert_eq!(status.users, 3);
    assert!(status.connections >= 2 && status.sessions >= 2, "{status:?}");
    assert!(status.head > 0 && status.nodes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_outlives_a_disabling_however_sign_ins_race_it() {
    let server = TestServer::start_with(|c| {
        with_bootstrap(c);
        c.auth.attempts_per_minute = Some(10_000);
    })
    .await;
    let (ops, _) = server.new_user(OPS).await;
    server.new_user("bob@example.org").await;
    let signing_in: Vec<_> = (0..12)
        .map(|i| {
            let config = server.client_config();
            tokio::spawn(async move {
                let c = Client::connect(&config).await.unwrap();
                let r = c.login("bob@example.org", PASSWORD, &format!("d{i}")).await;
                (c, r.map(|_| ()))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(ops.admin_set_disabled("bob@example.org", true, "race").await.unwrap());
    for task in signing_in {
        let (c, r) = task.await.unwrap();
        match r {
            // Signed in before the disabling: closed by it.
            Ok(()) => {
                let closed = tokio::time::timeout(WAIT, c.closed()).await.expect("closed by the disabling");
                assert_eq!(code(&closed), Some(ErrorCode::SESSION_INVALID));
            }
            Err(e) => assert_eq!(code(&e), Some(ErrorCode::ACCOUNT_DISABLED), "{e}"),
        }
    }
    assert!(ops.admin_user("bob@example.org").await.unwrap().sessions.is_empty(), "no session is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_two_nodes_a_disabled_accounts_connection_on_the_other_node_closes() {
    let Some(db) = PgDatabase::create().await else { return };
    let node_a = TestServer::start_postgres_with(&db, with_bootstrap).await;
    let node_b = TestServer::start_postgres_with(&db, with_bootstrap).await;
    let (ops, _) = node_a.new_user(OPS).await;
    let (bob, _) = node_b.new_user("bob@example.org").await;
    assert!(ops.admin_set_disabled("bob@example.org", true, "").await.unwrap());
    let closed = tokio::time::timeout(WAIT, bob.closed()).await.expect("closed on the other node");
    assert_eq!(code(&closed), Some(ErrorCode::SESSION_INVALID));
    let e = node_b.client().await.login("bob@example.org", PASSWORD, "d").await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::ACCOUNT_DISABLED));

    // Both nodes are in the status, whichever answers; the trail is shared.
    let status = ops.admin_status().await.unwrap();
    assert_eq!(status.store, "postgres");
    assert_eq!(status.nodes.len(), 2, "{status:?}");
    assert!(status.nodes.iter().any(|n| n.node_id == status.node_id));
    let (ops_b, _) = node_b.new_device(OPS, "b").await;
    assert_eq!(ops_b.admin_audit(0, None, 0, 0).await.unwrap().entries.len(), 1);
}

async fn run(cmd: &mut tokio::process::Command, stdin: &str) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn natter-admin");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("finishes").unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn remote(server: &TestServer, profile: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(natter_admin());
    c.arg("--profile").arg(profile);
    c.arg("--server").arg(server.addr().to_string()).arg("--pin").arg(server.fingerprint());
    c.args(args);
    c
}

#[tokio::test]
async fn natter_admin_grants_offline_then_operates_over_the_network() {
    let mut server = TestServer::start().await;
    server.new_user(OPS).await;
    let (bob, _) = server.new_user("bob@example.org").await;
    drop(bob);
    let store = server.data_dir().to_str().unwrap().to_owned();

    // Offline on the data directory: refused while natterd holds it.
    let mut grant = tokio::process::Command::new(natter_admin());
    grant.args(["grant-admin", OPS, "--store", &store]);
    let (ok, _, err) = run(&mut grant, "").await;
    assert!(!ok && err.contains("natterd is running"), "{err}");
    server.stop().await;
    let (ok, out, err) = run(&mut grant, "").await;
    assert!(ok && out.contains("is an admin"), "{out}{err}");
    server.restart().await;

    let profile = tempfile::tempdir().unwrap();
    let p = profile.path();
    let (ok, out, err) =
        run(&mut remote(&server, p, &["login", "--email", OPS, "--password-stdin"]), &format!("{PASSWORD}\n")).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&mut remote(&server, p, &["users", "list"]), "").await;
    assert!(ok && out.contains("bob@example.org") && out.contains("admin"), "{out}{err}");
    let (ok, out, _) = run(&mut remote(&server, p, &["users", "list", "--json"]), "").await;
    assert!(ok);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["admin"], true);
    let (ok, out, err) =
        run(&mut remote(&server, p, &["users", "disable", "bob@example.org", "--reason", "spam"]), "").await;
    assert!(ok && out.contains("is disabled"), "{out}{err}");
    let (ok, out, _) = run(&mut remote(&server, p, &["users", "show", "bob@example.org", "--json"]), "").await;
    assert!(ok);
    let bob: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(bob["disabled"], true);
    let (ok, out, err) = run(&mut remote(&server, p, &["audit", "--json"]), "").await;
    assert!(ok, "{err}");
    let actions: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["grant_admin", "disable"], "the offline grant is in the trail too");
    let exported = tempfile::tempdir().unwrap();
    let out_dir = exported.path().join("bob");
    let (ok, out, err) = run(
        &mut remote(
            &server,
            p,
            &["users", "export", "bob@example.org", "--data-dir", &store, "--out", out_dir.to_str().unwrap()],
        ),
        "",
    )
    .await;
    assert!(ok && out.contains("exported bob@example.org"), "{out}{err}");
    assert!(out_dir.join("profile.json").exists() && out_dir.join("messages.jsonl").exists());
    let (ok, out, err) = run(&mut remote(&server, p, &["groups", "list"]), "").await;
    assert!(ok && out.contains("conversation id"), "{out}{err}");
    let (ok, out, err) = run(&mut remote(&server, p, &["status", "--json"]), "").await;
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["users"], 2);
    assert_eq!(status["store"], "sqlite");

    // A non-admin's session gets a hint, not just a code.
    let other = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(
        &mut remote(&server, other.path(), &["login", "--email", "carol@example.org", "--password-stdin"]),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!ok, "carol has no account: {err}");
    server.new_user("carol@example.org").await;
    let (ok, _, err) = run(
        &mut remote(&server, other.path(), &["login", "--email", "carol@example.org", "--password-stdin"]),
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(&mut remote(&server, other.path(), &["users", "list"]), "").await;
    assert!(!ok && err.contains("no admin here") && err.contains("grant-admin"), "{err}");
}
