//! Twilio Verify (v2): Twilio makes the code, texts it and checks it; natter
//! never sees it. `POST /v2/Services/{ServiceSid}/Verifications` (`To`,
//! `Channel=sms`) starts one, `POST /v2/Services/{ServiceSid}/VerificationCheck`
//! (`To`, `Code`) checks a code: 200 with `"status": "approved"` (the
//! verification is then spent) or `"pending"` (wrong code). A check that finds
//! no pending verification (none started, expired, approved already, out of
//! tries) is a 404 (Twilio error 20404): "not approved", not an error.

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::twilio::{check_recipient, TwilioHttp};
use super::{SmsConfig, SmsConfigError, SmsError, SmsProvider};

/// Twilio's "Max check attempts reached": the verification is spent.
const MAX_CHECK_ATTEMPTS: u32 = 60202;

/// Verifies phone numbers with Twilio Verify.
pub struct TwilioVerify {
    http: TwilioHttp,
    verifications: Url,
    check: Url,
}

impl TwilioVerify {
    /// Builds the client; reads `auth_token_file` if set. Connects to nothing
    /// yet.
    ///
    /// # Errors
    /// An invalid configuration, an unreadable or empty token file.
    pub fn new(config: &SmsConfig) -> Result<Self, SmsConfigError> {
        config.validate().map_err(SmsConfigError::Invalid)?;
        let service = config
            .verify_service_sid
            .as_deref()
            .ok_or_else(|| SmsConfigError::Invalid("sms.verify_service_sid".into()))?;
        let http = TwilioHttp::new(config)?;
        let verifications = http.endpoint(&format!("/v2/Services/{service}/Verifications"))?;
        let check = http.endpoint(&format!("/v2/Services/{service}/VerificationCheck"))?;
        Ok(Self { http, verifications, check })
    }
}

/// Codes Twilio makes are 4 to 10 digits; anything else cannot be right.
fn could_be_a_code(code: &str) -> bool {
    (4..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

#[async_trait::async_trait]
impl SmsProvider for TwilioVerify {
    fn owns_code(&self) -> bool {
        false
    }

    async fn send(&self, _to: &str, _text: &str) -> Result<(), SmsError> {
        Err(SmsError::Unsupported)
    }

    async fn start_verification(&self, to: &str) -> Result<(), SmsError> {
        check_recipient(to)?;
        let answer = self.http.post(&self.verifications, &[("To", to), ("Channel", "sms")]).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(self.http.refusal(&answer))
        }
    }

    async fn check_verification(&self, to: &str, code: &str) -> Result<bool, SmsError> {
        check_recipient(to)?;
        if !could_be_a_code(code) {
            // Not worth one of the verification's five tries.
            return Ok(false);
        }
        let answer = self.http.post(&self.check, &[("To", to), ("Code", code)]).await?;
        if answer.status.is_success() {
            #[derive(Deserialize)]
            struct Check {
                status: String,
            }
            return match serde_json::from_slice::<Check>(&answer.body) {
                Ok(check) => Ok(check.status == "approved"),
                Err(e) => Err(SmsError::Unavailable {
                    retry_after: super::twilio::RETRY_AFTER,
                    reason: format!("an unreadable verification check answer: {e}"),
                }),
            };
        }
        let spent = answer.status == StatusCode::NOT_FOUND
            || (answer.status == StatusCode::TOO_MANY_REQUESTS && answer.twilio_code() == Some(MAX_CHECK_ATTEMPTS));
        if spent {
            Ok(false)
        } else {
            Err(self.http.refusal(&answer))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sms::SmsProviderKind;

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const SERVICE: &str = "VA0123456789abcdef0123456789abcdef";

    fn config() -> SmsConfig {
        SmsConfig {
            provider: SmsProviderKind::TwilioVerify,
            base_url: Some("http://127.0.0.1:9/".into()),
            allow_http_loopback: true,
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some("token".into()),
            verify_service_sid: Some(SERVICE.into()),
            ..SmsConfig::default()
        }
    }

    #[test]
    fn the_endpoints_are_the_services() {
        let v = TwilioVerify::new(&config()).unwrap();
        assert_eq!(v.verifications.as_str(), format!("http://127.0.0.1:9/v2/Services/{SERVICE}/Verifications"));
        assert_eq!(v.check.as_str(), format!("http://127.0.0.1:9/v2/Services/{SERVICE}/VerificationCheck"));
    }

    #[tokio::test]
    async fn no_request_for_what_cannot_be_right() {
        // Nothing listens on port 9: a request would be Unavailable.
        let v = TwilioVerify::new(&config()).unwrap();
        assert!(!v.owns_code());
        for code in ["", "123", "12345678901", "12a456", " 123456", "１２３４５６"] {
            assert_eq!(v.check_verification("+14155550100", code).await, Ok(false), "{code:?}");
        }
        assert!(matches!(v.check_verification("4155550100", "123456").await, Err(SmsError::Rejected(_))));
        assert!(matches!(v.start_verification("+1 415 555 0100").await, Err(SmsError::Rejected(_))));
        assert_eq!(v.send("+14155550100", "hi").await, Err(SmsError::Unsupported));
    }
}
