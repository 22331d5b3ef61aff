//! The development backend: every text, code included, goes to the log at INFO
//! and nothing is sent. natter owns the code; it never fails.

use super::{SmsError, SmsProvider};

/// Logs texts instead of sending them.
#[derive(Debug, Default)]
pub struct ConsoleSms(());

impl ConsoleSms {
    pub fn new() -> Self {
        tracing::warn!(provider = "console", "texts are logged, not sent: set sms.provider to deliver them");
        Self(())
    }
}

#[async_trait::async_trait]
impl SmsProvider for ConsoleSms {
    fn owns_code(&self) -> bool {
        true
    }

    async fn send(&self, to: &str, text: &str) -> Result<(), SmsError> {
        tracing::info!(to = %to, text = %text, "sms (console provider)");
        Ok(())
    }

    async fn start_verification(&self, _to: &str) -> Result<(), SmsError> {
        Err(SmsError::Unsupported)
    }

    async fn check_verification(&self, _to: &str, _code: &str) -> Result<bool, SmsError> {
        Err(SmsError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn always_sends_and_owns_the_code() {
        let sms = ConsoleSms::new();
        assert!(sms.owns_code());
        sms.send("+14155550100", "Your natter code is 123456").await.unwrap();
        assert_eq!(sms.start_verification("+14155550100").await, Err(SmsError::Unsupported));
        assert_eq!(sms.check_verification("+14155550100", "123456").await, Err(SmsError::Unsupported));
    }
}
