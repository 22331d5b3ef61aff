//! Outgoing mail (email verification and password-reset codes): the [`Mailer`]
//! seam, its configuration (`[mail]`), and one module per backend: `console`
//! (development: the mail, code included, goes to the log) and `smtp` (a relay,
//! over TLS unless the relay is on this machine).
//!
//! The backend is chosen once, by [`mailer`]. This module never puts the SMTP
//! password in a message: not in errors, not in `Debug` output, not in logs.

mod console;
mod smtp;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use console::ConsoleMailer;
pub use smtp::SmtpMailer;

/// One mail to one recipient, plain text.
#[derive(Clone, PartialEq, Eq)]
pub struct Mail {
    /// A normalized email address.
    pub to: String,
    pub subject: String,
    pub text: String,
}

impl fmt::Debug for Mail {
    /// The text carries a code: `Debug` says only how long it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

/// Delivers mail. One value is shared by every session.
#[async_trait::async_trait]
pub trait Mailer: Send + Sync {
    /// Hands `mail` to the backend; `Ok` once the relay has accepted it.
    ///
    /// # Errors
    /// [`MailError::Unavailable`] when trying again later may work,
    /// [`MailError::Rejected`] when it will not.
    async fn send(&self, mail: Mail) -> Result<(), MailError>;
}

/// Why a mail was not delivered. Never carries the SMTP password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// A temporary failure: the relay is unreachable or slow, or answered 4xx.
    #[error("mail delivery unavailable (retry in {}s): {reason}", retry_after.as_secs())]
    Unavailable { retry_after: Duration, reason: String },
    /// A permanent failure: the relay answered 5xx (bad recipient, refused
    /// credentials), or the mail cannot be sent as it is (a malformed address).
    #[error("mail rejected: {0}")]
    Rejected(String),
}

/// A `[mail]` configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MailConfigError {
    #[error("invalid mail configuration: {0}")]
    Invalid(String),
    #[error("cannot read mail.smtp_password_file {}: {source}", path.display())]
    PasswordFile { path: PathBuf, source: std::io::Error },
}

/// The `[mail]` table of natterd's configuration.
///
/// Every field serializes, `None` included: natterd lists its configuration
/// keys by serializing the defaults.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `"console"` (the default: mail is logged, for development) or `"smtp"`.
    pub provider: MailProvider,
    /// The sender, `Name <address>` or a bare address.
    pub from: String,
    /// The SMTP relay's host name or IP address.
    pub smtp_host: Option<String>,
    /// Default by `smtp_tls`: 587 (starttls), 465 (tls), 25 (none).
    pub smtp_port: Option<u16>,
    /// `"starttls"` (the default), `"tls"` (implicit TLS), or `"none"`, which
    /// is allowed only for a relay on a loopback address.
    pub smtp_tls: SmtpTls,
    /// AUTH as this user (PLAIN or LOGIN, whichever the relay offers).
    pub smtp_username: Option<String>,
    /// With `smtp_username`; prefer `smtp_password_file`.
    pub smtp_password: Option<String>,
    /// A file holding the password (one trailing line break is ignored); read
    /// once, when natterd starts.
    pub smtp_password_file: Option<PathBuf>,
    /// Bound on one whole delivery (connect, TLS, AUTH, the transaction), in
    /// milliseconds.
    pub timeout_ms: u64,
}

/// Which backend delivers mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MailProvider {
    /// Logs every mail, code included: for development.
    #[default]
    Console,
    /// Sends through an SMTP relay.
    Smtp,
}

/// How the connection to the SMTP relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required: a relay that
    /// does not offer it gets neither credentials nor mail.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: only for a relay on a loopback address.
    None,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            provider: MailProvider::Console,
            from: "natter <natter@localhost>".into(),
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password: None,
            smtp_password_file: None,
            timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for MailConfig {
    /// As derived, but the password is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailConfig")
            .field("provider", &self.provider)
            .field("from", &self.from)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_tls", &self.smtp_tls)
            .field("smtp_username", &self.smtp_username)
            .field("smtp_password", &self.smtp_password.as_ref().map(|_| format_args!("<redacted>")))
            .field("smtp_password_file", &self.smtp_password_file)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl MailConfig {
    /// The relay's port: `smtp_port`, else the default of the TLS mode.
    pub fn port(&self) -> u16 {
        self.smtp_port.unwrap_or(match self.smtp_tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }

    /// The delivery deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what can be checked without the network or the password file.
    ///
    /// # Errors
    /// A message naming the `mail.*` key at fault (never a password).
    pub fn validate(&self) -> Result<(), String> {
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(format!("mail.from {:?} is not a mailbox such as \"natter <natter@example.org>\"", self.from));
        }
        if self.timeout_ms == 0 {
            return Err("mail.timeout_ms must be at least 1".into());
        }
        match self.provider {
            MailProvider::Console => self.validate_console(),
            MailProvider::Smtp => self.validate_smtp(),
        }
    }

    /// SMTP settings with the console provider would send nothing and log every
    /// code: surely a forgotten `provider = "smtp"`.
    fn validate_console(&self) -> Result<(), String> {
        let set = [
            ("smtp_host", self.smtp_host.is_some()),
            ("smtp_port", self.smtp_port.is_some()),
            ("smtp_username", self.smtp_username.is_some()),
            ("smtp_password", self.smtp_password.is_some()),
            ("smtp_password_file", self.smtp_password_file.is_some()),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => Err(format!(
                "mail.{key} is set but mail.provider is \"console\" (mail is only logged); set mail.provider = \"smtp\""
            )),
            None => Ok(()),
        }
    }

    fn validate_smtp(&self) -> Result<(), String> {
        let host = match self.smtp_host.as_deref().map(str::trim) {
            None | Some("") => return Err("mail.provider \"smtp\" needs mail.smtp_host".into()),
            Some(host) => host,
        };
        match self.smtp_tls {
            SmtpTls::None if !is_loopback_host(host) => {
                return Err(format!(
                    "mail.smtp_tls \"none\" is allowed only for a relay on a loopback address \
                     (127.0.0.0/8, ::1, localhost), not {host:?}: use \"starttls\" or \"tls\""
                ));
            }
            SmtpTls::None => {}
            SmtpTls::Starttls | SmtpTls::Tls => {
                if rustls_pki_types::ServerName::try_from(host).is_err() {
                    return Err(format!("mail.smtp_host {host:?} is not a host name or IP address"));
                }
            }
        }
        if self.smtp_port == Some(0) {
            return Err("mail.smtp_port must not be 0".into());
        }
        let has_password = self.smtp_password.is_some() || self.smtp_password_file.is_some();
        if self.smtp_password.is_some() && self.smtp_password_file.is_some() {
            return Err("mail.smtp_password and mail.smtp_password_file exclude each other: set one".into());
        }
        match (&self.smtp_username, has_password) {
            (Some(_), false) => Err("mail.smtp_username needs mail.smtp_password_file (or mail.smtp_password)".into()),
            (None, true) => Err("a mail.smtp_password(_file) needs mail.smtp_username".into()),
            (Some(user), true) if user.is_empty() => Err("mail.smtp_username is empty".into()),
            _ => Ok(()),
        }
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The backend `config` names, built once (the password file is read here).
///
/// # Errors
/// An invalid configuration, or an unreadable or empty password file.
pub fn mailer(config: &MailConfig) -> Result<Arc<dyn Mailer>, MailConfigError> {
    config.validate().map_err(MailConfigError::Invalid)?;
    Ok(match config.provider {
        MailProvider::Console => Arc::new(ConsoleMailer::new()),
        MailProvider::Smtp => Arc::new(SmtpMailer::new(config)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-very-secret";

    fn smtp(host: &str, tls: SmtpTls) -> MailConfig {
        MailConfig {
            provider: MailProvider::Smtp,
            smtp_host: Some(host.into()),
            smtp_tls: tls,
            ..MailConfig::default()
        }
    }

    #[test]
    fn defaults_are_console_and_every_key_serializes() {
        let c = MailConfig::default();
        assert_eq!(c.provider, MailProvider::Console);
        assert_eq!(c.from, "natter <natter@localhost>");
        assert_eq!(c.timeout_ms, 10_000);
        c.validate().unwrap();
        let json = serde_json::to_value(&c).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "provider",
            "from",
            "smtp_host",
            "smtp_port",
            "smtp_tls",
            "smtp_username",
            "smtp_password",
            "smtp_password_file",
            "timeout_ms",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(json["provider"], "console");
        assert_eq!(json["smtp_tls"], "starttls");
        assert!(json["smtp_host"].is_null());
    }

    #[test]
    fn reads_lowercase_names_and_refuses_unknown_keys() {
        let c: MailConfig = toml::from_str(
            "provider = \"smtp\"\nsmtp_host = \"smtp.example.org\"\nsmtp_tls = \"tls\"\nsmtp_username = \"natter\"\n\
             smtp_password_file = \"/run/secrets/smtp\"\n",
        )
        .unwrap();
        assert_eq!(c.provider, MailProvider::Smtp);
        assert_eq!(c.smtp_tls, SmtpTls::Tls);
        assert_eq!(c.port(), 465);
        c.validate().unwrap();
        assert!(toml::from_str::<MailConfig>("smtp_hots = \"x\"").is_err());
        assert!(toml::from_str::<MailConfig>("smtp_tls = \"ssl\"").is_err());
        assert!(toml::from_str::<MailConfig>("provider = \"sendmail\"").is_err());
    }

    #[test]
    fn port_defaults_by_tls_mode() {
        assert_eq!(smtp("smtp.example.org", SmtpTls::Starttls).port(), 587);
        assert_eq!(smtp("smtp.example.org", SmtpTls::Tls).port(), 465);
        assert_eq!(smtp("127.0.0.1", SmtpTls::None).port(), 25);
        let mut c = smtp("127.0.0.1", SmtpTls::None);
        c.smtp_port = Some(2525);
        assert_eq!(c.port(), 2525);
        c.smtp_port = Some(0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn no_tls_only_to_a_loopback_relay() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LocalHost", "localhost."] {
            smtp(host, SmtpTls::None).validate().unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        for host in
            ["smtp.example.org", "10.0.0.5", "192.168.1.1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost.evil"]
        {
            let e = smtp(host, SmtpTls::None).validate().unwrap_err();
            assert!(e.contains("loopback") && e.contains("smtp_tls"), "{host}: {e}");
        }
        // With TLS any host will do.
        smtp("smtp.example.org", SmtpTls::Starttls).validate().unwrap();
        smtp("192.0.2.7", SmtpTls::Tls).validate().unwrap();
        assert!(smtp("not a host", SmtpTls::Tls).validate().is_err());
    }

    #[test]
    fn smtp_needs_a_host_and_a_mailbox_to_send_from() {
        let mut c = smtp("smtp.example.org", SmtpTls::Starttls);
        c.smtp_host = None;
        assert!(c.validate().unwrap_err().contains("smtp_host"));
        c.smtp_host = Some(" ".into());
        assert!(c.validate().unwrap_err().contains("smtp_host"));
        let mut c = smtp("smtp.example.org", SmtpTls::Starttls);
        for from in ["natter@example.org", "Natter Team <team@example.org>"] {
            c.from = from.into();
            c.validate().unwrap_or_else(|e| panic!("{from}: {e}"));
        }
        for from in ["", "natter", "natter <>", "<natter@>"] {
            c.from = from.into();
            assert!(c.validate().unwrap_err().contains("mail.from"), "{from:?}");
        }
        c.from = "natter@example.org".into();
        c.timeout_ms = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn credentials_go_together() {
        let mut c = smtp("smtp.example.org", SmtpTls::Starttls);
        c.smtp_username = Some("natter".into());
        assert!(c.validate().unwrap_err().contains("smtp_password"), "username without password");
        c.smtp_password = Some(SECRET.into());
        c.validate().unwrap();
        c.smtp_password_file = Some("/run/secrets/smtp".into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("exclude"), "{e}");
        assert!(!e.contains(SECRET));
        c.smtp_password = None;
        c.validate().unwrap();
        c.smtp_username = None;
        assert!(c.validate().is_err(), "password without username");
    }

    #[test]
    fn console_with_smtp_settings_is_a_mistake() {
        let mut c = MailConfig { smtp_host: Some("smtp.example.org".into()), ..MailConfig::default() };
        let e = c.validate().unwrap_err();
        assert!(e.contains("mail.smtp_host") && e.contains("provider"), "{e}");
        c.smtp_host = None;
        c.smtp_password = Some(SECRET.into());
        let e = c.validate().unwrap_err();
        assert!(!e.contains(SECRET), "{e}");
    }

    #[test]
    fn the_password_is_never_shown() {
        let mut c = smtp("smtp.example.org", SmtpTls::Starttls);
        c.smtp_username = Some("natter".into());
        c.smtp_password = Some(SECRET.into());
        let debug = format!("{c:?} {c:#?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("<redacted>") && debug.contains("smtp.example.org"), "{debug}");
        // Every refusal of this configuration leaves the password out.
        for tweak in [
            |c: &mut MailConfig| c.smtp_tls = SmtpTls::None,
            |c: &mut MailConfig| c.smtp_password_file = Some("/x".into()),
            |c: &mut MailConfig| c.smtp_username = None,
            |c: &mut MailConfig| c.smtp_host = None,
            |c: &mut MailConfig| c.provider = MailProvider::Console,
        ] {
            let mut bad = c.clone();
            tweak(&mut bad);
            let e = mailer(&bad).err().expect("refused");
            assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
        }
    }

    #[test]
    fn mail_debug_leaves_the_code_out() {
        let m = Mail { to: "a@example.org".into(), subject: "Your code".into(), text: "code 123456".into() };
        let debug = format!("{m:?}");
        assert!(!debug.contains("123456") && debug.contains("a@example.org"), "{debug}");
    }

    #[test]
    fn errors_say_what_happened() {
        let e = MailError::Unavailable { retry_after: Duration::from_secs(30), reason: "connection refused".into() };
        assert_eq!(e.to_string(), "mail delivery unavailable (retry in 30s): connection refused");
        assert_eq!(MailError::Rejected("550 no such user".into()).to_string(), "mail rejected: 550 no such user");
    }

    #[test]
    fn the_backend_is_chosen_once_from_the_config() {
        assert!(mailer(&MailConfig::default()).is_ok());
        let mut c = smtp("127.0.0.1", SmtpTls::None);
        assert!(mailer(&c).is_ok());
        c.smtp_username = Some("natter".into());
        c.smtp_password_file = Some("/nonexistent/natter-smtp-password".into());
        let e = mailer(&c).err().expect("missing file");
        assert!(matches!(e, MailConfigError::PasswordFile { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/natter-smtp-password"), "{e}");
    }
}
