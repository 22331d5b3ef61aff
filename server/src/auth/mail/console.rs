//! The development backend: every mail, code included, goes to the log at INFO
//! and nothing is sent. It never fails.

use super::{Mail, MailError, Mailer};

/// Logs mail instead of sending it.
#[derive(Debug, Default)]
pub struct ConsoleMailer(());

impl ConsoleMailer {
    pub fn new() -> Self {
        tracing::warn!(provider = "console", "mail is logged, not sent: set mail.provider = \"smtp\" to deliver it");
        Self(())
    }
}

#[async_trait::async_trait]
impl Mailer for ConsoleMailer {
    async fn send(&self, mail: Mail) -> Result<(), MailError> {
        tracing::info!(to = %mail.to, subject = %mail.subject, text = %mail.text, "mail (console provider)");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn always_delivers() {
        let mail = Mail { to: "a@example.org".into(), subject: "Your code".into(), text: "123456".into() };
        ConsoleMailer::new().send(mail).await.unwrap();
    }
}
