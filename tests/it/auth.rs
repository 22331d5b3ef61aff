//! Accounts and sessions: sign-up, log-in, resume, log-out.

use natter_proto::ErrorCode;
use natter_tests::{TestServer, PASSWORD};

#[tokio::test]
async fn signup_then_login_then_resume_with_token() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let user_id = c.signup("  Alice@Example.org ", PASSWORD, "Alice").await.unwrap();
    assert!(c.identity().is_none(), "signup alone does not sign in");
    let (token, who) = c.login("alice@example.org", PASSWORD, "laptop").await.unwrap();
    assert_eq!(who.user_id, user_id);
    assert_eq!(who.email, "alice@example.org", "email is normalized");
    assert_eq!(who.display_name, "Alice");

    let resumed = server.resume(&token).await;
    let identity = resumed.identity().expect("Welcome carries the identity");
    assert_eq!(identity.user_id, user_id);
    assert_eq!(identity.device_id, who.device_id, "the session belongs to its device");
    // A resumed session can do signed-in things.
    assert!(resumed.conversations(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_error() {
    let server = TestServer::start().await;
    let (_alice, _) = server.new_user("alice@example.org").await;
    let c = server.client().await;
    let wrong = c.login("alice@example.org", "not the password", "x").await.unwrap_err();
    let unknown = c.login("nobody@example.org", PASSWORD, "x").await.unwrap_err();
    let malformed = c.login("not an email", PASSWORD, "x").await.unwrap_err();
    for e in [&wrong, &unknown, &malformed] {
        assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS), "{e}");
    }
    assert_eq!(wrong.to_string(), unknown.to_string(), "indistinguishable messages");
    assert!(c.identity().is_none());
}

#[tokio::test]
async fn duplicate_email_is_a_typed_error_even_with_different_case() {
    let server = TestServer::start().await;
    let c = server.client().await;
    c.signup("bob@example.org", PASSWORD, "").await.unwrap();
    let e = c.signup("BOB@example.org", "another fine password", "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::EMAIL_TAKEN));
}

#[tokio::test]
async fn concurrent_signups_with_one_email_create_one_account() {
    let server = TestServer::start().await;
    let clients = futures_join(&server, 8).await;
    let results = futures::future::join_all(clients.iter().map(|c| c.signup("race@example.org", PASSWORD, ""))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Some(ErrorCode::EMAIL_TAKEN));
    }
}

async fn futures_join(server: &TestServer, n: usize) -> Vec<natter_client::Client> {
    futures::future::join_all((0..n).map(|_| server.client())).await
}

#[tokio::test]
async fn password_policy_and_email_validation() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let weak = c.signup("carol@example.org", "short", "").await.unwrap_err();
    assert_eq!(weak.code(), Some(ErrorCode::WEAK_PASSWORD));
    let same = c.signup("carol@example.org", "carol@example.org", "").await.unwrap_err();
    assert_eq!(same.code(), Some(ErrorCode::WEAK_PASSWORD));
    let bad = c.signup("carol.example.org", PASSWORD, "").await.unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::INVALID_EMAIL));
    let long_name = c.signup("carol@example.org", PASSWORD, &"n".repeat(65)).await.unwrap_err();
    assert_eq!(long_name.code(), Some(ErrorCode::INVALID_ARGUMENT));
}

#[tokio::test]
async fn requests_before_authentication_are_rejected() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let conv = alice.open_direct(&server.new_user("bob@example.org").await.0.identity().unwrap().email).await.unwrap();
    let anon = server.client().await;
    for e in [
        anon.open_direct("alice@example.org").await.unwrap_err(),
        anon.send_text(&conv.conversation_id, "m1", "hi").await.unwrap_err(),
        anon.conversations(10).await.unwrap_err(),
        anon.sync(None).await.err().expect("sync refused"),
        anon.logout().await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(ErrorCode::UNAUTHENTICATED), "{e}");
    }
    // The connection stays usable: it can still sign in.
    anon.login("alice@example.org", PASSWORD, "d").await.unwrap();
}

#[tokio::test]
async fn logout_revokes_the_token_and_closes_its_other_connections() {
    let server = TestServer::start().await;
    let (alice, token) = server.new_user("alice@example.org").await;
    let other = server.resume(&token).await;
    alice.logout().await.unwrap();
    assert!(alice.identity().is_none());
    // The logged-out connection is signed out, not closed.
    assert_eq!(alice.conversations(1).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    // Another connection on the same session is closed with SESSION_INVALID.
    assert_eq!(other.closed().await.code(), Some(ErrorCode::SESSION_INVALID));
    // And the token no longer resumes.
    let mut config = server.client_config();
    config.session_token = Some(token);
    let e = natter_client::Client::connect(&config).await.err().expect("revoked token refused");
    assert_eq!(e.code(), Some(ErrorCode::SESSION_INVALID));
    // Other sessions of the same user are unaffected.
    let (laptop, laptop_token) = server.new_device("alice@example.org", "laptop").await;
    drop(laptop);
    server.resume(&laptop_token).await.conversations(1).await.unwrap();
}

#[tokio::test]
async fn login_twice_on_one_connection_is_refused() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let e = alice.login("alice@example.org", PASSWORD, "again").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ALREADY_AUTHENTICATED));
}

#[tokio::test]
async fn repeated_wrong_passwords_lock_the_account_for_a_while() {
    let server = TestServer::start_with(|c| {
        c.auth.max_failures = Some(3);
        c.auth.lockout_ms = Some(60_000);
    })
    .await;
    server.new_user("victim@example.org").await;
    let c = server.client().await;
    for _ in 0..3 {
        let e = c.login("victim@example.org", "guess guess guess", "x").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS));
    }
    // Locked now: even the right password is refused, with a time to wait.
    let e = c.login("victim@example.org", PASSWORD, "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED), "{e}");
    let natter_client::ClientError::Server { retry_after_ms, .. } = e else { unreachable!() };
    assert!(retry_after_ms > 50_000 && retry_after_ms <= 60_000, "{retry_after_ms}");
    // Other accounts are not affected.
    server.new_user("bystander@example.org").await;
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let server = TestServer::start_with(|c| c.auth.attempts_per_minute = Some(4)).await;
    let c = server.client().await;
    c.signup("rate@example.org", PASSWORD, "").await.unwrap();
    let mut limited = None;
    for i in 0..6 {
        match c.login(&format!("nobody{i}@example.org"), PASSWORD, "x").await {
            Err(e) if e.code() == Some(ErrorCode::RATE_LIMITED) => {
                limited = Some(e);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS)),
            Ok(_) => unreachable!("no such accounts"),
        }
    }
    let e = limited.expect("limited within the burst of 4 (one went to the sign-up)");
    assert!(e.to_string().contains("this address"), "{e}");
}
