//! Google and GitHub sign-in for a native client: the authorization code flow
//! with a loopback redirect (RFC 8252) and PKCE (RFC 7636).
//!
//! [`begin`] binds a listener on `127.0.0.1` (an IP literal, an ephemeral port),
//! makes the PKCE verifier, a `state` and (OpenID Connect) a `nonce`, and builds
//! the URL to open in the browser. [`PendingAuthorization::wait`] serves the
//! provider's redirect to that listener and hands back a [`Grant`]: the
//! authorization code with what natterd needs to redeem it.
//!
//! This module never holds a client secret and never talks to the provider
//! itself: natterd, which alone holds the secret, exchanges the code and checks
//! the answer. It never listens beyond loopback, and the listener lives only as
//! long as the [`PendingAuthorization`].

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use natter_proto::wire;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Random bytes behind the verifier, the state and the nonce: 32 bytes are 43
/// characters of base64url, the shortest verifier RFC 7636 allows.
const RANDOM_BYTES: usize = 32;

/// The longest request head the loopback listener reads; a longer one is refused.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Connections whose request is still being read at once. Browsers open a few
/// (preconnects that never send anything, `/favicon.ico`); more are closed at
/// once until one finishes.
const MAX_CONNECTIONS: usize = 16;

/// How long one connection may take to send its request head, and to take
/// the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything but RFC 3986's unreserved characters is percent-encoded (a
/// space as `%20`).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The parameters this module adds to the authorization endpoint; an endpoint
/// that has one of them already is refused (a parameter must not be repeated).
const PARAMETERS: [&str; 8] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
];

/// `Google`, `GitHub`: the provider as people know it.
pub fn provider_name(provider: wire::OAuthProvider) -> &'static str {
    match provider {
        wire::OAuthProvider::Google => "Google",
        wire::OAuthProvider::Github => "GitHub",
        wire::OAuthProvider::OauthProviderUnspecified => "the provider",
    }
}

/// Why the browser did not bring back an authorization code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The redirect's `state` is not the one sent: it answers another
    /// sign-in (or none). Nothing of it was kept.
    #[error("the browser came back from another sign-in than this one (its state does not match); nothing was kept")]
    StateMismatch,
    /// The provider refused (the person declined, the client is misconfigured,
    /// …): its `error` code and `error_description`.
    #[error("the provider refused: {error}{}", if description.is_empty() { String::new() } else { format!(" ({description})") })]
    Denied { error: String, description: String },
    /// The redirect had the right state but neither a code nor an error.
    #[error("the provider's redirect carried no authorization code")]
    NoCode,
    /// No redirect came back in time.
    #[error("no answer came back from the browser in time")]
    TimedOut,
}

/// What the provider's redirect brought back, with what natterd needs to
/// redeem it (`OAuthLogin`, `LinkIdentity`).
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub provider: wire::OAuthProvider,
    /// The authorization code (single-use, short-lived).
    pub code: String,
    /// The PKCE verifier whose challenge went to the provider.
    pub code_verifier: String,
    /// The exact redirect URI of the authorization request.
    pub redirect_uri: String,
    /// The nonce sent (OpenID Connect); empty when the provider uses none.
    pub nonce: String,
}

impl fmt::Debug for Grant {
    /// The code and the verifier are secrets: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("provider", &self.provider)
            .field("code", &"<redacted>")
            .field("code_verifier", &"<redacted>")
            .field("redirect_uri", &self.redirect_uri)
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// An authorization request on its way: the URL to open, and the loopback
/// listener that waits for the provider's redirect.
pub struct PendingAuthorization {
    provider: wire::OAuthProvider,
    listener: TcpListener,
    url: String,
    redirect_uri: String,
    state: String,
    code_verifier: String,
    nonce: String,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("provider", &self.provider)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Starts an authorization request for `config` (natterd's `OAuthConfig`).
///
/// # Errors
/// No loopback listener can be bound, the system has no randomness, or the
/// authorization endpoint is not an http(s) URL without a fragment whose query
/// leaves the request's parameters to us (`InvalidInput`).
pub async fn begin(config: &wire::OAuthConfig) -> std::io::Result<PendingAuthorization> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let redirect_uri = format!("http://127.0.0.1:{}/", listener.local_addr()?.port());
    let rng = SystemRandom::new();
    let code_verifier = random_token(&rng)?;
    let state = random_token(&rng)?;
    let nonce = if config.uses_nonce { random_token(&rng)? } else { String::new() };
    let request = AuthorizationRequest {
        redirect_uri: &redirect_uri,
        state: &state,
        code_challenge: &code_challenge(&code_verifier),
        nonce: &nonce,
    };
    let url = authorization_url(config, &request)?;
    Ok(PendingAuthorization { provider: config.provider(), listener, url, redirect_uri, state, code_verifier, nonce })
}

impl PendingAuthorization {
    /// The page to open in the browser.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `http://127.0.0.1:PORT/`, where the provider sends the browser back.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Serves the loopback listener until the provider's redirect arrives (or
    /// `timeout` passes), answers the browser with a short page, and returns the
    /// grant. Requests for other paths (`/favicon.ico`) are answered 404 and
    /// waited past; the listener closes when this returns.
    ///
    /// # Errors
    /// [`OAuthError::StateMismatch`], [`OAuthError::Denied`] (the provider's
    /// `error`), [`OAuthError::NoCode`], [`OAuthError::TimedOut`].
    pub async fn wait(self, timeout: Duration) -> Result<Grant, OAuthError> {
        let code = tokio::time::timeout(timeout, self.serve()).await.map_err(|_| OAuthError::TimedOut)??;
        Ok(Grant {
            provider: self.provider,
            code,
            code_verifier: self.code_verifier,
            redirect_uri: self.redirect_uri,
            nonce: self.nonce,
        })
    }

    /// The accept loop: each connection's head is read in its own task (so a
    /// browser's idle preconnect holds nothing up), at most
    /// [`MAX_CONNECTIONS`] at once; the tasks end with the loop.
    async fn serve(&self) -> Result<String, OAuthError> {
        let mut reading: JoinSet<(TcpStream, Option<Head>)> = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((mut stream, _)) = accepted else {
                        // Aborted connections, no descriptors left: transient.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if reading.len() >= MAX_CONNECTIONS {
                        continue; // dropped: closed at once
                    }
                    reading.spawn(async move {
                        let head = tokio::time::timeout(CONNECTION_TIMEOUT, read_head(&mut stream)).await.ok().flatten();
                        (stream, head)
                    });
                }
                Some(done) = reading.join_next() => {
                    let Ok((mut stream, Some(head))) = done else { continue };
                    let verdict = judge(&head, &self.state);
                    let (status, page) = verdict.page(self.provider);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(&mut stream, status, &page)).await;
                    if let Verdict::Done(result) = verdict {
                        return result;
                    }
                }
            }
        }
    }
}

/// The request head of one connection, as read.
enum Head {
    Complete(String),
    /// Longer than [`MAX_HEAD_BYTES`], or not UTF-8.
    Unreadable,
}

/// Reads up to the blank line that ends the head; `None` when the peer closed first.
async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        // The end may straddle two reads: search from just before the new bytes.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|at| from + at) {
            if end > MAX_HEAD_BYTES {
                return Some(Head::Unreadable);
            }
            head.truncate(end);
            return Some(String::from_utf8(head).map_or(Head::Unreadable, Head::Complete));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Some(Head::Unreadable);
        }
    }
}

/// What a request means for the sign-in.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Not the redirect (another path, another method, no parameters): answer
    /// and keep waiting.
    Ignored { status: &'static str },
    /// The redirect: answer, and end the wait with this.
    Done(Result<String, OAuthError>),
}

impl Verdict {
    /// The HTTP status line's code and reason, and the page.
    fn page(&self, provider: wire::OAuthProvider) -> (&'static str, String) {
        match self {
            Verdict::Ignored { status } => (status, page("natter", "Nothing here.")),
            Verdict::Done(Ok(_)) => {
                ("200 OK", page("Signed in", "Signed in \u{2014} you can close this tab and return to natter."))
            }
            Verdict::Done(Err(OAuthError::Denied { error, description })) => {
                let why = if description.is_empty() { error.clone() } else { format!("{error}: {description}") };
                let text = format!(
                    "{} refused the sign-in ({why}). You can close this tab; natter says what to do next.",
                    provider_name(provider)
                );
                ("200 OK", page("Not signed in", &text))
            }
            Verdict::Done(Err(e)) => {
                let text = format!("Not signed in: {e}. You can close this tab and try again in natter.");
                ("400 Bad Request", page("Not signed in", &text))
            }
        }
    }
}

/// Judges one request head against the state this sign-in sent.
fn judge(head: &Head, state: &str) -> Verdict {
    let Head::Complete(head) = head else {
        return Verdict::Ignored { status: "400 Bad Request" };
    };
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return Verdict::Ignored { status: "404 Not Found" };
    }
    if method != "GET" {
        return Verdict::Ignored { status: "405 Method Not Allowed" };
    }
    let mut got = Redirect::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "state" => &mut got.state,
            "code" => &mut got.code,
            "error" => &mut got.error,
            "error_description" => &mut got.error_description,
            _ => continue,
        };
        if slot.is_some() {
            // A repeated parameter: no telling which one the provider meant.
            return Verdict::Done(Err(OAuthError::StateMismatch));
        }
        *slot = Some(value.into_owned());
    }
    if got.state.is_none() && got.code.is_none() && got.error.is_none() {
        return Verdict::Ignored { status: "404 Not Found" };
    }
    if got.state.as_deref() != Some(state) {
        return Verdict::Done(Err(OAuthError::StateMismatch));
    }
    if let Some(error) = got.error {
        return Verdict::Done(Err(OAuthError::Denied {
            error,
            description: got.error_description.unwrap_or_default(),
        }));
    }
    match got.code {
        Some(code) if !code.is_empty() => Verdict::Done(Ok(code)),
        _ => Verdict::Done(Err(OAuthError::NoCode)),
    }
}

/// The parameters of a redirect that matter.
#[derive(Default)]
struct Redirect {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Answers one request and closes the connection.
async fn answer(stream: &mut TcpStream, status: &str, page: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A minimal HTML page; `text` is escaped.
fn page(title: &str, text: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body><p>{}</p></body></html>\n",
        escape_html(title),
        escape_html(text)
    )
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// [`RANDOM_BYTES`] from the system's generator, base64url without padding.
fn random_token(rng: &SystemRandom) -> std::io::Result<String> {
    let mut bytes = [0u8; RANDOM_BYTES];
    rng.fill(&mut bytes).map_err(|_| std::io::Error::other("the system's random number generator failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The S256 challenge of a PKCE verifier: BASE64URL(SHA-256(verifier)).
fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()))
}

/// This request's own parameters.
struct AuthorizationRequest<'a> {
    redirect_uri: &'a str,
    state: &'a str,
    code_challenge: &'a str,
    /// Empty: not sent.
    nonce: &'a str,
}

/// The authorization endpoint with the request's parameters added to its query
/// (which is kept, RFC 6749 section 3.1).
fn authorization_url(config: &wire::OAuthConfig, request: &AuthorizationRequest<'_>) -> std::io::Result<String> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("natterd's authorization endpoint {:?} {why}", config.authorization_endpoint),
        )
    };
    let endpoint = config.authorization_endpoint.as_str();
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(invalid("is not an http(s) URL"));
    }
    if endpoint.contains('#') {
        return Err(invalid("has a fragment"));
    }
    let existing = endpoint.split_once('?').map_or("", |(_, q)| q);
    if form_urlencoded::parse(existing.as_bytes()).any(|(name, _)| PARAMETERS.contains(&name.as_ref())) {
        return Err(invalid("already has parameters of the authorization request"));
    }
    let scope = config.scopes.join(" ");
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", config.client_id.as_str()),
        ("redirect_uri", request.redirect_uri),
        ("scope", scope.as_str()),
        ("state", request.state),
        ("code_challenge", request.code_challenge),
        ("code_challenge_method", "S256"),
    ];
    if !request.nonce.is_empty() {
        params.push(("nonce", request.nonce));
    }
    let mut url = endpoint.to_owned();
    if !url.contains('?') {
        url.push('?');
    } else if !(url.ends_with('?') || url.ends_with('&')) {
        url.push('&');
    }
    let query: Vec<String> =
        params.iter().map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, QUERY_VALUE))).collect();
    url.push_str(&query.join("&"));
    Ok(url)
}

/// Opens `url` in the person's browser, if there is one to open: the commands
/// of `$BROWSER` (colon-separated, `%s` standing for the URL, else it is
/// appended) tried in turn, or else the desktop's opener (`xdg-open`, `open`).
/// Nothing is opened when `NATTER_NO_BROWSER` is set (to anything but empty).
/// Never waits for the browser and never fails: the URL is printed for the
/// person anyway.
pub fn open_in_browser(url: &str) {
    if std::env::var_os("NATTER_NO_BROWSER").is_some_and(|v| !v.is_empty()) {
        return;
    }
    let commands: Vec<Vec<String>> = match std::env::var("BROWSER") {
        Ok(browser) if !browser.trim().is_empty() => {
            browser.split(':').map(|command| browser_command(command, url)).filter(|argv| !argv.is_empty()).collect()
        }
        _ => vec![desktop_opener(url)],
    };
    for argv in commands {
        let spawned = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            // Reaped in the background, so no zombie is left behind.
            std::thread::spawn(move || child.wait());
            return;
        }
    }
}

/// One `$BROWSER` entry as a command line: `%s` replaced by the URL, or the
/// URL appended when there is no `%s`.
fn browser_command(command: &str, url: &str) -> Vec<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if words.is_empty() {
        return Vec::new();
    }
    if words.iter().any(|w| w.contains("%s")) {
        words.iter().map(|w| w.replace("%s", url)).collect()
    } else {
        words.iter().map(|w| w.to_string()).chain([url.to_owned()]).collect()
    }
}

fn desktop_opener(url: &str) -> Vec<String> {
    let opener: &[&str] = if cfg!(target_os = "macos") {
        &["open"]
    } else if cfg!(windows) {
        &["rundll32", "url.dll,FileProtocolHandler"]
    } else {
        &["xdg-open"]
    };
    opener.iter().map(|w| w.to_string()).chain([url.to_owned()]).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(endpoint: &str, uses_nonce: bool) -> wire::OAuthConfig {
        wire::OAuthConfig {
            provider: wire::OAuthProvider::Google as i32,
            authorization_endpoint: endpoint.into(),
            client_id: "natter-test.apps.example.com".into(),
            scopes: vec!["openid".into(), "email".into(), "profile".into()],
            uses_nonce,
        }
    }

    /// Every query parameter of `url`, decoded, with how often it occurs.
    fn query(url: &str) -> HashMap<String, Vec<String>> {
        let (_, q) = url.split_once('?').expect("a query");
        let mut params: HashMap<String, Vec<String>> = HashMap::new();
        for (name, value) in form_urlencoded::parse(q.as_bytes()) {
            params.entry(name.into_owned()).or_default().push(value.into_owned());
        }
        params
    }

    fn one<'a>(params: &'a HashMap<String, Vec<String>>, name: &str) -> &'a str {
        match params.get(name).map(Vec::as_slice) {
            Some([value]) => value,
            other => panic!("{name} should be there exactly once: {other:?}"),
        }
    }

    #[test]
    fn the_challenge_of_the_rfc_7636_example_verifier() {
        // Appendix B: 32 octets, their base64url, and its S256 challenge.
        let octets = [
            116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186, 22, 212, 37, 77, 105, 214, 191,
            240, 91, 88, 5, 88, 83, 132, 141, 121,
        ];
        let verifier = URL_SAFE_NO_PAD.encode(octets);
        assert_eq!(verifier, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(code_challenge(&verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_are_43_unreserved_characters_and_never_repeat() {
        let rng = SystemRandom::new();
        let a = random_token(&rng).unwrap();
        let b = random_token(&rng).unwrap();
        assert_eq!(a.len(), 43, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)), "{a}");
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn the_url_carries_every_parameter_once_and_decodes_back() {
        let pending = begin(&config("https://accounts.example.com/o/oauth2/v2/auth", true)).await.unwrap();
        let url = pending.url();
        assert!(url.starts_with("https://accounts.example.com/o/oauth2/v2/auth?response_type=code&"), "{url}");
        assert!(url.contains("scope=openid%20email%20profile"), "spaces as %20: {url}");
        let params = query(url);
        assert_eq!(params.len(), 8, "{params:?}");
        assert_eq!(one(&params, "response_type"), "code");
        assert_eq!(one(&params, "client_id"), "natter-test.apps.example.com");
        assert_eq!(one(&params, "redirect_uri"), pending.redirect_uri());
        assert_eq!(one(&params, "scope"), "openid email profile");
        assert_eq!(one(&params, "state"), pending.state);
        assert_eq!(one(&params, "code_challenge"), code_challenge(&pending.code_verifier));
        assert_eq!(one(&params, "code_challenge_method"), "S256");
        assert_eq!(one(&params, "nonce"), pending.nonce);
        let port = pending.listener.local_addr().unwrap().port();
        assert_eq!(pending.redirect_uri(), format!("http://127.0.0.1:{port}/"));
        assert_ne!(pending.state, pending.nonce);
    }

    #[tokio::test]
    async fn an_endpoint_query_is_kept_and_no_nonce_without_openid() {
        let mut github = config("https://github.example/login/oauth/authorize?allow_signup=true", false);
        github.provider = wire::OAuthProvider::Github as i32;
        github.scopes = vec!["read:user".into(), "user:email".into()];
        let pending = begin(&github).await.unwrap();
        let params = query(pending.url());
        assert_eq!(one(&params, "allow_signup"), "true");
        assert_eq!(one(&params, "scope"), "read:user user:email");
        assert!(!params.contains_key("nonce"), "{params:?}");
        assert!(pending.url().contains("?allow_signup=true&response_type=code&"), "{}", pending.url());
        assert!(pending.nonce.is_empty());
    }

    #[tokio::test]
    async fn an_endpoint_that_would_repeat_a_parameter_is_refused() {
        for endpoint in ["https://a.example/auth?client_id=x", "ftp://a.example/auth", "https://a.example/auth#top"] {
            let e = begin(&config(endpoint, false)).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{endpoint}: {e}");
        }
    }

    /// Sends one request to the loopback listener, as a browser would, and
    /// returns the whole answer.
    async fn browse(redirect_uri: &str, target: &str) -> String {
        let addr = redirect_uri.trim_start_matches("http://").trim_end_matches('/');
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    async fn started(uses_nonce: bool) -> (String, String, tokio::task::JoinHandle<Result<Grant, OAuthError>>) {
        let pending = begin(&config("http://127.0.0.1:1/authorize", uses_nonce)).await.unwrap();
        let (redirect, state) = (pending.redirect_uri().to_owned(), pending.state.clone());
        let waiting = tokio::spawn(pending.wait(Duration::from_secs(30)));
        (redirect, state, waiting)
    }

    #[tokio::test]
    async fn the_redirect_gives_the_grant_after_a_favicon_and_an_idle_preconnect() {
        let pending = begin(&config("http://127.0.0.1:1/authorize", true)).await.unwrap();
        let (redirect, state) = (pending.redirect_uri().to_owned(), pending.state.clone());
        let (verifier, nonce) = (pending.code_verifier.clone(), pending.nonce.clone());
        let waiting = tokio::spawn(pending.wait(Duration::from_secs(30)));
        // A preconnect that never sends a byte holds nothing up.
        let _idle = TcpStream::connect(redirect.trim_start_matches("http://").trim_end_matches('/')).await.unwrap();
        let favicon = browse(&redirect, "/favicon.ico").await;
        assert!(favicon.starts_with("HTTP/1.1 404 "), "{favicon}");
        let bare = browse(&redirect, "/").await;
        assert!(bare.starts_with("HTTP/1.1 404 "), "{bare}");
        assert!(!waiting.is_finished(), "neither ends the wait");
        let page = browse(&redirect, &format!("/?state={state}&code=4%2F0Ab-code&scope=email+openid")).await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(page.contains("Signed in \u{2014} you can close this tab and return to natter"), "{page}");
        let grant = waiting.await.unwrap().unwrap();
        assert_eq!(grant.provider, wire::OAuthProvider::Google);
        assert_eq!(grant.code, "4/0Ab-code");
        assert_eq!(grant.code_verifier, verifier);
        assert_eq!(grant.redirect_uri, redirect);
        assert_eq!(grant.nonce, nonce);
        assert!(!format!("{grant:?}").contains("4/0Ab-code"), "the code stays out of logs");
    }

    #[tokio::test]
    async fn a_redirect_with_another_state_is_refused() {
        let (redirect, _, waiting) = started(false).await;
        let page = browse(&redirect, "/?state=forged&code=stolen").await;
        assert!(page.starts_with("HTTP/1.1 400 "), "{page}");
        assert!(!page.contains("Signed in \u{2014}"), "{page}");
        assert_eq!(waiting.await.unwrap(), Err(OAuthError::StateMismatch));
        // No state at all, or the right one twice, is no better.
        let (redirect, _, waiting) = started(false).await;
        browse(&redirect, "/?code=stolen").await;
        assert_eq!(waiting.await.unwrap(), Err(OAuthError::StateMismatch));
        let (redirect, state, waiting) = started(false).await;
        browse(&redirect, &format!("/?state={state}&state={state}&code=c")).await;
        assert_eq!(waiting.await.unwrap(), Err(OAuthError::StateMismatch));
    }

    #[tokio::test]
    async fn the_providers_error_is_typed() {
        let (redirect, state, waiting) = started(true).await;
        let page =
            browse(&redirect, &format!("/?error=access_denied&error_description=The+user+said+%3Cno%3E&state={state}"))
                .await;
        assert!(page.contains("Google refused the sign-in (access_denied: The user said &lt;no&gt;)"), "{page}");
        let e = waiting.await.unwrap().unwrap_err();
        assert_eq!(e, OAuthError::Denied { error: "access_denied".into(), description: "The user said <no>".into() });
        assert_eq!(e.to_string(), "the provider refused: access_denied (The user said <no>)");
        let (redirect, state, waiting) = started(true).await;
        browse(&redirect, &format!("/?state={state}")).await;
        assert_eq!(waiting.await.unwrap(), Err(OAuthError::NoCode));
    }

    #[tokio::test]
    async fn other_methods_and_oversized_heads_do_not_end_the_wait() {
        let (redirect, state, waiting) = started(false).await;
        let addr = redirect.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let mut post = TcpStream::connect(&addr).await.unwrap();
        post.write_all(format!("POST /?state={state}&code=c HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        post.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        // Refused unread (its answer may be lost to the reset of a close with bytes unread).
        let mut huge = TcpStream::connect(&addr).await.unwrap();
        let long = format!("GET /?state={state}&code=c HTTP/1.1\r\nX-Padding: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        let _ = huge.write_all(long.as_bytes()).await;
        let _ = huge.read_to_end(&mut Vec::new()).await;
        assert!(!waiting.is_finished());
        browse(&redirect, &format!("/?code=the-code&state={state}")).await;
        assert_eq!(waiting.await.unwrap().unwrap().code, "the-code");
    }

    #[tokio::test]
    async fn no_redirect_in_time_is_a_timeout() {
        let pending = begin(&config("http://127.0.0.1:1/authorize", false)).await.unwrap();
        assert_eq!(pending.wait(Duration::from_millis(50)).await, Err(OAuthError::TimedOut));
    }

    #[test]
    fn browser_commands_take_the_url_for_percent_s_or_at_the_end() {
        let url = "https://a.example/auth?x=1&y=2";
        assert_eq!(browser_command("firefox --new-tab", url), ["firefox", "--new-tab", url]);
        assert_eq!(browser_command("lynx %s -nopause", url), ["lynx", url, "-nopause"]);
        assert!(browser_command("  ", url).is_empty());
    }
}
