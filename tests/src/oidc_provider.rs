//! A real OpenID provider for the tests, standing in for Google:
//! `tests/oidc/provider.js` (the npm package `oauth2-mock-server` plus the
//! checks Google makes that it lacks) as a child process on `127.0.0.1`, and
//! [`browse`], which does what a person's browser does when they approve.
//!
//! The provider's issuer is `http://127.0.0.1:PORT`; discovery is at
//! `/.well-known/openid-configuration`. `/authorize` approves at once for
//! the known client and redirects with `code` and `state`; `/token` takes
//! `client_secret_basic` or `client_secret_post`, refuses a code it did not
//! issue, a used or expired one (400 `invalid_grant`), a wrong or missing PKCE
//! verifier (`invalid_grant`), another redirect URI (`redirect_uri_mismatch`),
//! wrong client credentials (401 `invalid_client`). Its RS256 ID token has
//! `iss`, `aud` = `azp` = the client id, `sub`, `email`, `email_verified`,
//! `name`, `nonce` (from `/authorize`, when given), `iat`, `exp` (+1 h).
//!
//! Needs Node.js (20.19+) and npm: without them the tests fail, they are not
//! skipped. The packages are installed by `npm ci` (CI does it first; the
//! harness does it once when `tests/oidc/node_modules` is missing). The
//! child is killed on drop, and exits by itself when this process dies (its
//! stdin closes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Longest wait for the provider to listen (node starting, a key generated).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects [`browse`] follows before giving up.
const MAX_REDIRECTS: usize = 10;

/// The person signed in at the provider: the ID token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcUser {
    pub sub: String,
    pub email: String,
    pub name: String,
    pub email_verified: bool,
}

impl Default for OidcUser {
    /// Who signs in until [`OidcProvider::set_user`].
    fn default() -> Self {
        Self {
            sub: "100000000000000000001".into(),
            email: "alice@example.com".into(),
            name: "Alice Example".into(),
            email_verified: true,
        }
    }
}

/// What to change in the next ID token the provider issues (only that one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tamper {
    /// `aud` (and `azp`) replaced: a token minted for another client.
    pub aud: Option<String>,
    /// Issued two hours ago, expired one hour ago.
    pub expired: bool,
    /// `nonce` replaced (added when `/authorize` had none).
    pub nonce: Option<String>,
    pub email_verified: Option<bool>,
}

/// The provider; the node process is killed when this is dropped.
pub struct OidcProvider {
    issuer: String,
    http: reqwest::Client,
    /// Killed on drop (`kill_on_drop`); its stdin, a pipe, stays open until then.
    _child: tokio::process::Child,
}

impl OidcProvider {
    /// Starts `node tests/oidc/provider.js` for the client `client_id` with
    /// `client_secret` (installing its packages first if they are missing),
    /// signed in as [`OidcUser::default`].
    ///
    /// # Panics
    /// When node or npm is missing, the install fails, or the provider does
    /// not start: the OAuth tests need it.
    pub async fn start(client_id: &str, client_secret: &str) -> Self {
        let dir = provider_dir();
        let install_dir = dir.clone();
        match tokio::task::spawn_blocking(move || ensure_installed(&install_dir)).await {
            Ok(()) => {}
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("installing the OIDC provider: {e}"),
            },
        }
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("provider.js"))
            .args(["--client-id", client_id, "--client-secret", client_secret])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run node ({e}): the OAuth tests need Node.js 20.19+ and npm"));
        let stdout = child.stdout.take().expect("the provider's stdout");
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        let issuer = match read {
            Ok(Ok(_)) => line.trim().strip_prefix("listening ").map(str::to_owned),
            Ok(Err(e)) => panic!("reading the OIDC provider's first line: {e}"),
            Err(_) => panic!("the OIDC provider did not listen within {START_TIMEOUT:?}"),
        };
        let issuer = issuer
            .unwrap_or_else(|| panic!("the OIDC provider said {line:?}, not `listening URL` (its stderr is above)"));
        let provider = Self { issuer, http: crate::http_client(), _child: child };
        provider.set_user(OidcUser::default()).await;
        provider
    }

    /// `http://127.0.0.1:PORT`, exactly the ID tokens' `iss` and the base of
    /// every endpoint.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// Who approves the following authorizations (an authorization code is
    /// bound to whoever was signed in when it was issued).
    pub async fn set_user(&self, user: OidcUser) {
        let OidcUser { sub, email, name, email_verified } = user;
        self.control("user", json!({"sub": sub, "email": email, "name": name, "email_verified": email_verified})).await;
    }

    /// Changes the next ID token issued (by any exchange), and only that one.
    pub async fn tamper_next_token(&self, tamper: Tamper) {
        let mut body = serde_json::Map::new();
        if let Some(aud) = tamper.aud {
            body.insert("aud".into(), aud.into());
        }
        if tamper.expired {
            body.insert("expired".into(), true.into());
        }
        if let Some(nonce) = tamper.nonce {
            body.insert("nonce".into(), nonce.into());
        }
        if let Some(verified) = tamper.email_verified {
            body.insert("email_verified".into(), verified.into());
        }
        self.control("tamper", Value::Object(body)).await;
    }

    async fn control(&self, what: &str, body: Value) {
        let url = format!("{}/__test/{what}", self.issuer);
        let response = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        assert_eq!(
            status,
            reqwest::StatusCode::NO_CONTENT,
            "POST {url}: {}",
            response.text().await.unwrap_or_default()
        );
    }
}

/// `npm ci` in `dir` unless its packages are there. Under a lock on
/// `package-lock.json` (flock: it excludes other threads of this process as
/// well as other processes), shared to look, exclusive to install, so no one
/// sees a half-made `node_modules`.
fn ensure_installed(dir: &Path) {
    let lock_path = dir.join("package-lock.json");
    let lock = std::fs::File::open(&lock_path).unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    // npm writes its hidden lockfile once the tree is in place.
    let installed = || dir.join("node_modules/.package-lock.json").exists();
    let shared = Flock::new(&lock, libc::LOCK_SH);
    if installed() {
        return;
    }
    drop(shared);
    let _exclusive = Flock::new(&lock, libc::LOCK_EX);
    if installed() {
        return;
    }
    let output = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run npm ({e}): the OAuth tests need Node.js 20.19+ and npm"));
    assert!(
        output.status.success(),
        "npm ci --prefix {} failed ({}):\n{}{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An flock(2) held until dropped.
struct Flock<'a>(&'a std::fs::File);

impl<'a> Flock<'a> {
    fn new(file: &'a std::fs::File, operation: libc::c_int) -> Self {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this borrow keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
        Self(file)
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// What a browser does when a person approves: GETs `url`, follows
/// redirects (relative or absolute `Location`, at most 10, to the provider,
/// the GitHub fake or a loopback listener alike) and returns the final page's
/// body.
///
/// # Errors
/// The final status when it is 400 or more, with the body; a redirect
/// without a `Location`; too many redirects; a request that fails.
pub async fn browse(url: &str) -> Result<String, String> {
    let client = crate::http_client();
    let mut url = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    for _ in 0..=MAX_REDIRECTS {
        let response = client.get(url.clone()).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("GET {url}: {status} without a Location"))?;
            url = url.join(location).map_err(|e| format!("GET {url}: Location {location:?}: {e}"))?;
            continue;
        }
        let body = response.text().await.map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        if status.as_u16() >= 400 {
            return Err(format!("GET {url}: {status}: {body}"));
        }
        return Ok(body);
    }
    Err(format!("more than {MAX_REDIRECTS} redirects, the last to {url}"))
}

/// Where provider.js and its packages live.
fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}
