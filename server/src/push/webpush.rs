//! The Web Push backend (RFC 8030): one encrypted (RFC 8291, `aes128gcm`),
//! VAPID-signed (RFC 8292) POST to the subscription's push resource per
//! notification, over natter's shared HTTPS client, and the push service's
//! answer sorted into what the worker does next.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use web_push_native::p256;

use super::vapid::VapidKey;
use super::{Answer, Outgoing, PushService, Urgency};

pub struct WebPush {
    http: reqwest::Client,
    vapid: Arc<VapidKey>,
    subject: String,
}

impl WebPush {
    /// # Errors
    /// TLS cannot be set up.
    pub fn new(vapid: Arc<VapidKey>, subject: String, timeout: Duration) -> Result<Self, String> {
        Ok(Self { http: crate::auth::http::client(timeout)?, vapid, subject })
    }
}

/// The push service's `Retry-After`: seconds (an HTTP date is read as "no
/// advice": the worker's own backoff applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[async_trait]
impl PushService for WebPush {
    async fn deliver(&self, out: &Outgoing<'_>) -> Answer {
        let sub = out.subscription;
        let Ok(endpoint) = reqwest::Url::parse(&sub.endpoint) else {
            return Answer::Refused(format!("the endpoint {:?} is not a URL", sub.endpoint));
        };
        let Ok(ua_public) = p256::PublicKey::from_sec1_bytes(&sub.p256dh) else {
            return Answer::Refused("the subscription's p256dh is not a P-256 point".into());
        };
        if sub.auth.len() != 16 {
            return Answer::Refused("the subscription's auth secret is not 16 bytes".into());
        }
        let auth = web_push_native::Auth::clone_from_slice(&sub.auth);
        let body = match web_push_native::encrypt(out.payload.to_vec(), &ua_public, &auth) {
            Ok(body) => body,
            Err(e) => return Answer::Refused(format!("encrypting the payload: {e}")),
        };
        let authorization = match self.vapid.authorization(&endpoint, &self.subject) {
            Ok(a) => a,
            Err(e) => return Answer::Refused(e.to_string()),
        };
        let request = self
            .http
            .post(endpoint)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header("TTL", out.ttl_secs.to_string())
            .header(
                "Urgency",
                match out.urgency {
                    Urgency::High => "high",
                    Urgency::Normal => "normal",
                },
            )
            .header("Topic", out.topic)
            .body(body);
        let response = match request.send().await {
            Ok(r) => r,
            // Timeouts and refused connections: the service may be back soon.
            Err(e) => return Answer::Retry { after: None, why: e.to_string() },
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => Answer::Delivered,
            404 | 410 => Answer::Gone,
            413 => Answer::TooLarge,
            429 | 500..=599 => Answer::Retry { after: retry_after(response.headers()), why: format!("HTTP {status}") },
            _ => {
                let text = response.text().await.unwrap_or_default();
                Answer::Refused(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>()))
            }
        }
    }
}
