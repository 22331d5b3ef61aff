//! Mail delivery: natterd's SMTP mailer against a real SMTP server (the sink
//! in the harness) on a loopback address.

use std::time::Duration;

use natter_server::auth::mail::{mailer, Mail, MailConfig, MailError, MailProvider, SmtpTls};
use natter_tests::smtp_sink::{FailAt, SinkConfig, SmtpSink};

const USER: &str = "natter-relay";
const SECRET: &str = "relay pa55word, not for logs";
const WAIT: Duration = Duration::from_secs(10);

/// Plain SMTP to the sink (allowed: it is on a loopback address).
fn config(sink: &SmtpSink) -> MailConfig {
    MailConfig {
        provider: MailProvider::Smtp,
        from: "natter <natter@example.org>".into(),
        smtp_host: Some(sink.addr().ip().to_string()),
        smtp_port: Some(sink.addr().port()),
        smtp_tls: SmtpTls::None,
        timeout_ms: 10_000,
        ..MailConfig::default()
    }
}

fn with_credentials(mut config: MailConfig, password: &str) -> MailConfig {
    config.smtp_username = Some(USER.into());
    config.smtp_password = Some(password.into());
    config
}

fn code_mail() -> Mail {
    Mail {
        to: "alice@example.org".into(),
        subject: "Your natter code".into(),
        text: "Your verification code is 482913.\nIt expires in 15 minutes.\n".into(),
    }
}

async fn auth_sink() -> SmtpSink {
    SmtpSink::start(SinkConfig { require_auth: Some((USER.into(), SECRET.into())) }).await
}

fn assert_no_secret(e: &MailError) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(SECRET) && !shown.contains("pa55word"), "{shown}");
}

#[tokio::test]
async fn smtp_delivers_the_mail_as_sent_authenticated_as_the_configured_user() {
    let sink = auth_sink().await;
    let mailer = mailer(&with_credentials(config(&sink), SECRET)).expect("mailer");
    mailer.send(code_mail()).await.expect("delivered");

    let got = sink.wait_for(|m| m.rcpt_to == ["alice@example.org"], WAIT).await;
    assert_eq!(got.authenticated_as.as_deref(), Some(USER));
    assert_eq!(got.mail_from, "natter@example.org");
    assert_eq!(got.header("To").as_deref(), Some("alice@example.org"));
    assert_eq!(got.header("From").as_deref(), Some("natter <natter@example.org>"));
    assert_eq!(got.header("Subject").as_deref(), Some("Your natter code"));
    assert_eq!(got.header("Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
    assert!(got.header("Date").is_some(), "{}", got.data);
    let id = got.header("Message-ID").expect("a Message-ID");
    assert!(id.starts_with('<') && id.ends_with("@example.org>"), "{id}");
    // lettre ends the data with an empty line before the final dot.
    assert_eq!(got.body().trim_end_matches("\r\n"), "Your verification code is 482913.\r\nIt expires in 15 minutes.");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn smtp_reads_the_password_from_its_file() {
    let sink = auth_sink().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("smtp-password");
    std::fs::write(&file, format!("{SECRET}\n")).expect("write the password file");
    let mut config = config(&sink);
    config.smtp_username = Some(USER.into());
    config.smtp_password_file = Some(file);
    mailer(&config).expect("mailer").send(code_mail()).await.expect("delivered");
    let got = sink.wait_for(|_| true, WAIT).await;
    assert_eq!(got.authenticated_as.as_deref(), Some(USER));
}

#[tokio::test]
async fn smtp_non_ascii_text_arrives_as_utf8_text() {
    let sink = SmtpSink::start(SinkConfig::default()).await;
    let mut mail = code_mail();
    mail.subject = "Dein natter-Code".into();
    mail.text = "Dein Bestätigungscode: 482913 — gültig 15 Minuten.\n".into();
    mailer(&config(&sink)).expect("mailer").send(mail).await.expect("delivered");
    let got = sink.wait_for(|_| true, WAIT).await;
    assert_eq!(got.header("Content-Type").as_deref(), Some("text/plain; charset=utf-8"));
    assert!(got.header("Content-Transfer-Encoding").is_some(), "8-bit text is encoded: {}", got.data);
    assert_eq!(got.authenticated_as, None, "no username configured, no AUTH");
}

#[tokio::test]
async fn smtp_wrong_password_is_rejected_without_showing_the_password() {
    let sink = auth_sink().await;
    let wrong = "wrong pa55word, not for logs either";
    let e = mailer(&with_credentials(config(&sink), wrong)).expect("mailer").send(code_mail()).await.unwrap_err();
    assert!(matches!(e, MailError::Rejected(_)), "{e:?}");
    assert!(e.to_string().contains("535"), "{e}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(wrong) && !shown.contains("pa55word"), "{shown}");
    assert_no_secret(&e);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn smtp_without_credentials_where_the_relay_wants_them_is_rejected() {
    let sink = auth_sink().await;
    let e = mailer(&config(&sink)).expect("mailer").send(code_mail()).await.unwrap_err();
    assert!(matches!(&e, MailError::Rejected(reason) if reason.contains("530")), "{e:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn smtp_451_is_unavailable_and_a_retry_delivers() {
    let sink = auth_sink().await;
    let mailer = mailer(&with_credentials(config(&sink), SECRET)).expect("mailer");
    sink.set_fail_next(451);
    let e = mailer.send(code_mail()).await.unwrap_err();
    match &e {
        MailError::Unavailable { retry_after, reason } => {
            assert!(*retry_after > Duration::ZERO);
            assert!(reason.contains("451"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_no_secret(&e);
    assert!(sink.messages().is_empty());
    mailer.send(code_mail()).await.expect("the retry is delivered");
    sink.wait_for(|m| m.rcpt_to == ["alice@example.org"], WAIT).await;
}

#[tokio::test]
async fn smtp_550_is_rejected() {
    let sink = auth_sink().await;
    let mailer = mailer(&with_credentials(config(&sink), SECRET)).expect("mailer");
    sink.set_fail_next(550);
    let e = mailer.send(code_mail()).await.unwrap_err();
    assert!(matches!(&e, MailError::Rejected(reason) if reason.contains("550")), "{e:?}");
    sink.set_fail_next_at(FailAt::RcptTo, 550);
    let e = mailer.send(code_mail()).await.unwrap_err();
    assert!(matches!(&e, MailError::Rejected(reason) if reason.contains("550")), "{e:?}");
    assert_no_secret(&e);
    // A 4xx after the data is still temporary.
    sink.set_fail_next_at(FailAt::Data, 452);
    let e = mailer.send(code_mail()).await.unwrap_err();
    assert!(matches!(e, MailError::Unavailable { .. }), "{e:?}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn smtp_connection_refused_is_unavailable() {
    // A port that was just free: nothing listens there now.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let config = MailConfig {
        provider: MailProvider::Smtp,
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: Some(port),
        smtp_tls: SmtpTls::None,
        smtp_username: Some(USER.into()),
        smtp_password: Some(SECRET.into()),
        ..MailConfig::default()
    };
    let e = mailer(&config).expect("mailer").send(code_mail()).await.unwrap_err();
    match &e {
        MailError::Unavailable { reason, .. } => assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_no_secret(&e);
}

#[tokio::test]
async fn smtp_a_silent_relay_is_unavailable_after_the_timeout() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let config = MailConfig {
        provider: MailProvider::Smtp,
        smtp_host: Some("127.0.0.1".into()),
        smtp_port: Some(addr.port()),
        smtp_tls: SmtpTls::None,
        timeout_ms: 300,
        ..MailConfig::default()
    };
    let e = mailer(&config).expect("mailer").send(code_mail()).await.unwrap_err();
    assert!(matches!(&e, MailError::Unavailable { reason, .. } if reason.contains("300 ms")), "{e:?}");
    silent.abort();
}

#[tokio::test]
async fn plain_smtp_to_a_remote_relay_is_refused_at_start() {
    let config = MailConfig {
        provider: MailProvider::Smtp,
        smtp_host: Some("smtp.example.org".into()),
        smtp_tls: SmtpTls::None,
        smtp_username: Some(USER.into()),
        smtp_password: Some(SECRET.into()),
        ..MailConfig::default()
    };
    let e = mailer(&config).err().expect("refused");
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("loopback") && !shown.contains(SECRET), "{shown}");
}
