//! Delivery through an SMTP relay with `lettre`: STARTTLS (required, never
//! opportunistic), implicit TLS, or a plain connection to a relay on a loopback
//! address; AUTH when a username is configured. TLS is rustls with ring and
//! Mozilla's roots: no OpenSSL.
//!
//! Each mail opens its own connection (no pool): mail is rare here, and a fresh
//! connection never fails on a socket the relay closed while idle. Errors never
//! carry the password, even when a relay echoes it.

use std::time::Duration;

use base64::Engine;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Mail, MailConfig, MailConfigError, MailError, Mailer, SmtpTls};
use crate::auth::Redactor;

/// How long a caller should wait before trying a temporarily failed mail again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Sends mail through one configured relay.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port`, to say in errors which relay failed.
    relay: String,
    timeout: Duration,
    redact: Redactor,
}

impl SmtpMailer {
    /// Builds the transport; reads `smtp_password_file` if set. Connects to
    /// nothing yet.
    ///
    /// # Errors
    /// An invalid configuration, or an unreadable or empty password file.
    pub fn new(config: &MailConfig) -> Result<Self, MailConfigError> {
        config.validate().map_err(MailConfigError::Invalid)?;
        let host = config.smtp_host.as_deref().map(str::trim).unwrap_or_default();
        let from: Mailbox = config.from.parse().map_err(|_| MailConfigError::Invalid("mail.from".into()))?;
        let builder = match config.smtp_tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            // validate() allowed this only for a loopback host.
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
        }
        .map_err(|e| MailConfigError::Invalid(format!("mail.smtp_host {host:?}: {e}")))?;
        let mut builder = builder.port(config.port()).timeout(Some(config.timeout()));
        let mut redact = Redactor::default();
        if let Some(username) = &config.smtp_username {
            let password = match (&config.smtp_password, &config.smtp_password_file) {
                (Some(password), _) => password.clone(),
                (None, Some(path)) => read_password_file(path)?,
                (None, None) => return Err(MailConfigError::Invalid("mail.smtp_username needs a password".into())),
            };
            redact = redactor(username, &password);
            builder = builder.credentials(Credentials::new(username.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            relay: format!("{host}:{}", config.port()),
            timeout: config.timeout(),
            redact,
        })
    }

    /// The RFC 5322 message for `mail`: text/plain in UTF-8, with Date and a
    /// Message-ID in the sender's domain.
    fn message(&self, mail: Mail) -> Result<Message, MailError> {
        let to: Address =
            mail.to.parse().map_err(|_| MailError::Rejected("the recipient is not a valid email address".into()))?;
        let message_id = format!("<{}@{}>", uuid::Uuid::new_v4().simple(), self.from.email.domain());
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(mail.subject)
            .message_id(Some(message_id))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.text)
            .map_err(|e| MailError::Rejected(format!("cannot build the message: {e}")))
    }

    /// A lettre error as the caller can act on it.
    fn error(&self, e: &lettre::transport::smtp::Error) -> MailError {
        let reason = self.redact.scrub(&format!("{}: {e}", self.relay));
        // 5xx, or a mismatch retrying will not fix (no AUTH mechanism in
        // common, STARTTLS not offered, ...): permanent. Everything else
        // (4xx, connection, I/O, TLS, a garbled reply, a timeout) is temporary.
        if e.is_permanent() || e.is_client() {
            MailError::Rejected(reason)
        } else {
            MailError::Unavailable { retry_after: RETRY_AFTER, reason }
        }
    }
}

#[async_trait::async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, mail: Mail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        // lettre bounds only the TCP connect; the deadline covers TLS, AUTH and
        // every reply. When it strikes after the data went out, the relay may
        // still deliver: a retry can then send the mail twice.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_elapsed) => Err(MailError::Unavailable {
                retry_after: RETRY_AFTER,
                reason: format!("{}: no answer within {} ms", self.relay, self.timeout.as_millis()),
            }),
        }
    }
}

/// The password, with one trailing line break (as `echo` writes it) removed.
fn read_password_file(path: &std::path::Path) -> Result<String, MailConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| MailConfigError::PasswordFile { path: path.to_owned(), source })?;
    let password = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if password.is_empty() {
        return Err(MailConfigError::Invalid(format!("mail.smtp_password_file {} is empty", path.display())));
    }
    Ok(password.to_owned())
}

/// The password, and the AUTH strings that carry it: what a relay's echo must
/// not show.
fn redactor(username: &str, password: &str) -> Redactor {
    let b64 = base64::engine::general_purpose::STANDARD;
    Redactor::new(vec![password.to_owned(), b64.encode(password), b64.encode(format!("\0{username}\0{password}"))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mail::MailProvider;

    fn loopback() -> MailConfig {
        MailConfig {
            provider: MailProvider::Smtp,
            from: "Natter <natter@example.org>".into(),
            smtp_host: Some("127.0.0.1".into()),
            smtp_port: Some(2525),
            smtp_tls: SmtpTls::None,
            ..MailConfig::default()
        }
    }

    fn mail(to: &str, subject: &str) -> Mail {
        Mail { to: to.into(), subject: subject.into(), text: "Your code is 123456.\n".into() }
    }

    #[test]
    fn builds_plain_utf8_text_with_date_and_message_id() {
        let m = SmtpMailer::new(&loopback()).unwrap();
        let message = m.message(mail("alice@example.org", "Your natter code")).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("From: Natter <natter@example.org>\r\n"), "{raw}");
        assert!(raw.contains("To: alice@example.org\r\n"), "{raw}");
        assert!(raw.contains("Subject: Your natter code\r\n"), "{raw}");
        assert!(raw.contains("Content-Type: text/plain; charset=utf-8\r\n"), "{raw}");
        assert!(raw.contains("\r\nDate: "), "{raw}");
        let id = raw.lines().find_map(|l| l.strip_prefix("Message-ID: ")).expect("a Message-ID");
        assert!(id.starts_with('<') && id.ends_with("@example.org>"), "{id}");
        assert!(raw.ends_with("\r\n\r\nYour code is 123456.\r\n"), "{raw}");
        let envelope = message.envelope();
        assert_eq!(envelope.from().map(ToString::to_string).as_deref(), Some("natter@example.org"));
    }

    #[test]
    fn a_subject_cannot_add_headers() {
        let m = SmtpMailer::new(&loopback()).unwrap();
        let message = m.message(mail("alice@example.org", "Code\r\nBcc: mallory@example.org")).unwrap();
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(!raw.contains("\r\nBcc:"), "{raw}");
        assert_eq!(message.envelope().to().len(), 1);
    }

    #[test]
    fn a_malformed_recipient_is_rejected_before_connecting() {
        let m = SmtpMailer::new(&loopback()).unwrap();
        for to in ["", "alice", "alice@", "a b@example.org", "alice@example.org, bob@example.org"] {
            assert!(matches!(m.message(mail(to, "x")), Err(MailError::Rejected(_))), "{to:?}");
        }
    }

    #[test]
    fn the_password_file_loses_its_line_break_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        for (content, expected) in [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), (" s3 cret ", " s3 cret ")] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap(), expected);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).is_err());
    }

    #[test]
    fn echoed_secrets_are_redacted() {
        let r = redactor("natter", "pa55word");
        let plain = base64::engine::general_purpose::STANDARD.encode("\0natter\0pa55word");
        let said = format!("535 bad credentials pa55word ({plain})");
        let scrubbed = r.scrub(&said);
        assert!(!scrubbed.contains("pa55word") && !scrubbed.contains(&plain), "{scrubbed}");
        assert_eq!(Redactor::default().scrub("as is"), "as is");
    }
}
