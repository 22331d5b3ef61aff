//! What natter's outgoing HTTPS requests share (the Twilio, Google and GitHub
//! clients): one way to build the client, to check a configured address, and
//! to read a secret from the config or a file.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The HTTPS client natter's outgoing requests share: rustls with the ring
/// provider and Mozilla's roots (never a process-wide default), TLS 1.2 and
/// 1.3, HTTP/1.1, `timeout` for the whole request, no redirects (a request
/// carrying credentials goes only where it was addressed). Proxies named by
/// `HTTPS_PROXY`/`NO_PROXY` are honoured.
///
/// # Errors
/// Only if TLS cannot be set up (ring supports every version asked for, so in
/// practice never).
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    client_builder()?.timeout(timeout).connect_timeout(timeout).build().map_err(|e| e.to_string())
}

/// [`client`]'s builder before any timeout is set: for a client whose
/// requests may stream for long (the S3 store bounds each wait instead).
///
/// # Errors
/// As [`client`].
pub(crate) fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("natter/", env!("CARGO_PKG_VERSION"))))
}

/// Checks the address in config key `table.key`: `https://host[:port][/path]`,
/// or `http://` to a loopback address when `table.allow_http_loopback` is on;
/// no credentials (`secret_keys` says where they go instead), no fragment, and
/// a query only when `query_ok`.
///
/// # Errors
/// A message naming the key (never credentials found in the address).
pub(crate) fn validate_url(
    table: &str,
    key: &str,
    value: &str,
    allow_http_loopback: bool,
    secret_keys: &str,
    query_ok: bool,
) -> Result<(), String> {
    let name = format!("{table}.{key}");
    let url = reqwest::Url::parse(value).map_err(|e| {
        if value.contains('@') {
            // Perhaps credentials that did not parse: not echoed.
            format!("{name} is not a URL ({e}); it must not carry credentials either (set {secret_keys})")
        } else {
            format!("{name} {value:?} is not a URL: {e}")
        }
    })?;
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(format!("{name} {value:?} has no host")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: it may hold a secret.
        return Err(format!("{name} must not carry credentials (set {secret_keys})"));
    }
    if (url.query().is_some() && !query_ok) || url.fragment().is_some() {
        return Err(format!("{name} {value:?} must not have a query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(host) && allow_http_loopback => Ok(()),
        "http" if is_loopback_host(host) => Err(format!(
            "{name} {value:?} is plain http: allowed to a loopback address only with \
             {table}.allow_http_loopback = true (for tests); use https"
        )),
        "http" => Err(format!(
            "{name} {value:?} is plain http: use https (plain http is allowed only to a loopback \
             address, with {table}.allow_http_loopback)"
        )),
        other => Err(format!("{name} {value:?}: the scheme must be https, not {other:?}")),
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1` (as `url` writes them).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Missing(String),
    #[error("cannot read {key} {}: {source}", path.display())]
    File { key: String, path: std::path::PathBuf, source: std::io::Error },
    #[error("{0} is empty")]
    Empty(String),
}

/// A secret given inline (`table.inline_key`) or in a file (`table.file_key`,
/// one trailing line break, as `echo` writes it, removed); read once, at start.
///
/// # Errors
/// Neither given, the file unreadable, or the secret empty (never the secret).
pub(crate) fn read_secret(
    table: &str,
    (inline_key, inline): (&str, Option<&String>),
    (file_key, file): (&str, Option<&Path>),
) -> Result<String, SecretError> {
    let secret = match (inline, file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                key: format!("{table}.{file_key}"),
                path: path.to_owned(),
                source,
            })?;
            text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned()
        }
        (None, None) => return Err(SecretError::Missing(format!("set {table}.{file_key} (or {table}.{inline_key})"))),
    };
    if secret.trim().is_empty() {
        return Err(SecretError::Empty(match file {
            Some(path) if inline.is_none() => format!("{table}.{file_key} {}", path.display()),
            _ => format!("{table}.{inline_key}"),
        }));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_does_not_parse_is_not_echoed_when_it_may_hold_credentials() {
        let e =
            validate_url("sms", "base_url", "https://AC1:s3cret/with/slash@host", false, "sms.auth_token_file", false)
                .unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("sms.base_url"), "{e}");
        let e = validate_url("sms", "base_url", "not a url", false, "x", false).unwrap_err();
        assert!(e.contains("\"not a url\""), "{e}");
        let e =
            validate_url("github", "api_base", "https://u:p@api.example", false, "github.client_secret_file", false)
                .unwrap_err();
        assert!(!e.contains("u:p") && e.contains("github.client_secret_file"), "{e}");
        assert!(validate_url("google", "issuer", "http://127.0.0.1:8080", false, "x", false).is_err());
        assert!(validate_url("google", "issuer", "http://127.0.0.1:8080", true, "x", false).is_ok());
        assert!(validate_url("google", "issuer", "http://example.org", true, "x", false).is_err());
    }
}
