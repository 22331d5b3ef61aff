//! Twilio Programmable Messaging: natter's text (with natter's code) is sent
//! with `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, HTTP Basic
//! auth (account SID and auth token), a form body of `To`, `From` (or
//! `MessagingServiceSid`) and `Body`; Twilio answers 201 and a message
//! resource, or an error `{"code", "message", "more_info", "status"}`.
//!
//! Also home of [`TwilioHttp`], the request and error handling both Twilio
//! backends share. Errors never carry the auth token or the Basic auth header,
//! even when an answer echoes them.

use std::time::Duration;

use base64::Engine;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::{is_e164, read_token, SmsConfig, SmsConfigError, SmsError, SmsProvider};
use crate::auth::Redactor;

/// How long a caller should wait before trying again when Twilio did not say.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// A longer `Retry-After` is taken as this (a caller should not wait for hours).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);
/// The most of an answer read; Twilio's are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Twilio's limit on `Body` (error 21617 beyond it).
pub const MAX_BODY_CHARS: usize = 1_600;

/// Sends texts through Twilio Programmable Messaging.
pub struct TwilioSms {
    http: TwilioHttp,
    messages: Url,
    sender: Sender,
}

enum Sender {
    From(String),
    MessagingService(String),
}

impl TwilioSms {
    /// Builds the client; reads `auth_token_file` if set. Connects to nothing
    /// yet.
    ///
    /// # Errors
    /// An invalid configuration, an unreadable or empty token file.
    pub fn new(config: &SmsConfig) -> Result<Self, SmsConfigError> {
        config.validate().map_err(SmsConfigError::Invalid)?;
        let http = TwilioHttp::new(config)?;
        let messages = http.endpoint(&format!("/2010-04-01/Accounts/{}/Messages.json", http.account_sid))?;
        let sender = match (&config.from, &config.messaging_service_sid) {
            (_, Some(service)) => Sender::MessagingService(service.clone()),
            (Some(from), None) => Sender::From(from.clone()),
            (None, None) => return Err(SmsConfigError::Invalid("sms.from or sms.messaging_service_sid".into())),
        };
        Ok(Self { http, messages, sender })
    }
}

#[async_trait::async_trait]
impl SmsProvider for TwilioSms {
    fn owns_code(&self) -> bool {
        true
    }

    async fn send(&self, to: &str, text: &str) -> Result<(), SmsError> {
        check_recipient(to)?;
        if text.is_empty() {
            return Err(SmsError::Rejected("the text is empty".into()));
        }
        if text.chars().count() > MAX_BODY_CHARS {
            return Err(SmsError::Rejected(format!("the text is longer than Twilio's {MAX_BODY_CHARS} characters")));
        }
        let sender = match &self.sender {
            Sender::From(from) => ("From", from.as_str()),
            Sender::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        // When the deadline strikes after the request went out, Twilio may
        // still send the text: a retry can then send it twice.
        let answer = self.http.post(&self.messages, &[("To", to), sender, ("Body", text)]).await?;
        if !answer.status.is_success() {
            return Err(self.http.refusal(&answer));
        }
        #[derive(Deserialize)]
        struct Message {
            sid: Option<String>,
            status: Option<String>,
        }
        // Accepted (201); what it says is only logged.
        let message: Option<Message> = serde_json::from_slice(&answer.body).ok();
        let (sid, status) = message.map(|m| (m.sid, m.status)).unwrap_or_default();
        tracing::debug!(
            sid = sid.as_deref().unwrap_or("?"),
            status = status.as_deref().unwrap_or("?"),
            "sms accepted by twilio"
        );
        Ok(())
    }

    async fn start_verification(&self, _to: &str) -> Result<(), SmsError> {
        Err(SmsError::Unsupported)
    }

    async fn check_verification(&self, _to: &str, _code: &str) -> Result<bool, SmsError> {
        Err(SmsError::Unsupported)
    }
}

/// A recipient Twilio could take: refused here, without a request, otherwise.
pub(super) fn check_recipient(to: &str) -> Result<(), SmsError> {
    if is_e164(to) {
        Ok(())
    } else {
        Err(SmsError::Rejected("the recipient is not an E.164 phone number (such as +14155550100)".into()))
    }
}

/// One Twilio account's requests: a form POST with Basic auth, and what a
/// failed answer means for the caller.
pub(super) struct TwilioHttp {
    client: reqwest::Client,
    base: String,
    account_sid: String,
    auth_token: String,
    /// `host[:port]` of the API, to say in errors which service failed.
    host: String,
    timeout: Duration,
    redact: Redactor,
}

/// An answer, read (up to a bound).
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    retry_after: Option<Duration>,
}

/// Twilio's error body (`more_info` and `status` are not needed).
#[derive(Deserialize)]
struct TwilioErrorBody {
    code: Option<u32>,
    message: Option<String>,
}

impl Answer {
    /// Twilio's error code (`21211`, `60202`, …), if the answer carries one.
    pub fn twilio_code(&self) -> Option<u32> {
        serde_json::from_slice::<TwilioErrorBody>(&self.body).ok().and_then(|e| e.code)
    }
}

impl TwilioHttp {
    /// The account's credentials (the token file is read here) and the HTTPS client.
    pub(super) fn new(config: &SmsConfig) -> Result<Self, SmsConfigError> {
        let account_sid = config
            .account_sid
            .clone()
            .ok_or_else(|| SmsConfigError::Invalid("a Twilio sms.provider needs sms.account_sid".into()))?;
        let auth_token = read_token(config)?;
        let base = config.base_url().to_owned();
        let url = Url::parse(&base).map_err(|e| SmsConfigError::Invalid(format!("sms.base_url: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(SmsConfigError::Invalid("sms.base_url has no host".into())),
        };
        let redact = redactor(&account_sid, &auth_token);
        Ok(Self {
            client: super::http_client(config.timeout())?,
            base,
            account_sid,
            auth_token,
            host,
            timeout: config.timeout(),
            redact,
        })
    }

    /// `path` (with its leading `/`) under the base URL.
    pub(super) fn endpoint(&self, path: &str) -> Result<Url, SmsConfigError> {
        Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| SmsConfigError::Invalid(format!("sms.base_url: cannot add {path}: {e}")))
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) to `url`.
    ///
    /// # Errors
    /// Only [`SmsError::Unavailable`]: no answer (refused, reset, timed out).
    /// Any answer, whatever its status, is `Ok`.
    pub(super) async fn post(&self, url: &Url, form: &[(&str, &str)]) -> Result<Answer, SmsError> {
        let request = self.client.post(url.clone()).basic_auth(&self.account_sid, Some(&self.auth_token)).form(form);
        let mut response = request.send().await.map_err(|e| self.no_answer(e))?;
        let status = response.status();
        let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(parse_retry_after);
        let mut body = Vec::new();
        // An answer cut short keeps what arrived: its status says enough.
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = MAX_ANSWER_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == MAX_ANSWER_BYTES {
                break;
            }
        }
        Ok(Answer { status, body, retry_after })
    }

    /// What a request that got no answer means: try again later.
    fn no_answer(&self, e: reqwest::Error) -> SmsError {
        let reason = if e.is_timeout() {
            format!("{}: no answer within {} ms", self.host, self.timeout.as_millis())
        } else {
            // The URL (account SID, path) is left out; the causes say what went wrong.
            let e = e.without_url();
            let mut reason = format!("{}: {e}", self.host);
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            reason
        };
        SmsError::Unavailable { retry_after: RETRY_AFTER, reason: self.redact.scrub(&reason) }
    }

    /// What an unsuccessful answer means for the caller: 429, 408 and 5xx are
    /// temporary (with Twilio's `Retry-After` when it gave one), everything
    /// else (bad number, refused credentials, unknown service) is not.
    pub(super) fn refusal(&self, answer: &Answer) -> SmsError {
        let status = answer.status.as_u16();
        let said = match serde_json::from_slice::<TwilioErrorBody>(&answer.body) {
            Ok(TwilioErrorBody { code: Some(code), message: Some(message) }) => {
                format!("twilio error {code} (HTTP {status}): {message}")
            }
            Ok(TwilioErrorBody { code: Some(code), message: None }) => format!("twilio error {code} (HTTP {status})"),
            _ => {
                // Not Twilio's JSON (a proxy's page?): its start, on one line.
                let text: String = String::from_utf8_lossy(&answer.body)
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .take(200)
                    .collect();
                match text.trim() {
                    "" => format!("HTTP {status}"),
                    text => format!("HTTP {status}: {text}"),
                }
            }
        };
        let reason = self.redact.scrub(&format!("{}: {said}", self.host));
        let temporary = answer.status == StatusCode::TOO_MANY_REQUESTS
            || answer.status == StatusCode::REQUEST_TIMEOUT
            || answer.status.is_server_error();
        if temporary {
            SmsError::Unavailable { retry_after: answer.retry_after.unwrap_or(RETRY_AFTER), reason }
        } else {
            SmsError::Rejected(reason)
        }
    }
}

/// `Retry-After` in seconds (an HTTP date is not used by Twilio, and is
/// ignored), at least one second, at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(value: &reqwest::header::HeaderValue) -> Option<Duration> {
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

/// The auth token, and the Basic credentials that carry it: what an answer's
/// echo must not show.
fn redactor(account_sid: &str, auth_token: &str) -> Redactor {
    let b64 = base64::engine::general_purpose::STANDARD;
    Redactor::new(vec![auth_token.to_owned(), b64.encode(format!("{account_sid}:{auth_token}"))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sms::SmsProviderKind;

    const SECRET: &str = "0123456789abcdef-token";
    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

    fn config() -> SmsConfig {
        SmsConfig {
            provider: SmsProviderKind::Twilio,
            base_url: Some("http://127.0.0.1:9".into()),
            allow_http_loopback: true,
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some(SECRET.into()),
            from: Some("+14155550100".into()),
            ..SmsConfig::default()
        }
    }

    fn answer(status: u16, body: &str, retry_after: Option<u64>) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: body.as_bytes().to_vec(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn the_endpoint_is_under_the_base_url() {
        let sms = TwilioSms::new(&config()).unwrap();
        assert_eq!(sms.messages.as_str(), format!("http://127.0.0.1:9/2010-04-01/Accounts/{ACCOUNT}/Messages.json"));
        let mut c = config();
        c.base_url = Some("https://proxy.example.org/twilio/".into());
        c.allow_http_loopback = false;
        let sms = TwilioSms::new(&c).unwrap();
        assert_eq!(
            sms.messages.as_str(),
            format!("https://proxy.example.org/twilio/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
        );
        assert_eq!(sms.http.host, "proxy.example.org");
    }

    #[test]
    fn answers_map_to_errors_the_caller_can_act_on() {
        let http = TwilioHttp::new(&config()).unwrap();
        let e = http.refusal(&answer(
            400,
            r#"{"code": 21211, "message": "The 'To' number +15005550001 is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}"#,
            None,
        ));
        assert_eq!(
            e,
            SmsError::Rejected(
                "127.0.0.1:9: twilio error 21211 (HTTP 400): The 'To' number +15005550001 is not a valid phone number."
                    .into()
            )
        );
        let e =
            http.refusal(&answer(429, r#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#, Some(7)));
        assert!(
            matches!(&e, SmsError::Unavailable { retry_after, reason }
            if *retry_after == Duration::from_secs(7) && reason.contains("20429")),
            "{e:?}"
        );
        let e = http.refusal(&answer(503, "", None));
        assert_eq!(e, SmsError::Unavailable { retry_after: RETRY_AFTER, reason: "127.0.0.1:9: HTTP 503".into() });
        let e = http.refusal(&answer(502, "<html>\n<b>Bad gateway</b></html>", None));
        assert!(
            matches!(&e, SmsError::Unavailable { reason, .. } if reason.ends_with("HTTP 502: <html> <b>Bad gateway</b></html>")),
            "{e:?}"
        );
        assert!(matches!(http.refusal(&answer(401, "", None)), SmsError::Rejected(_)));
        assert!(matches!(http.refusal(&answer(408, "", None)), SmsError::Unavailable { .. }));
        assert_eq!(answer(429, r#"{"code": 60202}"#, None).twilio_code(), Some(60202));
        assert_eq!(answer(429, "nope", None).twilio_code(), None);
    }

    #[test]
    fn echoed_credentials_are_redacted() {
        let http = TwilioHttp::new(&config()).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT}:{SECRET}"));
        let body = format!(r#"{{"code": 20003, "message": "Authenticate {SECRET} Basic {basic}", "status": 401}}"#);
        let e = http.refusal(&answer(401, &body, None));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET) && !shown.contains(&basic) && shown.contains("20003"), "{shown}");
    }

    #[test]
    fn retry_after_is_seconds_within_bounds() {
        let parse = |s: &str| parse_retry_after(&reqwest::header::HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse(" 0 "), Some(Duration::from_secs(1)));
        assert_eq!(parse("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse("-3"), None);
    }

    #[tokio::test]
    async fn what_twilio_would_refuse_is_refused_before_a_request() {
        // Nothing listens on port 9: a request would be Unavailable, not Rejected.
        let sms = TwilioSms::new(&config()).unwrap();
        for to in ["", "4155550100", "+1 415 555 0100", "+0415555010"] {
            assert!(matches!(sms.send(to, "code 123456").await, Err(SmsError::Rejected(_))), "{to:?}");
        }
        assert!(matches!(sms.send("+14155550100", "").await, Err(SmsError::Rejected(_))));
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        assert!(matches!(sms.send("+14155550100", &long).await, Err(SmsError::Rejected(_))));
        assert_eq!(sms.start_verification("+14155550100").await, Err(SmsError::Unsupported));
        assert_eq!(sms.check_verification("+14155550100", "123456").await, Err(SmsError::Unsupported));
    }
}
