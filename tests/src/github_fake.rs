//! A small real HTTP/1.1 server for the tests, on `127.0.0.1:0`, that answers
//! as GitHub does for an OAuth app's web flow and the two REST calls that
//! tell who signed in, and checks what GitHub checks:
//!
//! - `GET /login/oauth/authorize?client_id&redirect_uri&scope&state&code_challenge&code_challenge_method=S256`:
//!   the person approves at once: 302 to `redirect_uri` with `code` and
//!   `state`. An unknown `client_id` is a 404 page; `redirect_uri` must be a
//!   loopback `http` URL (GitHub matches any port for loopback callbacks;
//!   this fake has no other registered callback), else a 400 page; a
//!   `code_challenge` must be 43 to 128 base64url characters with method
//!   `S256` (GitHub knows no other), else a 400 page.
//! - `POST /login/oauth/access_token` with `client_id`, `client_secret` (or
//!   HTTP Basic), `code`, `redirect_uri` (optional; when given it must be the
//!   one of the authorization), `code_verifier` (required, and must match, when
//!   the authorization had a challenge; refused when it had none), in the form
//!   or the query. JSON when `Accept` names `application/json`, else
//!   `application/x-www-form-urlencoded`, as GitHub answers. Errors are HTTP
//!   200 with `error`, `error_description`, `error_uri`:
//!   `incorrect_client_credentials`, `bad_verification_code` (unknown, used,
//!   expired after 10 minutes, another client's, a wrong or missing
//!   verifier), `redirect_uri_mismatch`. A code is spent by the first exchange
//!   with the right client credentials, whatever its outcome.
//! - `GET /api/user`, `GET /api/user/emails` (so the API base is
//!   `base_url + "/api"`): need a `User-Agent` (403 otherwise) and
//!   `Authorization: Bearer <token>` or `token <token>` (401 `Requires
//!   authentication` without one, `Bad credentials` for a token the fake did
//!   not issue). `/user/emails` needs the `user:email` or `user` scope (404
//!   otherwise, as GitHub). They show the token's user as it is now
//!   ([`GithubFake::set_user`] with the same id changes it).
//!
//! No TLS: plain HTTP to a loopback address. Keeps connections alive; stops,
//! with every connection, on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::Rng;
use serde_json::{json, Value};
use sha2::Digest;
use tokio::net::TcpListener;

use crate::http_fake::{self, reason, Form, HttpRequest, HttpResponse};

/// How long an authorization code lives (GitHub: 10 minutes).
pub const CODE_TTL: Duration = Duration::from_secs(600);

/// Most connections served at once; further ones wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
const TROUBLESHOOTING: &str =
    "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/";

/// One of a user's email addresses, as `/user/emails` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GithubEmail {
    pub email: String,
    pub primary: bool,
    pub verified: bool,
}

/// A GitHub account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GithubUser {
    pub id: u64,
    pub login: String,
    pub name: Option<String>,
    pub emails: Vec<GithubEmail>,
    /// The address the profile shows, `/user`'s `email` (GitHub: `null`
    /// unless the person made one of their addresses public). The primary
    /// address is listed with `visibility` `public` when it is this one,
    /// `private` otherwise.
    pub public_email: Option<String>,
}

impl GithubUser {
    /// Who signs in until [`GithubFake::set_user`]: id 1, `octocat`, "The
    /// Octocat", `octocat@github.com` (primary, verified, not public).
    pub fn octocat() -> Self {
        Self {
            id: 1,
            login: "octocat".into(),
            name: Some("The Octocat".into()),
            emails: vec![GithubEmail { email: "octocat@github.com".into(), primary: true, verified: true }],
            public_email: None,
        }
    }
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The fields of an `application/x-www-form-urlencoded` body.
    pub form: Vec<(String, String)>,
    /// What the fake answered.
    pub status: u16,
}

impl Recorded {
    /// The header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The field `name` of the form, else of the query.
    pub fn field(&self, name: &str) -> Option<&str> {
        lookup(&self.form, name).or_else(|| lookup(&self.query, name))
    }
}

/// The first value of `name` in decoded fields.
fn lookup<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// What one authorization code stands for.
struct Grant {
    redirect_uri: String,
    /// GitHub's form: comma-separated.
    scope: String,
    challenge: Option<String>,
    user_id: u64,
    issued: Instant,
}

struct Token {
    user_id: u64,
    scope: String,
}

struct State {
    /// Who approves the next authorization.
    signed_in: u64,
    users: HashMap<u64, GithubUser>,
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, Token>,
    requests: Vec<Recorded>,
}

struct Shared {
    client_id: String,
    client_secret: String,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("github fake lock")
    }
}

/// The fake GitHub; stops (with every connection) when dropped.
pub struct GithubFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl GithubFake {
    /// Listens on `127.0.0.1:0` for the OAuth app `client_id` with
    /// `client_secret`; [`GithubUser::octocat`] signs in until
    /// [`GithubFake::set_user`].
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the GitHub fake");
        let addr = listener.local_addr().expect("fake address");
        let octocat = GithubUser::octocat();
        let state = State {
            signed_in: octocat.id,
            users: HashMap::from([(octocat.id, octocat)]),
            codes: HashMap::new(),
            tokens: HashMap::new(),
            requests: Vec::new(),
        };
        let shared = Arc::new(Shared {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            state: Mutex::new(state),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`: the web flow is under it.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `base_url + "/api"`: the REST API's base.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// The account that approves the following authorizations; it replaces
    /// the account with the same id (what the API shows for its tokens too).
    pub fn set_user(&self, user: GithubUser) {
        let mut state = self.shared.state();
        state.signed_in = user.id;
        state.users.insert(user.id, user);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state().requests.clone()
    }
}

impl Drop for GithubFake {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    crate::accept_loop(listener, MAX_CONNECTIONS, move |stream| {
        let shared = shared.clone();
        async move {
            let respond = |request: &HttpRequest| {
                let response = answer(&shared, request);
                shared.state().requests.push(Recorded {
                    method: request.method.clone(),
                    path: request.path().to_owned(),
                    query: request.query(),
                    headers: request.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect(),
                    form: Form::of(request).0,
                    status: response.status,
                });
                response
            };
            let _ =
                http_fake::serve(stream, respond, |status| json_response(status, json!({"message": reason(status)})))
                    .await;
        }
    })
    .await;
}

fn json_response(status: u16, body: Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: Vec::new(),
        content_type: "application/json; charset=utf-8",
        body: body.to_string(),
    }
}

/// What a person's browser is shown instead of a redirect.
fn page(status: u16, text: &str) -> HttpResponse {
    HttpResponse {
        status,
        headers: Vec::new(),
        content_type: "text/html; charset=utf-8",
        body: format!("<!DOCTYPE html><title>{status} {}</title><p>{text}</p>", reason(status)),
    }
}

fn answer(shared: &Shared, request: &HttpRequest) -> HttpResponse {
    match (request.method.as_str(), request.path()) {
        ("GET", "/login/oauth/authorize") => authorize(shared, request),
        ("POST", "/login/oauth/access_token") => access_token(shared, request),
        (_, path) if path == "/api" || path.starts_with("/api/") => api(shared, request, &path["/api".len()..]),
        _ => page(404, "Not Found"),
    }
}

/// `length` random characters from `alphabet`.
fn random_string(alphabet: &[u8], length: usize) -> String {
    let mut rng = rand::rng();
    (0..length).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect()
}

fn is_loopback_http(uri: &str) -> bool {
    reqwest::Url::parse(uri).is_ok_and(|url| {
        let host = url.host_str().unwrap_or("");
        let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
        url.scheme() == "http" && (host == "localhost" || ip.is_ok_and(|ip| ip.is_loopback()))
    })
}

fn is_code_challenge(challenge: &str) -> bool {
    (43..=128).contains(&challenge.len())
        && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn authorize(shared: &Shared, request: &HttpRequest) -> HttpResponse {
    let query = request.query();
    let get = |name: &str| lookup(&query, name).filter(|v| !v.is_empty());
    if get("client_id") != Some(shared.client_id.as_str()) {
        return page(404, "Not Found");
    }
    let Some(redirect_uri) = get("redirect_uri").filter(|uri| is_loopback_http(uri)) else {
        return page(400, "redirect_uri_mismatch: the redirect_uri is not associated with this application.");
    };
    let challenge = get("code_challenge");
    if let Some(challenge) = challenge {
        if get("code_challenge_method") != Some("S256") || !is_code_challenge(challenge) {
            return page(400, "invalid_request: code_challenge_method must be S256, with a valid code_challenge.");
        }
    }
    let scope: Vec<&str> = get("scope").unwrap_or("").split([' ', ',']).filter(|s| !s.is_empty()).collect();
    let code = random_string(b"0123456789abcdef", 20);
    let mut state = shared.state();
    let grant = Grant {
        redirect_uri: redirect_uri.to_owned(),
        scope: scope.join(","),
        challenge: challenge.map(str::to_owned),
        user_id: state.signed_in,
        issued: Instant::now(),
    };
    state.codes.insert(code.clone(), grant);
    drop(state);
    let mut location = reqwest::Url::parse(redirect_uri).expect("checked above");
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = get("state") {
        location.query_pairs_mut().append_pair("state", state);
    }
    HttpResponse {
        status: 302,
        headers: vec![("Location", location.to_string())],
        content_type: "text/html; charset=utf-8",
        body: format!("<html><body>You are being <a href=\"{location}\">redirected</a>.</body></html>"),
    }
}

/// The client's credentials: HTTP Basic, else the form's (or query's) fields.
fn client_credentials(request: &HttpRequest, field: impl Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let basic = request
        .header("Authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Basic"))
        .and_then(|(_, b64)| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|decoded| decoded.split_once(':').map(|(id, secret)| (id.to_owned(), secret.to_owned())));
    basic.or_else(|| Some((field("client_id")?, field("client_secret")?)))
}

fn access_token(shared: &Shared, request: &HttpRequest) -> HttpResponse {
    let (form, query) = (Form::of(request), request.query());
    let field =
        |name: &str| form.get(name).or_else(|| lookup(&query, name).filter(|v| !v.is_empty())).map(str::to_owned);
    let json = request.header("Accept").is_some_and(|accept| accept.contains("application/json"));
    let error = |error: &str, description: &str, anchor: &str| {
        let uri = format!("{TROUBLESHOOTING}#{anchor}");
        token_response(json, &[("error", error), ("error_description", description), ("error_uri", uri.as_str())])
    };
    let credentials = client_credentials(request, field);
    if credentials != Some((shared.client_id.clone(), shared.client_secret.clone())) {
        return error(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            "incorrect-client-credentials",
        );
    }
    let bad_code =
        || error("bad_verification_code", "The code passed is incorrect or expired.", "bad-verification-code");
    let mut state = shared.state();
    // Spent now, whatever comes next.
    let Some(grant) = field("code").and_then(|code| state.codes.remove(&code)) else { return bad_code() };
    if grant.issued.elapsed() > CODE_TTL {
        return bad_code();
    }
    if field("redirect_uri").is_some_and(|uri| uri != grant.redirect_uri) {
        return error(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
            "redirect-uri-mismatch2",
        );
    }
    let verifier = field("code_verifier");
    let verified = match (&grant.challenge, verifier) {
        (None, None) => true,
        (Some(challenge), Some(verifier)) => {
            let digest = sha2::Sha256::digest(verifier.as_bytes());
            *challenge == base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
        }
        _ => false,
    };
    if !verified {
        return bad_code();
    }
    let token = format!("gho_{}", random_string(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 36));
    state.tokens.insert(token.clone(), Token { user_id: grant.user_id, scope: grant.scope.clone() });
    token_response(json, &[("access_token", token.as_str()), ("token_type", "bearer"), ("scope", grant.scope.as_str())])
}

/// GitHub's token endpoint answers 200, as JSON or as a form.
fn token_response(json: bool, fields: &[(&str, &str)]) -> HttpResponse {
    let (content_type, body) = if json {
        let map: serde_json::Map<String, Value> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).into())).collect();
        ("application/json; charset=utf-8", Value::Object(map).to_string())
    } else {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        ("application/x-www-form-urlencoded; charset=utf-8", body)
    };
    HttpResponse { status: 200, headers: Vec::new(), content_type, body }
}

fn api_error(status: u16, message: &str, documentation_url: &str) -> HttpResponse {
    json_response(
        status,
        json!({"message": message, "documentation_url": documentation_url, "status": status.to_string()}),
    )
}

fn api(shared: &Shared, request: &HttpRequest, path: &str) -> HttpResponse {
    if request.header("User-Agent").is_none_or(str::is_empty) {
        return HttpResponse {
            status: 403,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: "Request forbidden by administrative rules. Please make sure your request has a User-Agent header \
                   (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
                   Check https://developer.github.com for other possible causes.\n"
                .into(),
        };
    }
    let docs = match (request.method.as_str(), path) {
        ("GET", "/user") => "https://docs.github.com/rest/users/users#get-the-authenticated-user",
        ("GET", "/user/emails") => {
            "https://docs.github.com/rest/users/emails#list-email-addresses-for-the-authenticated-user"
        }
        _ => return api_error(404, "Not Found", "https://docs.github.com/rest"),
    };
    let token = request.header("Authorization").and_then(|v| v.split_once(' ')).and_then(|(scheme, token)| {
        (scheme.eq_ignore_ascii_case("Bearer") || scheme.eq_ignore_ascii_case("token")).then_some(token.trim())
    });
    let Some(token) = token else { return api_error(401, "Requires authentication", docs) };
    let state = shared.state();
    let Some(Token { user_id, scope }) = state.tokens.get(token) else {
        return api_error(401, "Bad credentials", "https://docs.github.com/rest");
    };
    let user = &state.users[user_id];
    let scopes: Vec<&str> = scope.split(',').filter(|s| !s.is_empty()).collect();
    let (body, accepted) = if path == "/user" {
        (user_json(user), "")
    } else if scopes.iter().any(|s| matches!(*s, "user" | "user:email")) {
        (emails_json(user), "user, user:email")
    } else {
        return api_error(404, "Not Found", docs);
    };
    let mut response = json_response(200, body);
    response.headers = vec![
        ("X-OAuth-Scopes", scopes.join(", ")),
        ("X-Accepted-OAuth-Scopes", accepted.into()),
        ("X-GitHub-Media-Type", "github.v3; format=json".into()),
    ];
    response
}

fn user_json(user: &GithubUser) -> Value {
    let login = &user.login;
    json!({
        "login": login,
        "id": user.id,
        "node_id": format!("U_fake{}", user.id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", user.id),
        "url": format!("https://api.github.com/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "type": "User",
        "site_admin": false,
        "name": user.name,
        "company": null,
        "blog": "",
        "location": null,
        "email": user.public_email,
        "bio": null,
        "public_repos": 0,
        "followers": 0,
        "following": 0,
        "created_at": "2011-01-25T18:44:36Z",
        "updated_at": "2024-01-01T00:00:00Z",
    })
}

fn emails_json(user: &GithubUser) -> Value {
    let emails = user.emails.iter().map(|e| {
        let visibility = match (e.primary, user.public_email.as_deref() == Some(e.email.as_str())) {
            (true, true) => json!("public"),
            (true, false) => json!("private"),
            (false, _) => Value::Null,
        };
        json!({"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": visibility})
    });
    Value::Array(emails.collect())
}
