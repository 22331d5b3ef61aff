//! Phone numbers through the protocol: adding one to an account (a texted
//! code proves it), signing in with a texted code, the limits that keep texts
//! from costing a fortune, and provider failures. Texts go to the Twilio fake
//! in the harness, which checks what Twilio checks (Basic auth, form fields,
//! E.164) and answers in Twilio's shapes.

use std::time::Duration;

use natter_client::ClientError;
use natter_proto::ErrorCode;
use natter_tests::twilio_fake::{TwilioFake, AUTH_TOKEN};
use natter_tests::{TestServer, PASSWORD};

const WAIT: Duration = Duration::from_secs(15);
const NUMBER: &str = "+49 151 2345 6789";
const E164: &str = "+4915123456789";

/// The code in the newest text to `to` (the `nth`, 0-based).
async fn texted_code(fake: &TwilioFake, to: &str, nth: usize) -> String {
    let to = to.to_owned();
    let mut seen = fake.sent().iter().filter(|m| m.to == to).count();
    while seen <= nth {
        let known = fake.sent();
        let to2 = to.clone();
        fake.wait_for(move |m| m.to == to2 && !known.contains(m), WAIT).await;
        seen = fake.sent().iter().filter(|m| m.to == to).count();
    }
    let sms = fake.sent().into_iter().filter(|m| m.to == to).nth(nth).unwrap();
    let code: String = sms.body.chars().filter(char::is_ascii_digit).take(6).collect();
    assert_eq!(code.len(), 6, "{}", sms.body);
    code
}

async fn server_with_twilio(fake: &TwilioFake) -> TestServer {
    let sms = fake.messaging_config();
    TestServer::start_with(move |c| c.sms = sms).await
}

#[tokio::test]
async fn a_number_is_added_with_a_texted_code_and_then_signs_in() {
    let fake = TwilioFake::start().await;
    let server = server_with_twilio(&fake).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let (mallory, _) = server.new_user("mallory@example.org").await;

    // Malformed numbers are refused before anything is texted.
    for bad in ["", "015123456789", "+49 12", "+1 555 0100 0100 0100 0100 0100 0100", "call me"] {
        let e = alice.start_phone(bad).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::INVALID_PHONE), "{bad:?}: {e}");
    }
    assert!(fake.sent().is_empty());

    // Added: the text went to the E.164 number from the configured sender.
    let valid = alice.start_phone(NUMBER).await.unwrap();
    assert_eq!(valid, Duration::from_secs(300));
    let code = texted_code(&fake, E164, 0).await;
    let sms = &fake.sent()[0];
    assert_eq!(sms.from.as_deref(), Some(natter_tests::twilio_fake::FROM));
    assert!(sms.body.contains("natter") && sms.body.contains(&code));
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let e = alice.add_phone(NUMBER, wrong).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CODE_INVALID));
    // Someone else's code does nothing for Mallory.
    let e = mallory.add_phone(NUMBER, &code).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CODE_EXPIRED), "{e}");
    assert_eq!(alice.add_phone(NUMBER, &code).await.unwrap(), E164);
    // Now it is hers alone.
    let e = mallory.start_phone(E164).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::PHONE_TAKEN));
    let e = alice.start_phone(E164).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "already hers: {e}");

    // Signing in with it: a new device, signed in by phone.
    let phone = server.client().await;
    phone.start_phone(E164).await.unwrap();
    let code = texted_code(&fake, E164, 1).await;
    let (_, who) = phone.sign_in_with_phone(E164, &code, "phone", "").await.unwrap();
    assert_eq!(who.email, "alice@example.org");
    let sessions = alice.sessions().await.unwrap();
    let by_phone = sessions.iter().find(|s| s.device_name == "phone").expect("the new device");
    assert_eq!(by_phone.method, "phone");
    // The code worked once.
    let again = server.client().await;
    let e = again.sign_in_with_phone(E164, &code, "again", "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::CODE_EXPIRED));
}

#[tokio::test]
async fn a_number_no_account_has_makes_one_that_chats_without_an_email() {
    let fake = TwilioFake::start().await;
    let server = server_with_twilio(&fake).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    let zoe = server.client().await;
    zoe.start_phone("+33 6 12 34 56 78").await.unwrap();
    let code = texted_code(&fake, "+33612345678", 0).await;
    // A bad name is refused before the code is looked at: the code still works.
    let e = zoe.sign_in_with_phone("+33612345678", &code, "d", "bad\u{7}name").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");
    let (token, who) = zoe.sign_in_with_phone("+33612345678", &code, "phone", " Zoe ").await.unwrap();
    assert_eq!((who.email.as_str(), who.display_name.as_str()), ("", "Zoe"));
    assert_eq!(zoe.sessions().await.unwrap()[0].method, "phone");

    // She writes to Alice, who sees her by name (there is no email to show).
    let conv = zoe.open_direct("alice@example.org").await.unwrap();
    zoe.send_text(&conv.conversation_id, "m1", "bonjour").await.unwrap();
    let page = alice
        .history(natter_client::proto::GetHistory {
            conversation_id: conv.conversation_id.clone(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let m = &page.messages[0];
    assert_eq!((m.sender_email.as_str(), m.sender_name.as_str()), ("", "Zoe"));
    assert!(conv.members.iter().any(|m| m.email.is_empty() && m.display_name == "Zoe"));

    // No email, so no password: password requests say why.
    let e = zoe.change_password("anything at all", "a new long passphrase").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");
    let e = zoe.start_email_verification().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");
    // TOTP works, labelled with the number.
    let setup = zoe.enable_totp().await.unwrap();
    assert!(setup.otpauth_uri.contains("%2B33612345678"), "{}", setup.otpauth_uri);

    // Signed out and in again: the same account, not a second one.
    zoe.logout().await.unwrap();
    drop(zoe);
    let mut config = server.client_config();
    config.session_token = Some(token);
    assert!(natter_client::Client::connect(&config).await.is_err(), "the old session is gone");
    let again = server.client().await;
    again.start_phone("+33612345678").await.unwrap();
    let code = texted_code(&fake, "+33612345678", 1).await;
    let (_, back) = again.sign_in_with_phone("+33612345678", &code, "phone 2", "Another Name").await.unwrap();
    assert_eq!((back.user_id.as_str(), back.display_name.as_str()), (who.user_id.as_str(), "Zoe"));
}

#[tokio::test]
async fn texts_are_limited_per_number_and_provider_failures_are_typed_without_secrets() {
    let fake = TwilioFake::start().await;
    let server = server_with_twilio(&fake).await;
    let c = server.client().await;
    for _ in 0..3 {
        c.start_phone(NUMBER).await.unwrap();
    }
    let e = c.start_phone(NUMBER).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED), "3 texts per number in 10 minutes");
    assert!(matches!(e, ClientError::Server { retry_after_ms, .. } if retry_after_ms > 0));
    assert_eq!(fake.sent().len(), 3);

    // Twilio down: UNAVAILABLE with a retry hint; refused number: INVALID_PHONE.
    fake.fail_next(500, 20500);
    let e = c.start_phone("+33 6 12 34 56 78").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAVAILABLE), "{e}");
    assert!(matches!(&e, ClientError::Server { retry_after_ms, .. } if *retry_after_ms > 0));
    fake.fail_next(400, 21614);
    let e = c.start_phone("+33 6 12 34 56 79").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_PHONE), "{e}");
    assert!(!e.to_string().contains(AUTH_TOKEN), "{e}");

    // Wrong codes per number are limited over all its codes: 10 an hour.
    let c2 = server.client().await;
    let number = "+33612345677";
    let mut right = String::new();
    for round in 0..2 {
        c2.start_phone(number).await.unwrap();
        right = texted_code(&fake, number, round).await;
        let wrong = if right == "000000" { "111111" } else { "000000" };
        for i in 0..5 {
            let e = c2.sign_in_with_phone(number, wrong, "d", "").await.unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::CODE_INVALID), "{round}/{i}: {e}");
        }
    }
    c2.start_phone(number).await.unwrap();
    right = if fake.sent().iter().filter(|m| m.to == number).count() == 3 {
        texted_code(&fake, number, 2).await
    } else {
        right
    };
    let e = c2.sign_in_with_phone(number, &right, "d", "").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RATE_LIMITED), "even the right code waits: {e}");
}

#[tokio::test]
async fn with_twilio_verify_twilio_owns_the_code() {
    let fake = TwilioFake::start().await;
    let sms = fake.verify_config();
    let server = TestServer::start_with(move |c| c.sms = sms).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    alice.start_phone(NUMBER).await.unwrap();
    let code = fake.verify_code(E164).expect("Twilio texted its code");
    assert!(fake.sent().is_empty(), "natter texted nothing itself");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(alice.add_phone(E164, wrong).await.unwrap_err().code(), Some(ErrorCode::CODE_INVALID));
    assert_eq!(alice.add_phone(E164, &code).await.unwrap(), E164);
    let phone = server.client().await;
    phone.start_phone(E164).await.unwrap();
    let code = fake.verify_code(E164).unwrap();
    phone.sign_in_with_phone(E164, &code, "phone", "").await.unwrap();
    // Approved once: the same code again is refused.
    let again = server.client().await;
    assert_eq!(again.sign_in_with_phone(E164, &code, "x", "").await.unwrap_err().code(), Some(ErrorCode::CODE_INVALID));
    let _ = PASSWORD;
}

#[tokio::test]
async fn a_number_is_removed_while_another_way_remains_and_can_then_go_to_someone_else() {
    let fake = TwilioFake::start().await;
    let server = server_with_twilio(&fake).await;
    let (alice, _) = server.new_user("alice@example.org").await;
    assert_eq!(alice.remove_phone().await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND), "no number yet");
    alice.start_phone(E164).await.unwrap();
    let code = texted_code(&fake, E164, 0).await;
    alice.add_phone(E164, &code).await.unwrap();

    // Alice changes numbers: she takes it off (she has a password besides).
    assert_eq!(alice.remove_phone().await.unwrap(), E164);
    let signed_out = server.client().await;
    signed_out.start_phone(E164).await.unwrap();
    let code = texted_code(&fake, E164, 1).await;
    // The number's new owner now signs in to an account of their own, not Alice's.
    let (_, newcomer) = signed_out.sign_in_with_phone(E164, &code, "phone", "Nico").await.unwrap();
    assert_ne!(newcomer.user_id, alice.identity().unwrap().user_id);
    assert_eq!(newcomer.display_name, "Nico");
    // Nico's only way in is the number: it stays.
    let e = signed_out.remove_phone().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LAST_SIGN_IN_METHOD), "{e}");
    // And Alice cannot take it back while Nico has it.
    assert_eq!(alice.start_phone(E164).await.unwrap_err().code(), Some(ErrorCode::PHONE_TAKEN));
    // Signed out, there is nothing to remove.
    let e = server.client().await.remove_phone().await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAUTHENTICATED));
}
