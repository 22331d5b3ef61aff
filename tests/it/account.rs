//! Account security through the protocol: devices and signing them out,
//! changing and resetting the password with mailed codes, verifying the email
//! address, and the TOTP second factor with recovery codes. Mail goes to a real
//! SMTP server in the harness (`SmtpSink`); TOTP codes are computed as an
//! authenticator app would.

use std::time::Duration;

use natter_client::proto::{request::Body, response::Result as Reply, verify_mfa::Factor, *};
use natter_client::{Client, ClientError};
use natter_proto::ErrorCode;
use natter_server::auth::totp::{self, TotpSecret};
use natter_tests::smtp_sink::{ReceivedMail, SmtpSink};
use natter_tests::{TestServer, PASSWORD};

const WAIT: Duration = Duration::from_secs(15);
const NEW_PASSWORD: &str = "an entirely new passphrase";

async fn server_with_mail() -> (TestServer, SmtpSink) {
    TestServer::start_with_mail().await
}

async fn call(c: &Client, body: Body) -> Result<Reply, ClientError> {
    c.request(body).await
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// The 6-digit code in the `nth` (0-based) mail to `to` whose subject contains `what`.
async fn mailed_code(sink: &SmtpSink, to: &str, what: &str, nth: usize) -> String {
    let matches =
        |m: &ReceivedMail| m.rcpt_to.iter().any(|r| r == to) && m.header("Subject").is_some_and(|s| s.contains(what));
    let mail = loop {
        let found: Vec<ReceivedMail> = sink.messages().into_iter().filter(|m| matches(m)).collect();
        if found.len() > nth {
            break found[nth].clone();
        }
        // Wait for one more (not one already seen).
        let (to, what) = (to.to_owned(), what.to_owned());
        sink.wait_for(
            move |m| {
                m.rcpt_to.contains(&to) && m.header("Subject").is_some_and(|s| s.contains(&what)) && !found.contains(m)
            },
            WAIT,
        )
        .await;
    };
    let subject = mail.header("Subject").unwrap();
    let code: String = subject.rsplit(' ').next().unwrap().to_owned();
    assert!(code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()), "{subject}");
    assert!(mail.body().contains(&code), "the body carries the code too: {}", mail.body());
    code
}

async fn login(server: &TestServer, email: &str, password: &str, device: &str) -> Result<String, ClientError> {
    let c = server.client().await;
    let (token, _) = c.login(email, password, device).await?;
    Ok(token)
}

#[tokio::test]
async fn devices_are_listed_and_signed_out_one_by_one_or_all_but_this_one() {
    let server = TestServer::start().await;
    let (laptop, _) = server.new_user("alice@example.org").await;
    let (phone, _) = server.new_device("alice@example.org", "phone").await;
    let (tablet, _) = server.new_device("alice@example.org", "tablet").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;

    let Reply::Sessions(list) = call(&laptop, Body::ListSessions(ListSessions {})).await.unwrap() else { panic!() };
    let names: Vec<&str> = list.sessions.iter().map(|s| s.device_name.as_str()).collect();
    assert_eq!(names, ["device-1", "phone", "tablet"]);
    assert!(list.sessions[0].current && !list.sessions[1].current);
    assert!(list.sessions.iter().all(|s| s.method == "password" && s.created_at_ms > 0));
    assert!(list.sessions.iter().all(|s| s.last_address == "127.0.0.1" && s.last_used_at_ms > 0), "{list:?}");
    let phone_id = list.sessions[1].session_id.clone();

    // Someone else's device is not hers to sign out, nor is it revealed.
    let e = call(&mallory, Body::RevokeSession(RevokeSession { session_id: phone_id.clone() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NOT_FOUND));
    let e = call(&laptop, Body::RevokeSession(RevokeSession { session_id: "not-an-id".into() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NOT_FOUND));
    let current = list.sessions[0].session_id.clone();
    let e = call(&laptop, Body::RevokeSession(RevokeSession { session_id: current })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::INVALID_ARGUMENT), "this device signs out with Logout");
    // Signed out: nothing.
    let anonymous = server.client().await;
    let e = call(&anonymous, Body::ListSessions(ListSessions {})).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::UNAUTHENTICATED));
    let e = call(&anonymous, Body::RevokeOtherSessions(RevokeOtherSessions {})).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::UNAUTHENTICATED));

    // The phone is signed out: its connection closes at once.
    let Reply::Revoked(r) = call(&laptop, Body::RevokeSession(RevokeSession { session_id: phone_id })).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(r.revoked, 1);
    let closed = tokio::time::timeout(WAIT, phone.closed()).await.expect("the phone's connection closes");
    assert_eq!(closed.code(), Some(ErrorCode::SESSION_INVALID), "{closed:?}");

    // Everywhere else: the tablet goes, this laptop stays.
    let Reply::Revoked(r) = call(&laptop, Body::RevokeOtherSessions(RevokeOtherSessions {})).await.unwrap() else {
        panic!()
    };
    assert_eq!(r.revoked, 1);
    tokio::time::timeout(WAIT, tablet.closed()).await.expect("the tablet's connection closes");
    let Reply::Sessions(list) = call(&laptop, Body::ListSessions(ListSessions {})).await.unwrap() else { panic!() };
    assert_eq!(list.sessions.len(), 1);
    assert!(list.sessions[0].current);
}

#[tokio::test]
async fn a_changed_password_signs_out_every_other_device() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (other, other_token) = server.new_device("alice@example.org", "other").await;
    let change = |old: &str, new: &str| {
        Body::ChangePassword(ChangePassword { old_password: old.into(), new_password: new.into() })
    };
    let e = call(&alice, change("wrong password!", NEW_PASSWORD)).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::INVALID_CREDENTIALS));
    let e = call(&alice, change(PASSWORD, "short")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::WEAK_PASSWORD));
    let Reply::Password(p) = call(&alice, change(PASSWORD, NEW_PASSWORD)).await.unwrap() else { panic!() };
    assert_eq!(p.revoked_sessions, 1);
    tokio::time::timeout(WAIT, other.closed()).await.expect("the other device is signed out");
    let mut config = server.client_config();
    config.session_token = Some(other_token);
    assert!(Client::connect(&config).await.is_err(), "its token is revoked");
    assert_eq!(
        code_of(&login(&server, "alice@example.org", PASSWORD, "d").await.unwrap_err()),
        Some(ErrorCode::INVALID_CREDENTIALS)
    );
    login(&server, "alice@example.org", NEW_PASSWORD, "d").await.unwrap();
    // This connection stays signed in.
    call(&alice, Body::ListSessions(ListSessions {})).await.unwrap();
}

#[tokio::test]
async fn a_forgotten_password_is_reset_with_a_mailed_code_once() {
    let (server, sink) = server_with_mail().await;
    let (_alice, _) = server.new_user("alice@example.org").await;
    let (laptop, _) = server.new_device("alice@example.org", "laptop").await;
    let anonymous = server.client().await;
    let start = |email: &str| Body::StartPasswordReset(StartPasswordReset { email: email.into() });
    let reset = |code: &str, password: &str| {
        Body::ResetPassword(ResetPassword {
            email: "alice@example.org".into(),
            code: code.into(),
            new_password: password.into(),
        })
    };

    // The same answer whether or not the account exists; mail only for Alice.
    let Reply::CodeSent(a) = call(&anonymous, start("alice@example.org")).await.unwrap() else { panic!() };
    let Reply::CodeSent(b) = call(&anonymous, start("nobody@example.org")).await.unwrap() else { panic!() };
    assert_eq!(a, b);
    assert_eq!(a.expires_in_ms, 300_000);
    let code = mailed_code(&sink, "alice@example.org", "password reset", 0).await;
    assert!(sink.messages().iter().all(|m| !m.rcpt_to.contains(&"nobody@example.org".to_owned())));
    assert_eq!(code_of(&call(&anonymous, start("not an email")).await.unwrap_err()), Some(ErrorCode::INVALID_EMAIL));

    // A weak password does not spend a try; wrong codes do.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let e = call(&anonymous, reset(&code, "short")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::WEAK_PASSWORD));
    let e = call(&anonymous, reset(wrong, NEW_PASSWORD)).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));
    assert!(e.to_string().contains("4 tries left"), "{e}");
    let e = call(&anonymous, reset("12x456", NEW_PASSWORD)).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::INVALID_ARGUMENT));

    // The right one: every session ends, the new password works.
    let Reply::Password(p) = call(&anonymous, reset(&code, NEW_PASSWORD)).await.unwrap() else { panic!() };
    assert_eq!(p.revoked_sessions, 2);
    tokio::time::timeout(WAIT, laptop.closed()).await.expect("signed out everywhere");
    login(&server, "alice@example.org", NEW_PASSWORD, "d").await.unwrap();
    // Usable once.
    let e = call(&anonymous, reset(&code, "yet another passphrase")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED));

    // Five wrong tries and a code is gone, the right one included.
    call(&anonymous, start("alice@example.org")).await.unwrap();
    let code = mailed_code(&sink, "alice@example.org", "password reset", 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (0..5).rev() {
        let e = call(&anonymous, reset(wrong, NEW_PASSWORD)).await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID), "{left}: {e}");
    }
    let e = call(&anonymous, reset(&code, "yet another passphrase")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED));

    // Codes to one address are limited: 3 in 10 minutes.
    call(&anonymous, start("alice@example.org")).await.unwrap();
    let e = call(&anonymous, start("alice@example.org")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::RATE_LIMITED));
    assert!(matches!(e, ClientError::Server { retry_after_ms, .. } if retry_after_ms > 0));
}

#[tokio::test]
async fn signup_mails_a_verification_code_that_only_its_owner_can_use() {
    let (server, sink) = server_with_mail().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let alice_code = mailed_code(&sink, "alice@example.org", "verification", 0).await;
    let verify = |code: &str| Body::VerifyEmail(VerifyEmail { code: code.into() });
    // Alice's code proves nothing about Bob's address.
    let e = call(&bob, verify(&alice_code)).await.unwrap_err();
    assert!(matches!(code_of(&e), Some(ErrorCode::CODE_INVALID)), "{e}");
    let anonymous = server.client().await;
    assert_eq!(code_of(&call(&anonymous, verify(&alice_code)).await.unwrap_err()), Some(ErrorCode::UNAUTHENTICATED));
    let Reply::EmailVerified(v) = call(&alice, verify(&alice_code)).await.unwrap() else { panic!() };
    assert_eq!(v.email, "alice@example.org");
    // Asking again once verified sends nothing.
    let Reply::EmailVerified(_) = call(&alice, Body::StartEmailVerification(StartEmailVerification {})).await.unwrap()
    else {
        panic!()
    };
    // Bob asks for a new code: it replaces the first.
    let first = mailed_code(&sink, "bob@example.org", "verification", 0).await;
    let Reply::CodeSent(_) = call(&bob, Body::StartEmailVerification(StartEmailVerification {})).await.unwrap() else {
        panic!()
    };
    let second = mailed_code(&sink, "bob@example.org", "verification", 1).await;
    if first != second {
        let e = call(&bob, verify(&first)).await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));
    }
    call(&bob, verify(&second)).await.unwrap();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The secret an app would scan from the otpauth URI.
fn secret_of(setup: &TotpSetup) -> TotpSecret {
    let secret = setup.otpauth_uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert_eq!(secret, setup.secret_base32);
    natter_tests::totp_secret(secret)
}

/// Turns TOTP on for a signed-in client; returns the secret and recovery codes.
async fn enable_totp(c: &Client) -> (TotpSecret, Vec<String>) {
    let Reply::TotpSetup(setup) = call(c, Body::EnableTotp(EnableTotp {})).await.unwrap() else { panic!() };
    assert!(setup.otpauth_uri.starts_with("otpauth://totp/natter:"), "{}", setup.otpauth_uri);
    let secret = secret_of(&setup);
    let code = totp::code_at(&secret, now_secs());
    let Reply::RecoveryCodes(r) = call(c, Body::ConfirmTotp(ConfirmTotp { code })).await.unwrap() else { panic!() };
    assert_eq!(r.codes.len(), 10);
    (secret, r.codes)
}

/// A login that must answer MFA_REQUIRED; returns the connection and challenge.
async fn first_factor(server: &TestServer, email: &str) -> (Client, String) {
    let c = server.client().await;
    match c.login(email, PASSWORD, "second device").await {
        Err(ClientError::MfaRequired { challenge, .. }) => {
            assert!(challenge.len() >= 40, "a random challenge: {challenge}");
            (c, challenge)
        }
        other => panic!("expected MFA_REQUIRED: {:?}", other.map(|(t, _)| t)),
    }
}

#[tokio::test]
async fn totp_guards_every_sign_in_and_each_code_works_once() {
    let server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    // Confirming without a setup on this connection, or with a wrong code, does nothing.
    let e = call(&alice, Body::ConfirmTotp(ConfirmTotp { code: "123456".into() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::INVALID_ARGUMENT));
    let (secret, recovery) = enable_totp(&alice).await;
    let e = call(&alice, Body::EnableTotp(EnableTotp {})).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::MFA_ALREADY_ENABLED));

    // The password alone no longer signs in; the next step's code does, once.
    let (c, challenge) = first_factor(&server, "alice@example.org").await;
    let verify = |challenge: &str, factor: Factor| {
        Body::VerifyMfa(VerifyMfa { challenge: challenge.into(), factor: Some(factor) })
    };
    let e = call(&c, verify("no such challenge", Factor::Code("123456".into()))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED));
    let used = totp::code_at(&secret, now_secs());
    let e = call(&c, verify(&challenge, Factor::Code(used))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID), "the code ConfirmTotp used is spent: {e}");
    let next = totp::code_at(&secret, now_secs() + 30);
    let Reply::Login(ok) = call(&c, verify(&challenge, Factor::Code(next.clone()))).await.unwrap() else { panic!() };
    assert!(!ok.session_token.is_empty());
    let e = call(&c, verify(&challenge, Factor::Code(next.clone()))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::ALREADY_AUTHENTICATED));
    // Replayed on another sign-in: refused.
    let (c2, challenge2) = first_factor(&server, "alice@example.org").await;
    let e = call(&c2, verify(&challenge2, Factor::Code(next))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));
    // A recovery code works once (typed with or without its dash, any case).
    let typed = recovery[0].replace('-', "").to_uppercase();
    let Reply::Login(_) = call(&c2, verify(&challenge2, Factor::RecoveryCode(typed))).await.unwrap() else { panic!() };
    let (c3, challenge3) = first_factor(&server, "alice@example.org").await;
    let e = call(&c3, verify(&challenge3, Factor::RecoveryCode(recovery[0].clone()))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));

    // Five wrong factors end a challenge.
    for _ in 0..4 {
        let e = call(&c3, verify(&challenge3, Factor::Code("000000".into()))).await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));
    }
    let e = call(&c3, verify(&challenge3, Factor::RecoveryCode(recovery[1].clone()))).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED), "{e}");

    // Turning it off takes a current factor; then the password alone signs in.
    let e = call(&alice, Body::DisableTotp(DisableTotp { code: "000000".into() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID));
    let Reply::RecoveryCodes(fresh) =
        call(&alice, Body::NewRecoveryCodes(NewRecoveryCodes { code: recovery[2].clone() })).await.unwrap()
    else {
        panic!()
    };
    let e = call(&alice, Body::DisableTotp(DisableTotp { code: recovery[3].clone() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_INVALID), "the old set is replaced");
    call(&alice, Body::DisableTotp(DisableTotp { code: fresh.codes[0].clone() })).await.unwrap();
    let e = call(&alice, Body::DisableTotp(DisableTotp { code: fresh.codes[1].clone() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::MFA_NOT_ENABLED));
    login(&server, "alice@example.org", PASSWORD, "d").await.unwrap();
}

#[tokio::test]
async fn the_totp_secret_is_never_in_the_log_in_plaintext_and_a_wrong_key_stops_natterd() {
    let mut server = TestServer::start().await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (secret, _) = enable_totp(&alice).await;
    drop(alice);
    server.stop().await;
    let db = std::fs::read(server.data_dir().join("natter.db")).unwrap();
    let raw = secret.as_bytes();
    assert!(!db.windows(raw.len()).any(|w| w == raw), "the secret's bytes are not stored");
    let b32 = secret.base32();
    assert!(!db.windows(b32.len()).any(|w| w == b32.as_bytes()));

    // Another key: natterd refuses to start rather than turn TOTP off.
    let key = server.data_dir().join("secret.key");
    let original = std::fs::read(&key).unwrap();
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let mut config = natter_tests::test_config(server.data_dir());
    let err = natter_tests::start_when_free(config.clone()).await.err().expect("a different key is refused");
    assert!(matches!(err, natter_server::StartError::WrongServerKey), "{err:?}");
    std::fs::write(&key, original).unwrap();
    // A configured key file that is missing: refused too.
    config.auth.secret_key_file = Some(server.data_dir().join("no-such.key"));
    let err = natter_tests::start_when_free(config.clone()).await.err().expect("a missing key file is refused");
    assert!(format!("{:#}", anyhow::Error::from(err)).contains("no-such.key"));
    config.auth.secret_key_file = None;
    natter_tests::start_when_free(config).await.expect("the original key works").shutdown().await;
}

#[tokio::test]
async fn every_account_request_needs_a_signed_in_connection_except_the_ways_in() {
    let server = TestServer::start().await;
    let anonymous = server.client().await;
    let needs_sign_in = [
        Body::ListSessions(ListSessions {}),
        Body::RevokeSession(RevokeSession { session_id: uuid::Uuid::new_v4().to_string() }),
        Body::RevokeOtherSessions(RevokeOtherSessions {}),
        Body::ChangePassword(ChangePassword { old_password: PASSWORD.into(), new_password: NEW_PASSWORD.into() }),
        Body::StartEmailVerification(StartEmailVerification {}),
        Body::VerifyEmail(VerifyEmail { code: "123456".into() }),
        Body::EnableTotp(EnableTotp {}),
        Body::ConfirmTotp(ConfirmTotp { code: "123456".into() }),
        Body::DisableTotp(DisableTotp { code: "123456".into() }),
        Body::NewRecoveryCodes(NewRecoveryCodes { code: "123456".into() }),
    ];
    for body in needs_sign_in {
        let what = format!("{body:?}");
        let e = call(&anonymous, body).await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::UNAUTHENTICATED), "{what}: {e}");
    }
    // The ways in answer without a session (and say nothing about accounts).
    let e = call(
        &anonymous,
        Body::VerifyMfa(VerifyMfa { challenge: "x".into(), factor: Some(Factor::Code("123456".into())) }),
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED));
    let e = call(
        &anonymous,
        Body::ResetPassword(ResetPassword {
            email: "nobody@example.org".into(),
            code: "123456".into(),
            new_password: NEW_PASSWORD.into(),
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::CODE_EXPIRED));
    // A second factor on a signed-in connection, and someone else's devices.
    let (alice, _) = server.new_user("alice@example.org").await;
    let (bob, _) = server.new_user("bob@example.org").await;
    let e = call(&alice, Body::VerifyMfa(VerifyMfa { challenge: "x".into(), factor: None })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::ALREADY_AUTHENTICATED));
    let bobs = bob.sessions().await.unwrap();
    let e = alice.revoke_sessions(Some(&bobs[0].session_id)).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::NOT_FOUND));
    assert_eq!(bob.sessions().await.unwrap().len(), 1, "Bob's device is untouched");
    let e = call(&alice, Body::DisableTotp(DisableTotp { code: "123456".into() })).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::MFA_NOT_ENABLED));
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_and_when_left_unused() {
    use natter_proto::ErrorCode;
    let expect_ended = |r: Result<natter_client::Client, natter_client::ClientError>, why: &str| match r {
        Ok(_) => panic!("the session still resumed ({why})"),
        Err(e) => {
            assert_eq!(e.code(), Some(ErrorCode::SESSION_INVALID), "{e}");
            assert!(e.to_string().contains(why), "{e}");
        }
    };
    let resume_config = |server: &TestServer, token: &str| {
        let mut c = server.client_config();
        c.session_token = Some(token.to_owned());
        c
    };

    // Absolute: however it is used.
    let server = TestServer::start_with(|c| c.auth.session_lifetime_secs = Some(2)).await;
    let (alice, token) = server.new_user("alice@example.org").await;
    drop(alice);
    server.resume(&token).await;
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    expect_ended(natter_client::Client::connect(&resume_config(&server, &token)).await, "lifetime");
    let (fresh, _) = server.new_device("alice@example.org", "again").await;
    let devices = fresh.sessions().await.unwrap();
    assert_eq!(devices.len(), 1, "the ended session left the device list: {devices:?}");

    // Idle: every resume counts as use.
    let server = TestServer::start_with(|c| c.auth.session_idle_secs = Some(2)).await;
    let (bob, token) = server.new_user("bob@example.org").await;
    drop(bob);
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        drop(server.resume(&token).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    expect_ended(natter_client::Client::connect(&resume_config(&server, &token)).await, "unused");
}
