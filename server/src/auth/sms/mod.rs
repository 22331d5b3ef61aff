//! Outgoing text messages (sign-in by phone): the [`SmsProvider`] seam, its
//! configuration (`[sms]`), and one module per backend: `console`
//! (development: the text, code included, goes to the log), `twilio` (Twilio
//! Programmable Messaging: natter makes and checks the code, Twilio carries the
//! text) and `twilio_verify` (Twilio Verify: Twilio makes, texts and checks its
//! own code).
//!
//! The backend is chosen once, by [`sms_provider`]. Requests go over HTTPS
//! (rustls with ring, Mozilla's roots: no OpenSSL), over plain HTTP only to a
//! loopback address and only when the configuration says so (for tests). This
//! module never puts the auth token in a message: not in errors, not in `Debug`
//! output, not in logs.

mod console;
mod twilio;
mod twilio_verify;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use console::ConsoleSms;
pub use twilio::TwilioSms;
pub use twilio_verify::TwilioVerify;

/// Where Programmable Messaging lives.
pub const TWILIO_BASE_URL: &str = "https://api.twilio.com";
/// Where Verify v2 lives.
pub const TWILIO_VERIFY_BASE_URL: &str = "https://verify.twilio.com";

/// Sends texts, and for providers that own the code, starts and checks
/// verifications. One value is shared by every session.
#[async_trait::async_trait]
pub trait SmsProvider: Send + Sync {
    /// Whether natter generates and checks the code (console, twilio) or the
    /// provider does (twilio-verify).
    fn owns_code(&self) -> bool;

    /// Sends `text` (which contains natter's code) to `to` (E.164) — for
    /// providers where natter owns the code.
    ///
    /// # Errors
    /// [`SmsError::Unavailable`] when trying again later may work,
    /// [`SmsError::Rejected`] when it will not, [`SmsError::Unsupported`] for a
    /// provider that owns the code.
    async fn send(&self, to: &str, text: &str) -> Result<(), SmsError>;

    /// Starts a provider-owned verification (twilio-verify): the provider texts
    /// its own code to `to` (E.164).
    ///
    /// # Errors
    /// As [`SmsProvider::send`]; [`SmsError::Unsupported`] where natter owns
    /// the code.
    async fn start_verification(&self, to: &str) -> Result<(), SmsError>;

    /// Checks a provider-owned code: `Ok(true)` approved (the verification is
    /// then spent), `Ok(false)` wrong, expired, already used, or out of tries.
    ///
    /// # Errors
    /// As [`SmsProvider::send`]; [`SmsError::Unsupported`] where natter owns
    /// the code.
    async fn check_verification(&self, to: &str, code: &str) -> Result<bool, SmsError>;
}

/// Why a text was not sent or a code not checked. Never carries the auth token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    /// A temporary failure: the provider is unreachable or slow, answered 5xx,
    /// or asked us to slow down (429, its `Retry-After` honoured).
    #[error("sms delivery unavailable (retry in {}s): {reason}", retry_after.as_secs())]
    Unavailable { retry_after: Duration, reason: String },
    /// A permanent failure: the provider refused the request (an invalid or
    /// unreachable number, refused credentials), with its error code and
    /// message; or the request cannot be made as it is (not an E.164 number).
    #[error("sms rejected: {0}")]
    Rejected(String),
    /// This provider does not do that: `send` where the provider owns the
    /// code, or a verification where natter does.
    #[error("not supported by the configured sms provider")]
    Unsupported,
}

/// An `[sms]` configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SmsConfigError {
    #[error("invalid sms configuration: {0}")]
    Invalid(String),
    #[error("cannot read sms.auth_token_file {}: {source}", path.display())]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("cannot build the HTTPS client: {0}")]
    HttpClient(String),
}

/// Which backend sends texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmsProviderKind {
    /// Logs every text, code included: for development.
    #[default]
    Console,
    /// Twilio Programmable Messaging: natter's code in natter's text.
    Twilio,
    /// Twilio Verify: Twilio's code in Twilio's text, checked by Twilio.
    TwilioVerify,
}

impl SmsProviderKind {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Twilio => "twilio",
            Self::TwilioVerify => "twilio-verify",
        }
    }
}

/// The `[sms]` table of natterd's configuration.
///
/// Every field serializes, `None` included: natterd lists its configuration
/// keys by serializing the defaults.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// `"console"` (the default: texts are logged, for development), `"twilio"`
    /// or `"twilio-verify"`.
    pub provider: SmsProviderKind,
    /// Overrides the API's address: by default `https://api.twilio.com`
    /// (twilio) or `https://verify.twilio.com` (twilio-verify).
    pub base_url: Option<String>,
    /// The Twilio account (`AC…`), the user name of every request.
    pub account_sid: Option<String>,
    /// The account's auth token; prefer `auth_token_file`.
    pub auth_token: Option<String>,
    /// A file holding the auth token (one trailing line break is ignored);
    /// read once, when natterd starts.
    pub auth_token_file: Option<PathBuf>,
    /// twilio: the sender, an E.164 number of the account (or set
    /// `messaging_service_sid`).
    pub from: Option<String>,
    /// twilio: send through this Messaging Service (`MG…`) instead of `from`.
    pub messaging_service_sid: Option<String>,
    /// twilio-verify: the Verify service (`VA…`).
    pub verify_service_sid: Option<String>,
    /// Bound on one whole request (connect, TLS, the answer), in milliseconds.
    pub timeout_ms: u64,
    /// Allows a `base_url` of `http://` to a loopback address (tests); any
    /// other `base_url` must be `https://` whatever this says.
    pub allow_http_loopback: bool,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            provider: SmsProviderKind::Console,
            base_url: None,
            account_sid: None,
            auth_token: None,
            auth_token_file: None,
            from: None,
            messaging_service_sid: None,
            verify_service_sid: None,
            timeout_ms: 10_000,
            allow_http_loopback: false,
        }
    }
}

impl fmt::Debug for SmsConfig {
    /// As derived, but the auth token is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsConfig")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &self.auth_token.as_ref().map(|_| format_args!("<redacted>")))
            .field("auth_token_file", &self.auth_token_file)
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("verify_service_sid", &self.verify_service_sid)
            .field("timeout_ms", &self.timeout_ms)
            .field("allow_http_loopback", &self.allow_http_loopback)
            .finish()
    }
}

impl SmsConfig {
    /// The API address in use: `base_url`, else the provider's default
    /// (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        let base = match (&self.base_url, self.provider) {
            (Some(url), _) => url.as_str(),
            (None, SmsProviderKind::TwilioVerify) => TWILIO_VERIFY_BASE_URL,
            (None, SmsProviderKind::Twilio | SmsProviderKind::Console) => TWILIO_BASE_URL,
        };
        base.trim().trim_end_matches('/')
    }

    /// The request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what can be checked without the network or the token file.
    ///
    /// # Errors
    /// A message naming the `sms.*` key at fault (never the token).
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("sms.timeout_ms must be at least 1".into());
        }
        match self.provider {
            SmsProviderKind::Console => self.validate_console(),
            SmsProviderKind::Twilio => {
                self.validate_twilio_account()?;
                self.refuse(&[("verify_service_sid", self.verify_service_sid.is_some())], "twilio-verify")?;
                match (&self.from, &self.messaging_service_sid) {
                    (None, None) => Err("sms.provider \"twilio\" needs sms.from (an E.164 number such as \
                                         \"+14155550100\") or sms.messaging_service_sid"
                        .into()),
                    (Some(_), Some(_)) => {
                        Err("sms.from and sms.messaging_service_sid exclude each other: set one".into())
                    }
                    (Some(from), None) if !is_e164(from) => Err(format!(
                        "sms.from {from:?} is not an E.164 number such as \"+14155550100\" \
                         (for an alphanumeric sender, use a Messaging Service: sms.messaging_service_sid)"
                    )),
                    (Some(_), None) => Ok(()),
                    (None, Some(sid)) => check_sid("messaging_service_sid", sid, "MG"),
                }
            }
            SmsProviderKind::TwilioVerify => {
                self.validate_twilio_account()?;
                self.refuse(
                    &[("from", self.from.is_some()), ("messaging_service_sid", self.messaging_service_sid.is_some())],
                    "twilio",
                )?;
                match &self.verify_service_sid {
                    None => Err("sms.provider \"twilio-verify\" needs sms.verify_service_sid (\"VA…\")".into()),
                    Some(sid) => check_sid("verify_service_sid", sid, "VA"),
                }
            }
        }
    }

    /// Twilio settings with the console provider would send nothing and log
    /// every code: surely a forgotten `provider = "twilio"`.
    fn validate_console(&self) -> Result<(), String> {
        let set = [
            ("base_url", self.base_url.is_some()),
            ("account_sid", self.account_sid.is_some()),
            ("auth_token", self.auth_token.is_some()),
            ("auth_token_file", self.auth_token_file.is_some()),
            ("from", self.from.is_some()),
            ("messaging_service_sid", self.messaging_service_sid.is_some()),
            ("verify_service_sid", self.verify_service_sid.is_some()),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => Err(format!(
                "sms.{key} is set but sms.provider is \"console\" (texts are only logged); \
                 set sms.provider = \"twilio\" or \"twilio-verify\""
            )),
            None => Ok(()),
        }
    }

    /// A key of the other Twilio provider is a mistake too.
    fn refuse(&self, set: &[(&str, bool)], belongs_to: &str) -> Result<(), String> {
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => {
                Err(format!("sms.{key} is for sms.provider \"{belongs_to}\", not \"{}\"", self.provider.name()))
            }
            None => Ok(()),
        }
    }

    /// What both Twilio providers need: the account, its token, an API address.
    fn validate_twilio_account(&self) -> Result<(), String> {
        match &self.account_sid {
            None => return Err("a Twilio sms.provider needs sms.account_sid (\"AC…\")".into()),
            Some(sid) => check_sid("account_sid", sid, "AC")?,
        }
        match (&self.auth_token, &self.auth_token_file) {
            (None, None) => return Err("a Twilio sms.provider needs sms.auth_token_file (or sms.auth_token)".into()),
            (Some(_), Some(_)) => {
                return Err("sms.auth_token and sms.auth_token_file exclude each other: set one".into());
            }
            (Some(token), None) if token.trim().is_empty() => return Err("sms.auth_token is empty".into()),
            _ => {}
        }
        crate::auth::http::validate_url(
            "sms",
            "base_url",
            self.base_url(),
            self.allow_http_loopback,
            "sms.account_sid and sms.auth_token_file",
            false,
        )
    }
}

/// A Twilio SID: its two-letter prefix and 32 hexadecimal digits. Checked
/// because it becomes part of the request's path (and a token pasted into
/// the wrong key is caught here, without being repeated).
fn check_sid(key: &str, sid: &str, prefix: &str) -> Result<(), String> {
    let ok = sid.len() == 34 && sid.starts_with(prefix) && sid.as_bytes()[2..].iter().all(u8::is_ascii_hexdigit);
    if ok {
        Ok(())
    } else {
        Err(format!("sms.{key} is not a Twilio SID (\"{prefix}\" and 32 hexadecimal digits)"))
    }
}

/// Whether `number` is written as E.164: `+`, then 2 to 15 digits, the first
/// not 0. (Whether the number exists is the provider's to say.)
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
    })
}

/// The HTTPS client of the Twilio providers (`auth::http::client`).
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, SmsConfigError> {
    crate::auth::http::client(timeout).map_err(SmsConfigError::HttpClient)
}

/// The auth token: `auth_token`, or the file's content.
fn read_token(config: &SmsConfig) -> Result<String, SmsConfigError> {
    crate::auth::http::read_secret(
        "sms",
        ("auth_token", config.auth_token.as_ref()),
        ("auth_token_file", config.auth_token_file.as_deref()),
    )
    .map_err(|e| match e {
        crate::auth::http::SecretError::File { path, source, .. } => SmsConfigError::TokenFile { path, source },
        crate::auth::http::SecretError::Missing(_) => {
            SmsConfigError::Invalid("a Twilio sms.provider needs an auth token".into())
        }
        e @ crate::auth::http::SecretError::Empty(_) => SmsConfigError::Invalid(e.to_string()),
    })
}

/// The backend `config` names, built once (the token file is read here).
///
/// # Errors
/// An invalid configuration, an unreadable or empty token file.
pub fn sms_provider(config: &SmsConfig) -> Result<Arc<dyn SmsProvider>, SmsConfigError> {
    config.validate().map_err(SmsConfigError::Invalid)?;
    Ok(match config.provider {
        SmsProviderKind::Console => Arc::new(ConsoleSms::new()),
        SmsProviderKind::Twilio => Arc::new(TwilioSms::new(config)?),
        SmsProviderKind::TwilioVerify => Arc::new(TwilioVerify::new(config)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "f00dfeedcafe-the-twilio-auth-token";
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
    const VERIFY: &str = "VA0123456789abcdef0123456789abcdef";

    fn twilio() -> SmsConfig {
        SmsConfig {
            provider: SmsProviderKind::Twilio,
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some(SECRET.into()),
            from: Some("+14155550100".into()),
            ..SmsConfig::default()
        }
    }

    fn verify() -> SmsConfig {
        SmsConfig {
            provider: SmsProviderKind::TwilioVerify,
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some(SECRET.into()),
            verify_service_sid: Some(VERIFY.into()),
            ..SmsConfig::default()
        }
    }

    #[test]
    fn defaults_are_console_and_every_key_serializes() {
        let c = SmsConfig::default();
        assert_eq!(c.provider, SmsProviderKind::Console);
        assert_eq!(c.timeout_ms, 10_000);
        assert!(!c.allow_http_loopback);
        c.validate().unwrap();
        let json = serde_json::to_value(&c).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "provider",
            "base_url",
            "account_sid",
            "auth_token",
            "auth_token_file",
            "from",
            "messaging_service_sid",
            "verify_service_sid",
            "timeout_ms",
            "allow_http_loopback",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert_eq!(keys.len(), 10, "{keys:?}");
        assert_eq!(json["provider"], "console");
        assert!(json["base_url"].is_null() && json["auth_token"].is_null());
    }

    #[test]
    fn reads_kebab_case_providers_and_refuses_unknown_keys() {
        let c: SmsConfig = toml::from_str(&format!(
            "provider = \"twilio-verify\"\naccount_sid = \"{ACCOUNT}\"\nauth_token_file = \"/run/secrets/twilio\"\n\
             verify_service_sid = \"{VERIFY}\"\n"
        ))
        .unwrap();
        assert_eq!(c.provider, SmsProviderKind::TwilioVerify);
        assert_eq!(c.base_url(), TWILIO_VERIFY_BASE_URL);
        c.validate().unwrap();
        let c: SmsConfig = toml::from_str("provider = \"twilio\"").unwrap();
        assert_eq!(c.provider, SmsProviderKind::Twilio);
        assert_eq!(c.base_url(), TWILIO_BASE_URL);
        for kind in [SmsProviderKind::Console, SmsProviderKind::Twilio, SmsProviderKind::TwilioVerify] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
        assert!(toml::from_str::<SmsConfig>("provider = \"twilio_verify\"").is_err());
        assert!(toml::from_str::<SmsConfig>("provider = \"nexmo\"").is_err());
        assert!(toml::from_str::<SmsConfig>("acount_sid = \"x\"").is_err());
    }

    #[test]
    fn base_url_overrides_the_default_of_either_provider() {
        let mut c = twilio();
        c.base_url = Some("https://twilio-proxy.example.org/api/".into());
        assert_eq!(c.base_url(), "https://twilio-proxy.example.org/api");
        c.validate().unwrap();
        let mut c = verify();
        c.base_url = Some("https://verify-proxy.example.org".into());
        assert_eq!(c.base_url(), "https://verify-proxy.example.org");
        c.validate().unwrap();
    }

    #[test]
    fn https_is_required() {
        for base in ["http://api.twilio.com", "http://10.0.0.5:8080", "ftp://api.twilio.com", "api.twilio.com", ""] {
            let mut c = twilio();
            c.base_url = Some(base.into());
            c.allow_http_loopback = true;
            let e = c.validate().unwrap_err();
            assert!(e.contains("sms.base_url"), "{base}: {e}");
        }
        for base in ["https://user:pw@api.twilio.com", "https://api.twilio.com/?x=1", "https://api.twilio.com/#f"] {
            let mut c = twilio();
            c.base_url = Some(base.into());
            let e = c.validate().unwrap_err();
            assert!(e.contains("sms.base_url") && !e.contains("pw@"), "{base}: {e}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_and_only_with_the_flag() {
        for base in ["http://127.0.0.1:8080", "http://127.1.2.3", "http://[::1]:9000", "http://localhost:1234"] {
            let mut c = twilio();
            c.base_url = Some(base.into());
            let e = c.validate().unwrap_err();
            assert!(e.contains("allow_http_loopback"), "{base}: {e}");
            c.allow_http_loopback = true;
            c.validate().unwrap_or_else(|e| panic!("{base}: {e}"));
            let mut v = verify();
            v.base_url = Some(base.into());
            v.allow_http_loopback = true;
            v.validate().unwrap_or_else(|e| panic!("{base}: {e}"));
        }
        for base in
            ["http://0.0.0.0:8080", "http://[::ffff:127.0.0.1]", "http://localhost.evil.example", "http://10.0.0.1"]
        {
            let mut c = twilio();
            c.base_url = Some(base.into());
            c.allow_http_loopback = true;
            let e = c.validate().unwrap_err();
            assert!(e.contains("https"), "{base}: {e}");
        }
    }

    #[test]
    fn twilio_needs_an_account_a_token_and_a_sender() {
        twilio().validate().unwrap();
        let mut c = twilio();
        c.account_sid = None;
        assert!(c.validate().unwrap_err().contains("sms.account_sid"));
        c.account_sid = Some("AC123".into());
        assert!(c.validate().unwrap_err().contains("sms.account_sid"));
        // A token pasted into the SID's key is refused without being repeated.
        c.account_sid = Some(SECRET.into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("sms.account_sid") && !e.contains(SECRET), "{e}");

        let mut c = twilio();
        c.auth_token = None;
        assert!(c.validate().unwrap_err().contains("auth_token"));
        c.auth_token_file = Some("/run/secrets/twilio".into());
        c.validate().unwrap();
        c.auth_token = Some(SECRET.into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("exclude") && !e.contains(SECRET), "{e}");
        c.auth_token_file = None;
        c.auth_token = Some(" ".into());
        assert!(c.validate().unwrap_err().contains("empty"));

        let mut c = twilio();
        c.from = None;
        let e = c.validate().unwrap_err();
        assert!(e.contains("sms.from") && e.contains("messaging_service_sid"), "{e}");
        c.messaging_service_sid = Some(SERVICE.into());
        c.validate().unwrap();
        c.from = Some("+14155550100".into());
        assert!(c.validate().unwrap_err().contains("exclude"));
        c.from = None;
        c.messaging_service_sid = Some(VERIFY.into());
        assert!(c.validate().unwrap_err().contains("sms.messaging_service_sid"));
        for from in ["14155550100", "+0123456", "+1 415 555 0100", "natter", "+1234567890123456"] {
            let mut c = twilio();
            c.from = Some(from.into());
            assert!(c.validate().unwrap_err().contains("E.164"), "{from}");
        }
        let mut c = twilio();
        c.verify_service_sid = Some(VERIFY.into());
        assert!(c.validate().unwrap_err().contains("twilio-verify"));
        c.verify_service_sid = None;
        c.timeout_ms = 0;
        assert!(c.validate().unwrap_err().contains("timeout_ms"));
    }

    #[test]
    fn twilio_verify_needs_an_account_a_token_and_a_service() {
        verify().validate().unwrap();
        let mut c = verify();
        c.verify_service_sid = None;
        assert!(c.validate().unwrap_err().contains("sms.verify_service_sid"));
        c.verify_service_sid = Some(SERVICE.into());
        assert!(c.validate().unwrap_err().contains("sms.verify_service_sid"));
        let mut c = verify();
        c.auth_token = None;
        assert!(c.validate().unwrap_err().contains("auth_token"));
        let mut c = verify();
        c.account_sid = None;
        assert!(c.validate().unwrap_err().contains("account_sid"));
        let mut c = verify();
        c.from = Some("+14155550100".into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("sms.from") && e.contains("\"twilio\""), "{e}");
    }

    #[test]
    fn console_with_twilio_settings_is_a_mistake() {
        let tweaks: [fn(&mut SmsConfig); 7] = [
            |c| c.base_url = Some(TWILIO_BASE_URL.into()),
            |c| c.account_sid = Some(ACCOUNT.into()),
            |c| c.auth_token = Some(SECRET.into()),
            |c| c.auth_token_file = Some("/run/secrets/twilio".into()),
            |c| c.from = Some("+14155550100".into()),
            |c| c.messaging_service_sid = Some(SERVICE.into()),
            |c| c.verify_service_sid = Some(VERIFY.into()),
        ];
        for tweak in tweaks {
            let mut c = SmsConfig::default();
            tweak(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains("console") && e.contains("sms.provider") && !e.contains(SECRET), "{e}");
        }
    }

    #[test]
    fn the_token_is_never_shown() {
        for c in [twilio(), verify()] {
            let debug = format!("{c:?} {c:#?}");
            assert!(!debug.contains(SECRET), "{debug}");
            assert!(debug.contains("<redacted>") && debug.contains(ACCOUNT), "{debug}");
        }
        // Every refusal of such a configuration leaves the token out.
        let tweaks: [fn(&mut SmsConfig); 7] = [
            |c| c.base_url = Some("http://api.twilio.com".into()),
            |c| c.auth_token_file = Some("/x".into()),
            |c| c.account_sid = None,
            |c| c.from = None,
            |c| c.provider = SmsProviderKind::Console,
            |c| c.provider = SmsProviderKind::TwilioVerify,
            |c| c.base_url = Some(format!("https://AC:{SECRET}@api.twilio.com")),
        ];
        for tweak in tweaks {
            let mut bad = twilio();
            tweak(&mut bad);
            let e = sms_provider(&bad).err().expect("refused");
            assert!(!format!("{e} {e:?}").contains(SECRET), "{e}");
        }
    }

    #[test]
    fn e164() {
        for ok in ["+14155550100", "+447700900123", "+12", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["", "+", "+1", "14155550100", "+04155550100", "+1 415", "+1234567890123456", "+1415555010a", "++1"]
        {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_happened() {
        let e = SmsError::Unavailable { retry_after: Duration::from_secs(30), reason: "connection refused".into() };
        assert_eq!(e.to_string(), "sms delivery unavailable (retry in 30s): connection refused");
        assert_eq!(SmsError::Rejected("twilio error 21211".into()).to_string(), "sms rejected: twilio error 21211");
        assert_eq!(SmsError::Unsupported.to_string(), "not supported by the configured sms provider");
    }

    #[test]
    fn the_backend_is_chosen_once_from_the_config() {
        let console = sms_provider(&SmsConfig::default()).unwrap();
        assert!(console.owns_code());
        assert!(sms_provider(&twilio()).unwrap().owns_code());
        assert!(!sms_provider(&verify()).unwrap().owns_code());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let mut c = twilio();
        c.auth_token = None;
        c.auth_token_file = Some(file.clone());
        let e = sms_provider(&c).err().expect("missing file");
        assert!(matches!(e, SmsConfigError::TokenFile { .. }), "{e}");
        assert!(e.to_string().contains("token"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        let e = sms_provider(&c).err().expect("empty file");
        assert!(e.to_string().contains("empty"), "{e}");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        assert_eq!(read_token(&c).unwrap(), SECRET);
        std::fs::write(&file, format!("{SECRET}\r\n")).unwrap();
        assert_eq!(read_token(&c).unwrap(), SECRET);
        sms_provider(&c).unwrap();
    }

    #[test]
    fn the_http_client_builds_with_ring() {
        http_client(Duration::from_secs(1)).unwrap();
    }
}
