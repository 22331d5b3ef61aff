//! Google and GitHub sign-in for native clients (RFC 8252, PKCE RFC 7636).
//!
//! The client sends the person's browser to the provider and receives the
//! authorization code on a loopback redirect; natterd, which alone holds the
//! client secret, exchanges the code (with the client's PKCE verifier) and
//! checks who the provider says the person is. One module per provider:
//! [`google`] as OpenID Connect (discovery, the ID token's signature from the
//! provider's JWKS, `iss`, `aud`, `exp`, `nonce`, `email_verified`; any
//! OpenID provider with a configured issuer works the same), [`github`]
//! through GitHub's REST API (`/user`, `/user/emails`).
//!
//! Nothing here logs a code, a verifier, a token or the client secret.

pub mod github;
pub mod google;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{ExternalIdentity, IdentityProvider};

/// What a client needs to send a person to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSetup {
    pub authorization_endpoint: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// OpenID Connect: the client sends a nonce, found again in the ID token.
    pub uses_nonce: bool,
}

/// An authorization code as the client received it, with what proves the
/// client asked for it (the PKCE verifier) and binds it (the redirect URI,
/// the nonce).
#[derive(Clone)]
pub struct Grant {
    pub code: String,
    pub code_verifier: String,
    pub redirect_uri: String,
    pub nonce: String,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("redirect_uri", &self.redirect_uri).finish_non_exhaustive()
    }
}

/// Why a grant is refused before anything is sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct GrantError {
    pub field: &'static str,
    pub reason: &'static str,
}

impl Grant {
    /// Checks the pieces a client sends: the redirect URI is a loopback one
    /// (RFC 8252 §7.3: `http://127.0.0.1:PORT/…` or `http://[::1]:PORT/…`),
    /// the verifier is an RFC 7636 verifier, the nonce is there when the
    /// provider uses one.
    ///
    /// # Errors
    /// The field at fault.
    pub fn new(
        code: String,
        code_verifier: String,
        redirect_uri: String,
        nonce: String,
        uses_nonce: bool,
    ) -> Result<Self, GrantError> {
        let bad = |field, reason| Err(GrantError { field, reason });
        if code.is_empty() || code.len() > 2048 || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return bad("code", "missing, too long or not printable ASCII");
        }
        let verifier_ok = (43..=128).contains(&code_verifier.len())
            && code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !verifier_ok {
            return bad("code_verifier", "not an RFC 7636 verifier (43 to 128 of A-Z a-z 0-9 - . _ ~)");
        }
        if !is_loopback_redirect(&redirect_uri) {
            return bad("redirect_uri", "must be http://127.0.0.1:PORT/ or http://[::1]:PORT/ (RFC 8252 loopback)");
        }
        if uses_nonce && (nonce.is_empty() || nonce.len() > 255 || !nonce.bytes().all(|b| b.is_ascii_graphic())) {
            return bad("nonce", "missing, too long or not printable ASCII");
        }
        if !uses_nonce && !nonce.is_empty() {
            return bad("nonce", "this provider takes no nonce");
        }
        Ok(Self { code, code_verifier, redirect_uri, nonce })
    }
}

fn is_loopback_redirect(uri: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(uri) else { return false };
    let loopback_ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    url.scheme() == "http"
        && loopback_ip
        && url.port().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && url.query().is_none()
}

/// Who the provider says the person is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provided {
    /// Always with a verified email (a provider's unverified address is
    /// refused: it would name someone else's mailbox).
    pub identity: ExternalIdentity,
    pub display_name: Option<String>,
}

/// A provider's answer that does not let the person in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The code, the token or the claims did not check out: sign in again.
    #[error("{0}")]
    Rejected(String),
    /// The provider could not be reached or answered nonsense: retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// One identity provider.
#[async_trait]
pub trait IdentityBackend: Send + Sync {
    async fn client_setup(&self) -> Result<ClientSetup, OAuthError>;
    /// Exchanges the code and checks the answer.
    async fn identify(&self, grant: &Grant) -> Result<Provided, OAuthError>;
}

/// Google sign-in (`[google]`): enabled when `client_id` is set.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoogleConfig {
    /// The OAuth client of the Google Cloud project ("Desktop app" type).
    pub client_id: Option<String>,
    /// Its secret; prefer `client_secret_file`.
    pub client_secret: Option<String>,
    pub client_secret_file: Option<std::path::PathBuf>,
    /// The OpenID issuer (`/.well-known/openid-configuration` below it):
    /// Google's by default; any OpenID provider works.
    pub issuer: String,
    /// Bound on one request to the provider, in milliseconds.
    pub timeout_ms: u64,
    /// Allows an `http://` issuer on a loopback address (tests).
    pub allow_http_loopback: bool,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            issuer: "https://accounts.google.com".into(),
            timeout_ms: 10_000,
            allow_http_loopback: false,
        }
    }
}

/// GitHub sign-in (`[github]`): enabled when `client_id` is set.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// The GitHub OAuth app's client id.
    pub client_id: Option<String>,
    /// Its secret; prefer `client_secret_file`.
    pub client_secret: Option<String>,
    pub client_secret_file: Option<std::path::PathBuf>,
    pub authorize_url: String,
    pub token_url: String,
    /// The REST API (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_base: String,
    /// Bound on one request to GitHub, in milliseconds.
    pub timeout_ms: u64,
    /// Allows `http://` addresses on a loopback address (tests).
    pub allow_http_loopback: bool,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            authorize_url: "https://github.com/login/oauth/authorize".into(),
            token_url: "https://github.com/login/oauth/access_token".into(),
            api_base: "https://api.github.com".into(),
            timeout_ms: 10_000,
            allow_http_loopback: false,
        }
    }
}

macro_rules! redacted_debug {
    ($ty:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("client_id", &self.client_id)
                    .field("client_secret", &self.client_secret.as_ref().map(|_| "<redacted>"))
                    .field("client_secret_file", &self.client_secret_file)
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}
redacted_debug!(GoogleConfig, issuer, timeout_ms, allow_http_loopback);
redacted_debug!(GithubConfig, authorize_url, token_url, api_base, timeout_ms, allow_http_loopback);

/// The client of one provider, as configured.
struct ClientCredentials {
    id: String,
    secret: String,
}

/// Checks the client id and reads the secret (`table` is `google` or `github`).
fn credentials(
    table: &str,
    id: &Option<String>,
    secret: &Option<String>,
    secret_file: &Option<std::path::PathBuf>,
) -> Result<Option<ClientCredentials>, String> {
    let Some(id) = id else {
        return match (secret, secret_file) {
            (None, None) => Ok(None),
            _ => Err(format!("{table}.client_secret is set but {table}.client_id is not")),
        };
    };
    if id.trim().is_empty() || id.len() > 512 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{table}.client_id must be printable ASCII without spaces"));
    }
    let secret = crate::auth::http::read_secret(
        table,
        ("client_secret", secret.as_ref()),
        ("client_secret_file", secret_file.as_deref()),
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(ClientCredentials { id: id.clone(), secret }))
}

/// The configured providers.
#[derive(Clone, Default)]
pub struct Providers {
    google: Option<Arc<dyn IdentityBackend>>,
    github: Option<Arc<dyn IdentityBackend>>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("google", &self.google.is_some())
            .field("github", &self.github.is_some())
            .finish()
    }
}

impl Providers {
    /// Builds the configured providers (reading their secret files). Nothing
    /// is fetched yet: a provider that is down does not stop natterd.
    ///
    /// # Errors
    /// A message naming the key at fault (never a secret).
    pub fn from_config(google: &GoogleConfig, github: &GithubConfig) -> Result<Self, String> {
        let mut providers = Self::default();
        if let Some(creds) =
            credentials("google", &google.client_id, &google.client_secret, &google.client_secret_file)?
        {
            providers.google = Some(Arc::new(google::Google::new(google, creds)?));
        }
        if let Some(creds) =
            credentials("github", &github.client_id, &github.client_secret, &github.client_secret_file)?
        {
            providers.github = Some(Arc::new(github::GitHub::new(github, creds)?));
        }
        Ok(providers)
    }

    pub fn get(&self, provider: IdentityProvider) -> Option<&Arc<dyn IdentityBackend>> {
        match provider {
            IdentityProvider::Google => self.google.as_ref(),
            IdentityProvider::GitHub => self.github.as_ref(),
        }
    }
}

/// The provider's own words for an error, for people, without secrets: an
/// OAuth error code and description, or a short excerpt of a body.
fn describe_error_body(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
        error_description: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => match e.error_description {
            Some(d) => format!("{}: {}", e.error, d.chars().take(200).collect::<String>()),
            None => e.error,
        },
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// The token endpoint's answer as an [`OAuthError`].
fn token_error<RE, T>(e: oauth2::RequestTokenError<RE, T>) -> OAuthError
where
    RE: std::error::Error + 'static,
    T: oauth2::ErrorResponse + 'static,
{
    match e {
        oauth2::RequestTokenError::ServerResponse(r) => {
            OAuthError::Rejected(format!("the provider refused the code: {r}"))
        }
        oauth2::RequestTokenError::Parse(_, body) => {
            // GitHub answers errors with 200 and an error object.
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.get("error").is_some()) {
                OAuthError::Rejected(format!("the provider refused the code: {}", describe_error_body(&body)))
            } else {
                OAuthError::Unavailable("the provider's token answer could not be read".into())
            }
        }
        oauth2::RequestTokenError::Request(e) => {
            OAuthError::Unavailable(format!("the provider cannot be reached: {e}"))
        }
        oauth2::RequestTokenError::Other(e) => OAuthError::Unavailable(format!("the provider's answer: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn grant(redirect: &str) -> Result<Grant, GrantError> {
        Grant::new("4/abc".into(), VERIFIER.into(), redirect.into(), "n-0S6_WzA2Mj".into(), true)
    }

    #[test]
    fn only_loopback_ip_redirects_with_a_port_are_accepted() {
        assert!(grant("http://127.0.0.1:49152/").is_ok());
        assert!(grant("http://[::1]:49152/cb").is_ok());
        for bad in [
            "https://127.0.0.1:49152/",
            "http://localhost:49152/",
            "http://127.0.0.1/",
            "http://example.org:8080/",
            "http://10.0.0.1:8080/",
            "http://127.0.0.1:8080/?x=1",
            "http://u:p@127.0.0.1:8080/",
            "natter://callback",
            "",
        ] {
            assert_eq!(grant(bad).unwrap_err().field, "redirect_uri", "{bad}");
        }
    }

    #[test]
    fn verifiers_nonces_and_codes_are_checked() {
        let ok = "http://127.0.0.1:5000/";
        let g =
            |code: &str, v: &str, nonce: &str, uses| Grant::new(code.into(), v.into(), ok.into(), nonce.into(), uses);
        assert_eq!(g("c", "short", "n", true).unwrap_err().field, "code_verifier");
        assert_eq!(g("c", &"a".repeat(129), "n", true).unwrap_err().field, "code_verifier");
        assert_eq!(g("c", &format!("{}+", &VERIFIER[..43]), "n", true).unwrap_err().field, "code_verifier");
        assert_eq!(g("", VERIFIER, "n", true).unwrap_err().field, "code");
        assert_eq!(g("a b", VERIFIER, "n", true).unwrap_err().field, "code");
        assert_eq!(g("c", VERIFIER, "", true).unwrap_err().field, "nonce");
        assert_eq!(g("c", VERIFIER, "n", false).unwrap_err().field, "nonce");
        assert!(g("c", VERIFIER, "", false).is_ok());
    }

    #[test]
    fn a_grant_never_shows_its_code_or_verifier() {
        let shown = format!("{:?}", grant("http://127.0.0.1:5000/").unwrap());
        assert!(!shown.contains("4/abc") && !shown.contains(VERIFIER), "{shown}");
    }

    #[test]
    fn a_secret_without_a_client_and_a_client_without_a_secret_are_refused() {
        let mut c = GithubConfig { client_secret: Some("s".into()), ..GithubConfig::default() };
        assert!(Providers::from_config(&GoogleConfig::default(), &c).unwrap_err().contains("client_id"));
        c = GithubConfig { client_id: Some("Iv1.abc".into()), ..GithubConfig::default() };
        let e = Providers::from_config(&GoogleConfig::default(), &c).unwrap_err();
        assert!(e.contains("github.client_secret_file"), "{e}");
        let with_secret = GoogleConfig {
            client_id: Some("id".into()),
            client_secret: Some("hunter2-secret".into()),
            ..GoogleConfig::default()
        };
        assert!(!format!("{with_secret:?}").contains("hunter2"));
    }

    #[test]
    fn provider_error_bodies_are_described_briefly() {
        let d = describe_error_body(
            br#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}"#,
        );
        assert_eq!(d, "bad_verification_code: The code passed is incorrect or expired.");
        assert_eq!(describe_error_body(b"<html>oops"), "<html>oops");
    }
}
