//! Text messages: natterd's Twilio providers (Programmable Messaging and
//! Verify) against the Twilio fake in the harness, over HTTP on a loopback
//! address.

use std::time::Duration;

use base64::Engine;
use natter_server::auth::sms::{sms_provider, SmsConfig, SmsError, SmsProvider, SmsProviderKind};
use natter_tests::twilio_fake::{
    TwilioFake, ACCOUNT_SID, AUTH_TOKEN, FROM, MAX_CHECK_ATTEMPTS, MAX_SEND_ATTEMPTS, MESSAGING_SERVICE_SID,
    RETRY_AFTER_SECS,
};

const WAIT: Duration = Duration::from_secs(10);
const TO: &str = "+14155550123";
const TEXT: &str = "Your natter code is 482913. It expires in 5 minutes.";

fn provider(config: &SmsConfig) -> std::sync::Arc<dyn SmsProvider> {
    sms_provider(config).expect("provider")
}

/// What an error shows, in both forms, has neither the token nor the Basic
/// credentials that carry it.
fn assert_no_secret(e: &SmsError, token: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{token}"));
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(token) && !shown.contains(&basic), "{shown}");
}

/// A port that was just free: nothing listens there now.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A code the fake did not make.
fn wrong(code: &str) -> &'static str {
    if code == "000000" {
        "111111"
    } else {
        "000000"
    }
}

#[tokio::test]
async fn twilio_sends_to_from_and_body_with_basic_auth() {
    let fake = TwilioFake::start().await;
    let sms = provider(&fake.messaging_config());
    assert!(sms.owns_code());
    sms.send(TO, TEXT).await.expect("sent");

    let got = fake.wait_for(|m| m.to == TO, WAIT).await;
    assert_eq!(got.from.as_deref(), Some(FROM));
    assert_eq!(got.messaging_service_sid, None);
    assert_eq!(got.body, TEXT);
    // The fake answers 401 without the account's Basic credentials: this one was let in.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"));
    assert_eq!(requests[0].status, 201);
}

#[tokio::test]
async fn twilio_sends_through_a_messaging_service() {
    let fake = TwilioFake::start().await;
    let mut config = fake.messaging_config();
    config.from = None;
    config.messaging_service_sid = Some(MESSAGING_SERVICE_SID.into());
    provider(&config).send(TO, "Dein Code: 482913 — gültig 5 Minuten & nur einmal.").await.expect("sent");
    let got = fake.wait_for(|_| true, WAIT).await;
    assert_eq!((got.from, got.messaging_service_sid.as_deref()), (None, Some(MESSAGING_SERVICE_SID)));
    assert_eq!(got.body, "Dein Code: 482913 — gültig 5 Minuten & nur einmal.");
}

#[tokio::test]
async fn twilio_reads_the_token_from_its_file() {
    let fake = TwilioFake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("twilio-token");
    std::fs::write(&file, format!("{AUTH_TOKEN}\n")).expect("write the token file");
    let mut config = fake.messaging_config();
    config.auth_token = None;
    config.auth_token_file = Some(file);
    provider(&config).send(TO, TEXT).await.expect("sent");
    fake.wait_for(|m| m.to == TO, WAIT).await;
}

#[tokio::test]
async fn twilio_wrong_token_is_rejected_without_showing_the_token() {
    let fake = TwilioFake::start().await;
    let token = "a-wrong-token-that-must-not-show";
    let mut config = fake.messaging_config();
    config.auth_token = Some(token.into());
    let e = provider(&config).send(TO, TEXT).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("20003")), "{e:?}");
    assert_no_secret(&e, token);
    assert_no_secret(&e, AUTH_TOKEN);
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn twilio_invalid_number_is_rejected_naming_21211() {
    let fake = TwilioFake::start().await;
    let sms = provider(&fake.messaging_config());
    // Written as E.164, but Twilio's magic invalid number.
    let e = sms.send("+15005550001", TEXT).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("21211")), "{e:?}");
    let e = sms.send("+15005550009", TEXT).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("21614")), "{e:?}");
    // Not E.164 at all: refused without asking Twilio.
    let e = sms.send("4155550123", TEXT).await.unwrap_err();
    assert!(matches!(e, SmsError::Rejected(_)), "{e:?}");
    assert_eq!(fake.requests().len(), 2);
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn twilio_a_sender_not_of_the_account_is_rejected() {
    let fake = TwilioFake::start().await;
    let mut config = fake.messaging_config();
    config.from = Some("+14155550199".into());
    let e = provider(&config).send(TO, TEXT).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("21606")), "{e:?}");
}

#[tokio::test]
async fn twilio_500_is_unavailable_and_a_retry_sends() {
    let fake = TwilioFake::start().await;
    let sms = provider(&fake.messaging_config());
    fake.fail_next(500, 20500);
    let e = sms.send(TO, TEXT).await.unwrap_err();
    match &e {
        SmsError::Unavailable { retry_after, reason } => {
            assert!(*retry_after > Duration::ZERO);
            assert!(reason.contains("500") && reason.contains("20500"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_no_secret(&e, AUTH_TOKEN);
    assert!(fake.sent().is_empty());
    sms.send(TO, TEXT).await.expect("the retry is sent");
    fake.wait_for(|m| m.to == TO, WAIT).await;
}

#[tokio::test]
async fn twilio_429_is_unavailable_with_the_retry_after_it_gave() {
    let fake = TwilioFake::start().await;
    fake.fail_next(429, 20429);
    let e = provider(&fake.messaging_config()).send(TO, TEXT).await.unwrap_err();
    match &e {
        SmsError::Unavailable { retry_after, reason } => {
            assert_eq!(*retry_after, Duration::from_secs(RETRY_AFTER_SECS));
            assert!(reason.contains("20429"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn twilio_connection_refused_is_unavailable() {
    let port = closed_port();
    let config = SmsConfig {
        provider: SmsProviderKind::Twilio,
        base_url: Some(format!("http://127.0.0.1:{port}")),
        allow_http_loopback: true,
        account_sid: Some(ACCOUNT_SID.into()),
        auth_token: Some(AUTH_TOKEN.into()),
        from: Some(FROM.into()),
        ..SmsConfig::default()
    };
    let e = provider(&config).send(TO, TEXT).await.unwrap_err();
    match &e {
        SmsError::Unavailable { retry_after, reason } => {
            assert!(*retry_after > Duration::ZERO);
            assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_no_secret(&e, AUTH_TOKEN);
}

#[tokio::test]
async fn twilio_a_silent_api_is_unavailable_after_the_timeout() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = SmsConfig {
        provider: SmsProviderKind::Twilio,
        base_url: Some(format!("http://{addr}")),
        allow_http_loopback: true,
        account_sid: Some(ACCOUNT_SID.into()),
        auth_token: Some(AUTH_TOKEN.into()),
        from: Some(FROM.into()),
        timeout_ms: 300,
        ..SmsConfig::default()
    };
    let e = provider(&config).send(TO, TEXT).await.unwrap_err();
    assert!(matches!(&e, SmsError::Unavailable { reason, .. } if reason.contains("300 ms")), "{e:?}");
    silent.abort();
}

#[tokio::test]
async fn plain_http_to_the_fake_needs_the_loopback_flag() {
    let fake = TwilioFake::start().await;
    let mut config = fake.messaging_config();
    config.allow_http_loopback = false;
    let e = sms_provider(&config).err().expect("refused");
    assert!(e.to_string().contains("allow_http_loopback"), "{e}");
    assert!(!format!("{e} {e:?}").contains(AUTH_TOKEN), "{e}");
}

#[tokio::test]
async fn twilio_verify_start_then_check_with_the_code_twilio_texted() {
    let fake = TwilioFake::start().await;
    let verify = provider(&fake.verify_config());
    assert!(!verify.owns_code());
    verify.start_verification(TO).await.expect("started");
    let texted = fake.wait_for_verification(|v| v.to == TO, WAIT).await;
    assert_eq!(texted.channel, "sms");
    let code = fake.verify_code(TO).expect("a pending verification");
    assert_eq!(code, texted.code);

    assert_eq!(verify.check_verification(TO, wrong(&code)).await, Ok(false), "a wrong code");
    assert_eq!(verify.check_verification(TO, &code).await, Ok(true), "the texted code");
    assert_eq!(verify.check_verification(TO, &code).await, Ok(false), "an approved code works once");
    assert_eq!(fake.verify_code(TO), None);
    // natter never sent a text of its own.
    assert!(fake.sent().is_empty());
    assert_eq!(verify.send(TO, TEXT).await, Err(SmsError::Unsupported));
}

#[tokio::test]
async fn twilio_verify_without_a_verification_nothing_is_approved() {
    let fake = TwilioFake::start().await;
    let verify = provider(&fake.verify_config());
    assert_eq!(verify.check_verification(TO, "123456").await, Ok(false));
    assert_eq!(fake.requests()[0].status, 404);
}

#[tokio::test]
async fn twilio_verify_five_wrong_codes_spend_the_verification() {
    let fake = TwilioFake::start().await;
    let verify = provider(&fake.verify_config());
    verify.start_verification(TO).await.expect("started");
    let code = fake.verify_code(TO).expect("a code");
    for _ in 0..MAX_CHECK_ATTEMPTS {
        assert_eq!(verify.check_verification(TO, wrong(&code)).await, Ok(false));
    }
    assert_eq!(verify.check_verification(TO, &code).await, Ok(false), "too late for the right one");
    // A new verification texts a new code that works.
    verify.start_verification(TO).await.expect("started again");
    let code = fake.verify_code(TO).expect("a new code");
    assert_eq!(verify.check_verification(TO, &code).await, Ok(true));
}

#[tokio::test]
async fn twilio_verify_resends_the_same_code_until_max_send_attempts() {
    let fake = TwilioFake::start().await;
    let verify = provider(&fake.verify_config());
    for _ in 0..MAX_SEND_ATTEMPTS {
        verify.start_verification(TO).await.expect("sent");
    }
    let e = verify.start_verification(TO).await.unwrap_err();
    assert!(matches!(&e, SmsError::Unavailable { reason, .. } if reason.contains("60203")), "{e:?}");
    let texts = fake.verifications();
    assert_eq!(texts.len(), MAX_SEND_ATTEMPTS as usize);
    assert!(texts.iter().all(|t| t.code == texts[0].code), "{texts:?}");
    // The pending verification is still good.
    assert_eq!(verify.check_verification(TO, &texts[0].code).await, Ok(true));
}

#[tokio::test]
async fn twilio_verify_errors_map_like_messaging() {
    let fake = TwilioFake::start().await;
    let verify = provider(&fake.verify_config());
    fake.fail_next(429, 20429);
    let e = verify.start_verification(TO).await.unwrap_err();
    assert!(
        matches!(&e, SmsError::Unavailable { retry_after, .. }
        if *retry_after == Duration::from_secs(RETRY_AFTER_SECS)),
        "{e:?}"
    );
    fake.fail_next(503, 20503);
    let e = verify.check_verification(TO, "123456").await.unwrap_err();
    assert!(matches!(e, SmsError::Unavailable { .. }), "{e:?}");

    let token = "not-the-verify-token";
    let mut config = fake.verify_config();
    config.auth_token = Some(token.into());
    let e = provider(&config).start_verification(TO).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("20003")), "{e:?}");
    assert_no_secret(&e, token);

    let mut config = fake.verify_config();
    config.verify_service_sid = Some(format!("VA{}", "0".repeat(32)));
    let e = provider(&config).start_verification(TO).await.unwrap_err();
    assert!(matches!(&e, SmsError::Rejected(reason) if reason.contains("20404")), "{e:?}");
    assert!(fake.verifications().is_empty());
}
