//! Google sign-in as OpenID Connect (and so any OpenID provider whose issuer
//! is configured): the provider's metadata and keys come from discovery,
//! fetched when first needed and again after an hour or when an ID token is
//! signed with a key natterd has not seen (the provider rotated its keys).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use openidconnect::core::{CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl, Nonce, PkceCodeVerifier,
    RedirectUrl, TokenResponse,
};

use super::{token_error, ClientCredentials, ClientSetup, GoogleConfig, Grant, IdentityBackend, OAuthError, Provided};
use crate::domain::{Email, ExternalIdentity, IdentityProvider};

/// How long discovered metadata (and keys) are used before asking again.
const METADATA_TTL: Duration = Duration::from_secs(3600);

pub struct Google {
    client_id: ClientId,
    client_secret: ClientSecret,
    issuer: IssuerUrl,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

impl Google {
    pub(super) fn new(config: &GoogleConfig, creds: ClientCredentials) -> Result<Self, String> {
        crate::auth::http::validate_url(
            "google",
            "issuer",
            &config.issuer,
            config.allow_http_loopback,
            "google.client_secret_file",
            false,
        )?;
        if config.timeout_ms == 0 {
            return Err("google.timeout_ms must be at least 1".into());
        }
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| format!("google.issuer: {e}"))?;
        Ok(Self {
            client_id: ClientId::new(creds.id),
            client_secret: ClientSecret::new(creds.secret),
            issuer,
            http: crate::auth::http::client(Duration::from_millis(config.timeout_ms))?,
            metadata: tokio::sync::Mutex::new(None),
        })
    }

    /// The provider's metadata and keys: cached, or discovered again when
    /// `refresh` or older than [`METADATA_TTL`].
    async fn metadata(&self, refresh: bool) -> Result<CoreProviderMetadata, OAuthError> {
        let mut cached = self.metadata.lock().await;
        if let Some((metadata, at)) = cached.as_ref() {
            if !refresh && at.elapsed() < METADATA_TTL {
                return Ok(metadata.clone());
            }
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http).await.map_err(|e| {
            tracing::warn!(issuer = %self.issuer.as_str(), error = %e, "OpenID discovery failed");
            OAuthError::Unavailable(format!("the sign-in provider cannot be reached: {e}"))
        })?;
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }
}

#[async_trait]
impl IdentityBackend for Google {
    async fn client_setup(&self) -> Result<ClientSetup, OAuthError> {
        let metadata = self.metadata(false).await?;
        Ok(ClientSetup {
            authorization_endpoint: metadata.authorization_endpoint().as_str().to_owned(),
            client_id: self.client_id.as_str().to_owned(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            uses_nonce: true,
        })
    }

    async fn identify(&self, grant: &Grant) -> Result<Provided, OAuthError> {
        let redirect = RedirectUrl::new(grant.redirect_uri.clone())
            .map_err(|_| OAuthError::Rejected("the redirect URI is not a URL".into()))?;
        let client = |metadata| {
            CoreClient::from_provider_metadata(metadata, self.client_id.clone(), Some(self.client_secret.clone()))
                .set_redirect_uri(redirect.clone())
        };
        let first = client(self.metadata(false).await?);
        let token = first
            .exchange_code(AuthorizationCode::new(grant.code.clone()))
            .map_err(|e| OAuthError::Unavailable(format!("the provider's metadata has no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(grant.code_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token =
            token.id_token().ok_or_else(|| OAuthError::Rejected("the provider's answer has no ID token".into()))?;
        let nonce = Nonce::new(grant.nonce.clone());
        let checked = id_token.claims(&first.id_token_verifier(), &nonce).cloned();
        let claims = match checked {
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                // Perhaps signed with a key published since: look again, once.
                let fresh = client(self.metadata(true).await?);
                let verifier = fresh.id_token_verifier();
                let again = id_token.claims(&verifier, &nonce).cloned();
                again
            }
            other => other,
        }
        .map_err(|e| OAuthError::Rejected(format!("the ID token does not check out: {e}")))?;
        if claims.email_verified() != Some(true) {
            return Err(OAuthError::Rejected("the provider has not verified this account's email address".into()));
        }
        let email = claims
            .email()
            .and_then(|e| Email::parse(e.as_str()).ok())
            .ok_or_else(|| OAuthError::Rejected("the ID token carries no usable email address".into()))?;
        let display_name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned());
        Ok(Provided {
            identity: ExternalIdentity {
                provider: IdentityProvider::Google,
                subject: claims.subject().as_str().to_owned(),
                email: Some(email),
            },
            display_name,
        })
    }
}
