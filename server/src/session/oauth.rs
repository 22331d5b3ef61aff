//! Google and GitHub on the control stream: the client's setup, signing in
//! (which makes an account on first use), and linking and unlinking an
//! identity to the signed-in account.
//!
//! An identity is bound to an account by (provider, subject), claimed in its
//! own `identity:` stream so it belongs to one account at a time on every
//! node. It is never bound to an existing account because the provider's
//! email matches one: that would hand the account to whoever controls the
//! identity. The owner links it explicitly, signed in.

use natter_proto::wire::{self, response::Result as Reply};
use natter_proto::ErrorCode;
use uuid::Uuid;

use super::account_security::WayIn;
use super::{Identity, Service, WireError};
use crate::auth::oauth::{Grant, IdentityBackend, OAuthError, Provided};
use crate::domain::{account, AccountOpened, Event, IdentityProvider, UserId};
use crate::store::{AppendError, ExpectedVersion, IdentityRecord, NewEvent, StreamAppend, StreamName, UserRecord};

/// The display name of an account whose provider gave none.
const NO_NAME: &str = "natter user";

fn provider_of(raw: i32) -> Result<IdentityProvider, WireError> {
    match wire::OAuthProvider::try_from(raw) {
        Ok(wire::OAuthProvider::Google) => Ok(IdentityProvider::Google),
        Ok(wire::OAuthProvider::Github) => Ok(IdentityProvider::GitHub),
        _ => Err(super::invalid("provider", "GOOGLE or GITHUB")),
    }
}

pub(super) fn wire_provider(p: IdentityProvider) -> wire::OAuthProvider {
    match p {
        IdentityProvider::Google => wire::OAuthProvider::Google,
        IdentityProvider::GitHub => wire::OAuthProvider::Github,
    }
}

fn oauth_error(e: OAuthError) -> WireError {
    match e {
        OAuthError::Rejected(why) => {
            tracing::info!(reason = %why, "an OAuth sign-in was refused");
            WireError::new(ErrorCode::OAUTH_REJECTED, format!("{why}; sign in again"))
        }
        OAuthError::Unavailable(why) => {
            tracing::warn!(reason = %why, "an identity provider is unavailable");
            let mut e = WireError::new(ErrorCode::UNAVAILABLE, "the sign-in provider cannot be reached; retry");
            e.retry_after_ms = 5_000;
            e
        }
    }
}

fn linked(record: &IdentityRecord) -> wire::LinkedIdentity {
    wire::LinkedIdentity {
        provider: wire_provider(record.provider) as i32,
        email: super::convert::email_text(&record.email),
        linked_at_ms: record.linked_at.0,
    }
}

/// The grant fields of OAuthLogin and LinkIdentity.
struct GrantRequest {
    provider: i32,
    code: String,
    code_verifier: String,
    redirect_uri: String,
    nonce: String,
}

impl Service {
    fn backend(&self, raw: i32) -> Result<(IdentityProvider, &dyn IdentityBackend), WireError> {
        let provider = provider_of(raw)?;
        let backend = self.security.oauth.get(provider).ok_or_else(|| {
            WireError::new(ErrorCode::NOT_FOUND, format!("this server has no {} sign-in configured", provider.title()))
        })?;
        Ok((provider, backend.as_ref()))
    }

    pub(super) async fn oauth_config(&self, req: wire::GetOAuthConfig) -> Result<Reply, WireError> {
        let (provider, backend) = self.backend(req.provider)?;
        let setup = backend.client_setup().await.map_err(oauth_error)?;
        Ok(Reply::OauthConfig(wire::OAuthConfig {
            provider: wire_provider(provider) as i32,
            authorization_endpoint: setup.authorization_endpoint,
            client_id: setup.client_id,
            scopes: setup.scopes,
            uses_nonce: setup.uses_nonce,
        }))
    }

    /// Exchanges the client's code and checks who the provider says it is.
    async fn identify(&self, req: GrantRequest) -> Result<Provided, WireError> {
        let (_, backend) = self.backend(req.provider)?;
        let uses_nonce = backend.client_setup().await.map_err(oauth_error)?.uses_nonce;
        let grant = Grant::new(req.code, req.code_verifier, req.redirect_uri, req.nonce, uses_nonce)
            .map_err(|e| super::invalid(e.field, e.reason))?;
        backend.identify(&grant).await.map_err(oauth_error)
    }

    pub(super) async fn oauth_login(
        &self,
        req: wire::OAuthLogin,
        remote: std::net::IpAddr,
    ) -> Result<(String, Identity), WireError> {
        self.throttle_address(remote).await?;
        account::check_name("device_name", req.device_name.trim())?;
        let device_name = req.device_name.clone();
        let provided = self
            .identify(GrantRequest {
                provider: req.provider,
                code: req.code,
                code_verifier: req.code_verifier,
                redirect_uri: req.redirect_uri,
                nonce: req.nonce,
            })
            .await?;
        let provider = provided.identity.provider;
        let method = provider.sign_in_method();
        // Twice at most: a first sign-in racing another one for the same
        // identity finds the account the other made.
        for _ in 0..2 {
            if let Some(user) = self.store.user_by_identity(provider, &provided.identity.subject).await? {
                return self.first_factor_passed(&user, &device_name, method, remote).await;
            }
            if let Some(user) = self.open_account(&provided).await? {
                return self.first_factor_passed(&user, &device_name, method, remote).await;
            }
        }
        Err(WireError::new(ErrorCode::CONFLICT, "the account was being changed; sign in again"))
    }

    /// Makes an account for a first sign-in: the provider's verified email,
    /// claimed like a signup's, and the identity. `None` when another sign-in
    /// claimed the identity first.
    async fn open_account(&self, provided: &Provided) -> Result<Option<UserRecord>, WireError> {
        let identity = &provided.identity;
        let email = identity
            .email
            .clone()
            .ok_or_else(|| WireError::new(ErrorCode::OAUTH_REJECTED, "the provider gave no verified email"))?;
        let not_linked = || {
            WireError::new(
                ErrorCode::IDENTITY_NOT_LINKED,
                format!(
                    "an account already uses {email}: sign in to it another way and link {} to it",
                    identity.provider.title()
                ),
            )
        };
        if self.store.user_by_email(&email).await?.is_some() {
            return Err(not_linked());
        }
        let Ok(claim) = self.claim_of(&StreamName::identity(identity.provider, &identity.subject)).await? else {
            return Ok(None);
        };
        let display_name = provided
            .display_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty() && account::check_name("display_name", n).is_ok())
            .unwrap_or(NO_NAME)
            .to_owned();
        let user_id = UserId(Uuid::new_v4());
        let at = self.now();
        let opened = AccountOpened { user_id, display_name, email: Some(email.clone()), email_verified: true, at };
        let identity_stream = StreamName::identity(identity.provider, &identity.subject);
        let appends = vec![
            StreamAppend::new(
                StreamName::email(&email),
                ExpectedVersion::NoStream,
                vec![NewEvent::fresh(Event::EmailClaimed { user_id, at })],
            ),
            StreamAppend::new(
                identity_stream.clone(),
                claim,
                vec![NewEvent::fresh(Event::IdentityClaimed { user_id, at })],
            ),
            StreamAppend::new(
                StreamName::user(user_id),
                ExpectedVersion::NoStream,
                vec![
                    NewEvent::fresh(Event::AccountOpened(opened)),
                    NewEvent::fresh(Event::IdentityLinked { user_id, identity: identity.clone(), at }),
                ],
            ),
        ];
        match self.store.append(appends).await {
            Ok(_) => {}
            Err(AppendError::WrongExpectedVersion { stream, .. }) if stream == identity_stream => return Ok(None),
            Err(AppendError::WrongExpectedVersion { .. }) => return Err(not_linked()),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(%user_id, provider = identity.provider.as_str(), "account opened by an identity provider");
        Ok(Some(self.user(user_id).await?))
    }

    pub(super) async fn link_identity(&self, me: &Identity, req: wire::LinkIdentity) -> Result<Reply, WireError> {
        let provided = self
            .identify(GrantRequest {
                provider: req.provider,
                code: req.code,
                code_verifier: req.code_verifier,
                redirect_uri: req.redirect_uri,
                nonce: req.nonce,
            })
            .await?;
        let identity = provided.identity;
        let title = identity.provider.title();
        let taken =
            || WireError::new(ErrorCode::IDENTITY_TAKEN, format!("this {title} identity belongs to another account"));
        let mine = self.store.identities_of(me.user_id).await?;
        if let Some(record) = mine.iter().find(|r| r.provider == identity.provider) {
            if record.subject == identity.subject {
                // Linked already: asking again changes nothing.
                return Ok(Reply::IdentityLinked(linked(record)));
            }
            return Err(super::invalid("provider", "another identity of this provider is linked: unlink it first"));
        }
        let claim = match self.claim_of(&StreamName::identity(identity.provider, &identity.subject)).await? {
            Ok(claim) => claim,
            Err(holder) if holder == me.user_id => {
                return Err(WireError::new(ErrorCode::CONFLICT, "the identity is being linked; try again"))
            }
            Err(_) => return Err(taken()),
        };
        let at = self.now();
        let identity_stream = StreamName::identity(identity.provider, &identity.subject);
        let appends = vec![
            StreamAppend::new(
                identity_stream.clone(),
                claim,
                vec![NewEvent::fresh(Event::IdentityClaimed { user_id: me.user_id, at })],
            ),
            StreamAppend::new(
                StreamName::user(me.user_id),
                ExpectedVersion::Any,
                vec![NewEvent::fresh(Event::IdentityLinked { user_id: me.user_id, identity: identity.clone(), at })],
            ),
        ];
        match self.store.append(appends).await {
            Ok(_) => {}
            Err(AppendError::WrongExpectedVersion { stream, .. }) if stream == identity_stream => return Err(taken()),
            Err(e) => return Err(e.into()),
        }
        Ok(Reply::IdentityLinked(wire::LinkedIdentity {
            provider: wire_provider(identity.provider) as i32,
            email: super::convert::email_text(&identity.email),
            linked_at_ms: at.0,
        }))
    }

    pub(super) async fn unlink_identity(&self, me: &Identity, req: wire::UnlinkIdentity) -> Result<Reply, WireError> {
        let provider = provider_of(req.provider)?;
        let user_stream = StreamName::user(me.user_id);
        let (version, ways) = self.ways_in(me.user_id).await?;
        let mine = self.store.identities_of(me.user_id).await?;
        let record = mine.iter().find(|r| r.provider == provider).ok_or_else(|| {
            WireError::new(ErrorCode::NOT_FOUND, format!("no {} identity is linked to this account", provider.title()))
        })?;
        super::account_security::refuse_last_way(&ways, WayIn::Identity(provider), provider.title())?;
        let identity_stream = StreamName::identity(provider, &record.subject);
        let claimed = self.last_event(&identity_stream).await?.map_or(0, |(v, _)| v);
        let at = self.now();
        let appends = vec![
            StreamAppend::new(
                identity_stream,
                ExpectedVersion::Exact(claimed),
                vec![NewEvent::fresh(Event::IdentityReleased { user_id: me.user_id, at })],
            ),
            StreamAppend::new(
                user_stream,
                ExpectedVersion::Exact(version),
                vec![NewEvent::fresh(Event::IdentityUnlinked {
                    user_id: me.user_id,
                    provider,
                    subject: record.subject.clone(),
                    at,
                })],
            ),
        ];
        match self.store.append(appends).await {
            Ok(_) => {}
            Err(AppendError::WrongExpectedVersion { .. }) => {
                return Err(WireError::new(ErrorCode::CONFLICT, "the account changed meanwhile; try again"))
            }
            Err(e) => return Err(e.into()),
        }
        self.list_identities(me).await
    }

    pub(super) async fn list_identities(&self, me: &Identity) -> Result<Reply, WireError> {
        let mine = self.store.identities_of(me.user_id).await?;
        Ok(Reply::Identities(wire::IdentityList { identities: mine.iter().map(linked).collect() }))
    }
}
