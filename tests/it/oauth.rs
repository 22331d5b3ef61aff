//! Google and GitHub sign-in through the protocol, driven through the real
//! `natter` client code: the client asks natterd for the provider's setup,
//! builds the authorization URL with PKCE, `state` and a nonce, and waits on
//! its loopback listener; a "browser" (the harness's `browse`) approves at the
//! provider, which redirects to the listener; natterd exchanges the code and
//! checks the answer. Google is a real OpenID provider (`oauth2-mock-server`,
//! with Google's checks added); GitHub is a fake of its OAuth and REST API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_client::oauth::{self, Grant};
use natter_client::proto::{self, OAuthProvider};
use natter_client::{Client, ClientError};
use natter_proto::ErrorCode;
use natter_server::auth::oauth::{GithubConfig, GoogleConfig};
use natter_tests::github_fake::{GithubEmail, GithubFake, GithubUser};
use natter_tests::oidc_provider::{browse, OidcProvider, OidcUser, Tamper};
use natter_tests::{TestServer, PASSWORD};

pub(crate) const CLIENT_ID: &str = "natter-test.apps.example.org";
pub(crate) const CLIENT_SECRET: &str = "GOCSPX-test-secret-never-logged";
const WAIT: Duration = Duration::from_secs(20);

pub(crate) fn google_config(provider: &OidcProvider) -> GoogleConfig {
    GoogleConfig {
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        issuer: provider.issuer(),
        allow_http_loopback: true,
        ..GoogleConfig::default()
    }
}

pub(crate) fn github_config(fake: &GithubFake) -> GithubConfig {
    GithubConfig {
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        authorize_url: format!("{}/login/oauth/authorize", fake.base_url()),
        token_url: format!("{}/login/oauth/access_token", fake.base_url()),
        api_base: fake.api_url(),
        allow_http_loopback: true,
        ..GithubConfig::default()
    }
}

/// What a person does: the client opens the provider's page, the person
/// approves in their browser, the client takes the redirect.
async fn authorize(client: &Client, provider: OAuthProvider) -> Grant {
    let config = client.oauth_config(provider).await.expect("the provider's setup");
    let pending = oauth::begin(&config).await.expect("a loopback listener");
    let url = pending.url().to_owned();
    let browser = tokio::spawn(async move { browse(&url).await });
    let grant = pending.wait(WAIT).await.expect("the redirect");
    let page = browser.await.unwrap().expect("the browser got the listener's page");
    assert!(page.to_lowercase().contains("close"), "{page}");
    grant
}

fn user(sub: &str, email: &str, name: &str) -> OidcUser {
    OidcUser { sub: sub.into(), email: email.into(), name: name.into(), email_verified: true }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn google_signs_in_makes_an_account_once_and_never_joins_one_by_email() {
    let idp = OidcProvider::start(CLIENT_ID, CLIENT_SECRET).await;
    let google = google_config(&idp);
    let server = TestServer::start_with(move |c| c.google = google).await;

    // The setup comes from the provider's discovery document.
    let c = server.client().await;
    let setup = c.oauth_config(OAuthProvider::Google).await.unwrap();
    assert_eq!(setup.client_id, CLIENT_ID);
    assert_eq!(setup.authorization_endpoint, format!("{}/authorize", idp.issuer()));
    assert!(setup.uses_nonce && setup.scopes.contains(&"openid".to_owned()));

    // A first sign-in makes the account: the provider's verified email and name.
    idp.set_user(user("108234", "dana@example.com", "Dana Scully")).await;
    let grant = authorize(&c, OAuthProvider::Google).await;
    assert!(!grant.nonce.is_empty() && grant.redirect_uri.starts_with("http://127.0.0.1:"));
    let (token, dana) = c.oauth_login(&grant, "laptop").await.unwrap();
    assert_eq!((dana.email.as_str(), dana.display_name.as_str()), ("dana@example.com", "Dana Scully"));
    let sessions = c.sessions().await.unwrap();
    assert_eq!((sessions[0].method.as_str(), sessions[0].device_name.as_str()), ("google", "laptop"));
    let linked = c.identities().await.unwrap();
    assert_eq!(linked.len(), 1);
    assert_eq!((linked[0].provider, linked[0].email.as_str()), (OAuthProvider::Google as i32, "dana@example.com"));
    // The session is a real one: it resumes.
    assert_eq!(server.resume(&token).await.identity().unwrap().user_id, dana.user_id);
    // Signing in again is the same account, on a new device.
    let again = server.client().await;
    let grant = authorize(&again, OAuthProvider::Google).await;
    let (_, back) = again.oauth_login(&grant, "phone").await.unwrap();
    assert_eq!(back.user_id, dana.user_id);
    // No password: a password login fails the way a wrong password does.
    let e = server.client().await.login("dana@example.com", PASSWORD, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_CREDENTIALS), "{e}");

    // Bob has a password account; a Google identity with his email does not get it.
    let (bob, _) = server.new_user("bob@example.org").await;
    idp.set_user(user("200777", "bob@example.org", "Not Bob")).await;
    let stranger = server.client().await;
    let grant = authorize(&stranger, OAuthProvider::Google).await;
    let e = stranger.oauth_login(&grant, "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::IDENTITY_NOT_LINKED), "{e}");
    assert!(e.to_string().contains("bob@example.org"), "{e}");
    assert!(stranger.identity().is_none(), "not signed in");
    // Bob links it himself, signed in; then it signs in to his account.
    let grant = authorize(&bob, OAuthProvider::Google).await;
    let l = bob.link_identity(&grant).await.unwrap();
    assert_eq!((l.provider, l.email.as_str()), (OAuthProvider::Google as i32, "bob@example.org"));
    let grant = authorize(&stranger, OAuthProvider::Google).await;
    let (_, who) = stranger.oauth_login(&grant, "x").await.unwrap();
    assert_eq!(who.user_id, bob.identity().unwrap().user_id);
    // Dana's identity cannot be linked to Bob's account too.
    idp.set_user(user("108234", "dana@example.com", "Dana Scully")).await;
    let (carol, _) = server.new_user("carol@example.org").await;
    let grant = authorize(&carol, OAuthProvider::Google).await;
    let e = carol.link_identity(&grant).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::IDENTITY_TAKEN), "{e}");
    // Bob has a Google identity already: another one is refused until he unlinks.
    let grant = authorize(&bob, OAuthProvider::Google).await;
    let e = bob.link_identity(&grant).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{e}");
    // Dana's only way in is Google: it cannot be unlinked.
    let e = c.unlink_identity(OAuthProvider::Google).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LAST_SIGN_IN_METHOD), "{e}");
    // Bob has a password: he can, and then the identity is free for Carol.
    assert!(bob.unlink_identity(OAuthProvider::Google).await.unwrap().is_empty());
    idp.set_user(user("200777", "bob@example.org", "Not Bob")).await;
    let grant = authorize(&carol, OAuthProvider::Google).await;
    carol.link_identity(&grant).await.unwrap();
    let e = bob.unlink_identity(OAuthProvider::Google).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NOT_FOUND), "nothing linked: {e}");
}

#[tokio::test]
async fn google_answers_that_do_not_check_out_are_refused() {
    let idp = OidcProvider::start(CLIENT_ID, CLIENT_SECRET).await;
    let google = google_config(&idp);
    let server = TestServer::start_with(move |c| c.google = google).await;
    idp.set_user(user("31337", "eve@example.com", "Eve")).await;
    let c = server.client().await;
    let rejected = |e: ClientError, what: &str| {
        assert_eq!(e.code(), Some(ErrorCode::OAUTH_REJECTED), "{what}: {e}");
    };
    for (what, tamper) in [
        ("another nonce", Tamper { nonce: Some("someone-elses-nonce".into()), ..Tamper::default() }),
        ("an expired token", Tamper { expired: true, ..Tamper::default() }),
        ("a token for another client", Tamper { aud: Some("another-client".into()), ..Tamper::default() }),
        ("an unverified email", Tamper { email_verified: Some(false), ..Tamper::default() }),
    ] {
        let grant = authorize(&c, OAuthProvider::Google).await;
        idp.tamper_next_token(tamper).await;
        rejected(c.oauth_login(&grant, "d").await.unwrap_err(), what);
    }
    // A code is good once: replayed, the provider refuses it.
    let grant = authorize(&c, OAuthProvider::Google).await;
    let e = c.oauth_login(&Grant { code_verifier: "x".repeat(43), ..grant.clone() }, "d").await.unwrap_err();
    rejected(e, "a verifier that is not the one of the challenge");
    let grant = authorize(&c, OAuthProvider::Google).await;
    let other = server.client().await;
    other.oauth_login(&grant, "d").await.unwrap();
    rejected(c.oauth_login(&grant, "d").await.unwrap_err(), "a replayed code");
    // Checked before anything goes to the provider.
    let grant = authorize(&c, OAuthProvider::Google).await;
    for (field, bad) in [
        ("redirect_uri", Grant { redirect_uri: "https://evil.example/cb".into(), ..grant.clone() }),
        ("code_verifier", Grant { code_verifier: "short".into(), ..grant.clone() }),
        ("nonce", Grant { nonce: String::new(), ..grant.clone() }),
    ] {
        let e = c.oauth_login(&bad, "d").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{field}: {e}");
    }
    // The refused attempts made no account; the good grant still works.
    assert!(c.identity().is_none());
    let (_, eve) = c.oauth_login(&grant, "d").await.unwrap();
    assert_eq!(eve.email, "eve@example.com");
    // Signed in, a second sign-in on the connection is refused.
    let e = c.oauth_login(&grant, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ALREADY_AUTHENTICATED), "{e}");
    // TOTP on: the provider is the first factor only.
    let setup = c.enable_totp().await.unwrap();
    let secret = natter_tests::totp_secret(&setup.secret_base32);
    c.confirm_totp(&natter_server::auth::totp::code_at(&secret, now_secs())).await.unwrap();
    let d = server.client().await;
    let grant = authorize(&d, OAuthProvider::Google).await;
    match d.oauth_login(&grant, "d2").await {
        Err(ClientError::MfaRequired { .. }) => {}
        other => panic!("expected MFA_REQUIRED, got {other:?}"),
    }
}

#[tokio::test]
async fn github_signs_in_through_its_api_and_unlinks_while_another_way_remains() {
    let fake = GithubFake::start(CLIENT_ID, CLIENT_SECRET).await;
    let idp = OidcProvider::start(CLIENT_ID, CLIENT_SECRET).await;
    let (github, google) = (github_config(&fake), google_config(&idp));
    let server = TestServer::start_with(move |c| {
        c.github = github;
        c.google = google;
    })
    .await;
    let c = server.client().await;
    let setup = c.oauth_config(OAuthProvider::Github).await.unwrap();
    assert!(!setup.uses_nonce && setup.scopes.contains(&"user:email".to_owned()));

    // A GitHub account without a verified primary email is not enough.
    fake.set_user(GithubUser {
        id: 4242,
        login: "hubot".into(),
        name: None,
        emails: vec![GithubEmail { email: "hubot@example.com".into(), primary: true, verified: false }],
        ..GithubUser::default()
    });
    let grant = authorize(&c, OAuthProvider::Github).await;
    assert!(grant.nonce.is_empty());
    let e = c.oauth_login(&grant, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OAUTH_REJECTED), "{e}");

    fake.set_user(GithubUser {
        id: 583231,
        login: "octocat".into(),
        name: Some("The Octocat".into()),
        emails: vec![
            GithubEmail { email: "old@example.com".into(), primary: false, verified: true },
            GithubEmail { email: "octocat@example.com".into(), primary: true, verified: true },
        ],
        ..GithubUser::default()
    });
    let grant = authorize(&c, OAuthProvider::Github).await;
    let (_, octo) = c.oauth_login(&grant, "laptop").await.unwrap();
    assert_eq!((octo.email.as_str(), octo.display_name.as_str()), ("octocat@example.com", "The Octocat"));
    assert_eq!(c.sessions().await.unwrap()[0].method, "github");
    // natterd sent what GitHub needs: the secret and the verifier in the form,
    // a User-Agent and the token on the API calls.
    let requests = fake.requests();
    let exchange = requests.iter().rev().find(|r| r.path == "/login/oauth/access_token").unwrap();
    assert_eq!(exchange.field("client_secret"), Some(CLIENT_SECRET));
    assert_eq!(exchange.field("code_verifier"), Some(grant.code_verifier.as_str()));
    assert_eq!(exchange.field("redirect_uri"), Some(grant.redirect_uri.as_str()));
    let emails = requests.iter().rev().find(|r| r.path == "/api/user/emails").unwrap();
    assert!(emails.header("user-agent").is_some_and(|ua| ua.starts_with("natter/")));
    assert!(emails.header("authorization").is_some_and(|a| a.starts_with("Bearer gho_")));
    // A replayed code: GitHub answers 200 with an error object.
    let e = server.client().await.oauth_login(&grant, "d").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::OAUTH_REJECTED), "{e}");
    assert!(e.to_string().contains("bad_verification_code"), "{e}");

    // GitHub is the only way in; with Google linked too, GitHub may go.
    assert_eq!(
        c.unlink_identity(OAuthProvider::Github).await.unwrap_err().code(),
        Some(ErrorCode::LAST_SIGN_IN_METHOD)
    );
    idp.set_user(user("77", "octocat@gmail.example", "Octo")).await;
    let grant = authorize(&c, OAuthProvider::Google).await;
    c.link_identity(&grant).await.unwrap();
    let left = c.unlink_identity(OAuthProvider::Github).await.unwrap();
    assert_eq!(left.iter().map(|l| l.provider).collect::<Vec<_>>(), [OAuthProvider::Google as i32]);
    // Unlinked, the GitHub identity signs in no more: it would make a new
    // account, but its email is the account's, so it is not linked.
    let d = server.client().await;
    let grant = authorize(&d, OAuthProvider::Github).await;
    assert_eq!(d.oauth_login(&grant, "d").await.unwrap_err().code(), Some(ErrorCode::IDENTITY_NOT_LINKED));
}

#[tokio::test]
async fn identity_requests_need_a_session_and_a_configured_provider() {
    let fake = GithubFake::start(CLIENT_ID, CLIENT_SECRET).await;
    let github = github_config(&fake);
    let server = TestServer::start_with(move |c| c.github = github).await;
    let c = server.client().await;
    // Not configured; not a provider.
    assert_eq!(c.oauth_config(OAuthProvider::Google).await.unwrap_err().code(), Some(ErrorCode::NOT_FOUND));
    for provider in [0, 99] {
        let body = proto::request::Body::GetOauthConfig(proto::GetOAuthConfig { provider });
        let e = c.request(body).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::INVALID_ARGUMENT), "{provider}: {e}");
    }
    // Linking, unlinking and listing need a session.
    let grant = authorize(&c, OAuthProvider::Github).await;
    assert_eq!(c.link_identity(&grant).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(c.unlink_identity(OAuthProvider::Github).await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    assert_eq!(c.identities().await.unwrap_err().code(), Some(ErrorCode::UNAUTHENTICATED));
    // Someone else's identity list is never reachable: only the caller's.
    let (alice, _) = server.new_user("alice@example.org").await;
    c.oauth_login(&grant, "d").await.unwrap();
    assert!(alice.identities().await.unwrap().is_empty());
    assert_eq!(c.identities().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_is_unavailable_not_internal() {
    // An issuer where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let google = GoogleConfig {
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(CLIENT_SECRET.into()),
        issuer: format!("http://{closed}"),
        allow_http_loopback: true,
        timeout_ms: 2_000,
        ..GoogleConfig::default()
    };
    let server = TestServer::start_with(move |c| c.google = google).await;
    let e = server.client().await.oauth_config(OAuthProvider::Google).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UNAVAILABLE), "{e}");
    assert!(!e.to_string().contains(CLIENT_SECRET));
}
