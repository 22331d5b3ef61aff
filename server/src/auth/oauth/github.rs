//! GitHub sign-in: the OAuth web flow (with PKCE) for the code, then the REST
//! API for who it is: `GET /user` (the stable numeric id is the subject) and
//! `GET /user/emails` (the primary address, if GitHub verified it).

use std::time::Duration;

use async_trait::async_trait;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, PkceCodeVerifier, RedirectUrl, TokenResponse,
    TokenUrl,
};
use serde::Deserialize;

use super::{token_error, ClientCredentials, ClientSetup, GithubConfig, Grant, IdentityBackend, OAuthError, Provided};
use crate::domain::{Email, ExternalIdentity, IdentityProvider};

pub struct GitHub {
    client_id: ClientId,
    client_secret: ClientSecret,
    authorize_url: AuthUrl,
    token_url: TokenUrl,
    api_base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct UserEmail {
    email: String,
    primary: bool,
    verified: bool,
}

impl GitHub {
    pub(super) fn new(config: &GithubConfig, creds: ClientCredentials) -> Result<Self, String> {
        let allow = config.allow_http_loopback;
        let secret = "github.client_secret_file";
        crate::auth::http::validate_url("github", "authorize_url", &config.authorize_url, allow, secret, false)?;
        crate::auth::http::validate_url("github", "token_url", &config.token_url, allow, secret, false)?;
        crate::auth::http::validate_url("github", "api_base", &config.api_base, allow, secret, false)?;
        if config.timeout_ms == 0 {
            return Err("github.timeout_ms must be at least 1".into());
        }
        Ok(Self {
            client_id: ClientId::new(creds.id),
            client_secret: ClientSecret::new(creds.secret),
            authorize_url: AuthUrl::new(config.authorize_url.clone())
                .map_err(|e| format!("github.authorize_url: {e}"))?,
            token_url: TokenUrl::new(config.token_url.clone()).map_err(|e| format!("github.token_url: {e}"))?,
            api_base: config.api_base.trim_end_matches('/').to_owned(),
            http: crate::auth::http::client(Duration::from_millis(config.timeout_ms))?,
        })
    }

    /// `GET` of an API path with the person's token.
    async fn api<T: serde::de::DeserializeOwned>(&self, path: &str, token: &str) -> Result<T, OAuthError> {
        let unavailable = |e: reqwest::Error| OAuthError::Unavailable(format!("GitHub cannot be reached: {e}"));
        let response = self
            .http
            .get(format!("{}{path}", self.api_base))
            .bearer_auth(token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unavailable)?;
        match status.as_u16() {
            200 => serde_json::from_slice(&body)
                .map_err(|e| OAuthError::Unavailable(format!("GitHub's answer to {path} could not be read: {e}"))),
            401 => Err(OAuthError::Rejected("GitHub refused the access token".into())),
            403 | 429 | 500..=599 => {
                Err(OAuthError::Unavailable(format!("GitHub answered {status} to {path}; try again later")))
            }
            _ => Err(OAuthError::Rejected(format!("GitHub answered {status} to {path}"))),
        }
    }
}

#[async_trait]
impl IdentityBackend for GitHub {
    async fn client_setup(&self) -> Result<ClientSetup, OAuthError> {
        Ok(ClientSetup {
            authorization_endpoint: self.authorize_url.as_str().to_owned(),
            client_id: self.client_id.as_str().to_owned(),
            scopes: vec!["read:user".into(), "user:email".into()],
            uses_nonce: false,
        })
    }

    async fn identify(&self, grant: &Grant) -> Result<Provided, OAuthError> {
        let redirect = RedirectUrl::new(grant.redirect_uri.clone())
            .map_err(|_| OAuthError::Rejected("the redirect URI is not a URL".into()))?;
        // GitHub takes the client's credentials in the form.
        let client = BasicClient::new(self.client_id.clone())
            .set_client_secret(self.client_secret.clone())
            .set_auth_uri(self.authorize_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_redirect_uri(redirect)
            .set_auth_type(AuthType::RequestBody);
        let token = client
            .exchange_code(AuthorizationCode::new(grant.code.clone()))
            .set_pkce_verifier(PkceCodeVerifier::new(grant.code_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let access = token.access_token().secret();
        let user: User = self.api("/user", access).await?;
        let emails: Vec<UserEmail> = self.api("/user/emails", access).await?;
        let email =
            emails.iter().find(|e| e.primary && e.verified).and_then(|e| Email::parse(&e.email).ok()).ok_or_else(
                || OAuthError::Rejected("this GitHub account has no verified primary email address".into()),
            )?;
        Ok(Provided {
            identity: ExternalIdentity {
                provider: IdentityProvider::GitHub,
                subject: user.id.to_string(),
                email: Some(email),
            },
            display_name: Some(user.name.filter(|n| !n.trim().is_empty()).unwrap_or(user.login)),
        })
    }
}
