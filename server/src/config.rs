//! Configuration: defaults, then a TOML file, then `NATTER_*` environment
//! variables, then command-line flags (the binary applies those).
//!
//! An environment variable maps to a key by its name: `NATTER_LISTEN` sets
//! `listen`, `NATTER_AUTH_ARGON2_MEMORY_KIB` sets `argon2_memory_kib` in the
//! `[auth]` table (`NATTER_<TABLE>_<KEY>` for the tables below). Values are read as
//! TOML (numbers, booleans, arrays), else as strings. `NATTER_LOG` is not a
//! configuration key: it is the log filter (e.g. `info`, `natter_server=debug`).
//!
//! natterd claims only the variables that name one of its keys: other programs
//! share the `NATTER_` prefix (the `natter` client's `NATTER_PROFILE`), so a
//! variable that names no key is ignored (and logged), unless it looks like a
//! misspelt key (inside one of natterd's tables, or a letter or two away from a
//! key), which is an error naming the variable and the key it resembles. A bad
//! value is an error naming the variable: `NATTER_MAX_CONNECTIONS=lots:
//! expected a number`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::Argon2Config;

/// Everything natterd can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, certificates and other state live.
    pub data_dir: PathBuf,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Name sent in `Welcome`.
    pub server_name: String,
    /// Most simultaneous connections; further ones are refused.
    pub max_connections: usize,
    /// Most simultaneous connections from one IP address (0: no cap; off in
    /// --load-test mode); further ones are refused with TOO_MANY_CONNECTIONS.
    pub max_connections_per_address: usize,
    /// With this many handshakes in progress, a new client must first prove
    /// its address (QUIC Retry) before the server spends any state on it;
    /// 0: always.
    pub retry_above_handshakes: usize,
    /// Requests one connection may make per second, after a burst of
    /// `request_burst`; beyond, RATE_LIMITED with retry_after_ms (0: no
    /// limit; off in --load-test mode).
    pub requests_per_second: f64,
    pub request_burst: u32,
    /// Largest frame accepted from a client, in bytes.
    pub max_frame_bytes: usize,
    /// A connection with no traffic for this long is closed (clients keep alive).
    pub idle_timeout_ms: u64,
    /// How long shutdown waits for connections to drain.
    pub shutdown_grace_ms: u64,
    /// Most members a group may have.
    pub max_group_members: usize,
    /// A natterd for the load generator (`natterd --load-test`): no per-address
    /// sign-in limit, and a data directory of its own, marked as load-test
    /// data, that an ordinary natterd refuses (and vice versa).
    pub load_test: bool,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub ephemeral: EphemeralConfig,
    pub metrics: MetricsConfig,
    pub mail: crate::auth::mail::MailConfig,
    pub sms: crate::auth::sms::SmsConfig,
    /// Google sign-in (or any OpenID provider): enabled by `client_id`.
    pub google: crate::auth::oauth::GoogleConfig,
    /// GitHub sign-in: enabled by `client_id`.
    pub github: crate::auth::oauth::GithubConfig,
    /// Where media bytes live: files under the data directory, or S3.
    pub blob: crate::blob::BlobConfig,
    /// What media natterd accepts: size, quota, types.
    pub media: crate::media::MediaConfig,
    /// The full-text search index.
    pub search: crate::search::SearchConfig,
    /// Web Push notifications.
    pub push: crate::push::PushConfig,
    /// End-to-end encryption's delivery service: KeyPackage stock and claims.
    pub mls: crate::mls::MlsConfig,
    /// Who may operate the deployment over the protocol (`natter-admin --server`).
    pub admin: AdminConfig,
    /// How long messages keep their content.
    pub retention: crate::retention::RetentionConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Emails of accounts that hold the admin role by configuration (besides
    /// those granted it: `natter-admin grant-admin`), e.g. ["ops@example.org"].
    pub bootstrap: Vec<String>,
    /// Admin requests are refused (FORBIDDEN) from an admin whose account has
    /// no TOTP second factor on.
    pub require_totp: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics and /healthz over HTTP here; off when unset.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EphemeralConfig {
    /// How long "X is typing" shows without a refresh.
    pub typing_ttl_ms: u32,
    /// Typing signals a connection may send per second, after a burst.
    pub typing_per_second: f64,
    pub typing_burst: u32,
}

impl Default for EphemeralConfig {
    fn default() -> Self {
        Self { typing_ttl_ms: 6_000, typing_per_second: 1.0, typing_burst: 10 }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. Unset: a self-signed certificate is
    /// generated in `<data_dir>/tls/` on first start.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Extra DNS names or IPs for the generated certificate.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub argon2_memory_kib: Option<u32>,
    pub argon2_iterations: Option<u32>,
    pub argon2_parallelism: Option<u32>,
    /// Sign-up and log-in attempts per client address per minute. Default 30.
    pub attempts_per_minute: Option<u32>,
    /// Wrong passwords in a row before an account is locked. Default 5.
    pub max_failures: Option<u32>,
    /// First lock-out in milliseconds; doubles per further failure, up to 15 min. Default 30000.
    pub lockout_ms: Option<u64>,
    /// The server key (64 hex characters, mode 0600) that seals TOTP secrets and
    /// keys one-time codes. Unset: `<data_dir>/secret.key`, generated on first
    /// start. Set: it must exist (natterd refuses to start otherwise).
    pub secret_key_file: Option<PathBuf>,
    /// A session unused for this long ends: its token no longer resumes
    /// (sign in again). Default 90 days; 0: never.
    pub session_idle_secs: Option<u64>,
    /// A session ends this long after it was signed in, however used.
    /// Default 365 days; 0: never.
    pub session_lifetime_secs: Option<u64>,
}

impl AuthConfig {
    /// How long sessions last: (idle, absolute); `None` for never.
    pub fn session_limits(&self) -> (Option<std::time::Duration>, Option<std::time::Duration>) {
        let limit = |v: Option<u64>, default_days: u64| match v.unwrap_or(default_days * 86_400) {
            0 => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        };
        (limit(self.session_idle_secs, 90), limit(self.session_lifetime_secs, 365))
    }

    pub fn guard(&self) -> crate::session::guard::GuardConfig {
        crate::session::guard::GuardConfig {
            attempts_per_minute: self.attempts_per_minute.unwrap_or(30),
            max_failures: self.max_failures.unwrap_or(5).max(1),
            lockout: std::time::Duration::from_millis(self.lockout_ms.unwrap_or(30_000)),
        }
    }

    pub fn argon2(&self) -> Argon2Config {
        let d = Argon2Config::default();
        Argon2Config {
            memory_kib: self.argon2_memory_kib.unwrap_or(d.memory_kib),
            iterations: self.argon2_iterations.unwrap_or(d.iterations),
            parallelism: self.argon2_parallelism.unwrap_or(d.parallelism),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"sqlite"` (embedded, the default) or `"postgres"` (with `url`).
    pub backend: StoreBackend,
    /// `postgres://user@host:port/database` for the postgres backend
    /// (`NATTER_STORE_URL`). Several natterd nodes may share one database.
    pub url: Option<String>,
    /// Read-only connections for queries.
    pub readers: usize,
    /// Most appends per group commit.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { backend: StoreBackend::Sqlite, url: None, readers: 4, max_batch: 1024 }
    }
}

/// Where the log and the read models live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// SQLite in the data directory: nothing to install, one node.
    Sqlite,
    /// A PostgreSQL database that several nodes share.
    Postgres,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Events queued per connection before it is marked out of date and resyncs
    /// from the log instead.
    pub outbound_queue: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self { outbound_queue: 1024 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./natter-data"),
            listen: SocketAddr::from(([0, 0, 0, 0], natter_proto::DEFAULT_PORT)),
            server_name: "natterd".into(),
            max_connections: 10_000,
            max_connections_per_address: 256,
            retry_above_handshakes: 64,
            requests_per_second: 1000.0,
            request_burst: 2000,
            max_frame_bytes: natter_proto::limits::DEFAULT_MAX_FRAME_BYTES,
            idle_timeout_ms: 30_000,
            shutdown_grace_ms: 5_000,
            max_group_members: natter_proto::limits::DEFAULT_MAX_GROUP_MEMBERS,
            load_test: false,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            store: StoreConfig::default(),
            delivery: DeliveryConfig::default(),
            ephemeral: EphemeralConfig::default(),
            metrics: MetricsConfig::default(),
            mail: crate::auth::mail::MailConfig::default(),
            sms: crate::auth::sms::SmsConfig::default(),
            google: crate::auth::oauth::GoogleConfig::default(),
            github: crate::auth::oauth::GithubConfig::default(),
            blob: crate::blob::BlobConfig::default(),
            media: crate::media::MediaConfig::default(),
            search: crate::search::SearchConfig::default(),
            push: crate::push::PushConfig::default(),
            mls: crate::mls::MlsConfig::default(),
            admin: AdminConfig::default(),
            retention: crate::retention::RetentionConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

const TABLES: &[&str] = &[
    "tls",
    "auth",
    "store",
    "delivery",
    "ephemeral",
    "metrics",
    "mail",
    "sms",
    "google",
    "github",
    "blob",
    "media",
    "search",
    "push",
    "mls",
];
/// `NATTER_*` variables that are not configuration keys.
const NOT_CONFIG: &[&str] = &["LOG", "LOG_FORMAT"];

/// A key that a `NATTER_*` variable can set: `(table, key)`, the table empty
/// for top-level keys.
type KeyPath = (String, String);

impl Config {
    /// Loads defaults, then `file` (if any), then `NATTER_*` variables from `env`.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys, wrong types; a variable that
    /// looks like a misspelt key, or carries a bad value, is named.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut root = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                // Alone first, so an error names the file's line and key.
                toml::from_str::<Config>(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let known = known_keys();
        for (name, raw) in env {
            let Some((table, key)) = env_key(&name, &known)? else {
                continue;
            };
            let value = check_env_value(&name, &raw, &table, &key, parse_env_value(&raw))?;
            if table.is_empty() {
                root.insert(key, value);
            } else {
                let entry = root.entry(table.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match entry {
                    toml::Value::Table(t) => {
                        t.insert(key, value);
                    }
                    _ => return Err(ConfigError::Invalid(format!("{table} must be a table"))),
                }
            }
        }
        let config: Config =
            toml::Value::Table(root).try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (self.store.backend, &self.store.url) {
            (StoreBackend::Postgres, None) => {
                return Err(ConfigError::Invalid(
                    "store.backend \"postgres\" needs store.url (or NATTER_STORE_URL), e.g. postgres://natter@127.0.0.1/natter"
                        .into(),
                ));
            }
            (StoreBackend::Postgres, Some(url))
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") =>
            {
                return Err(ConfigError::Invalid(format!("store.url {url:?} is not a postgres:// URL")));
            }
            (StoreBackend::Sqlite, Some(_)) => {
                return Err(ConfigError::Invalid("store.url is only for store.backend \"postgres\"".into()));
            }
            _ => {}
        }
        if let Some(bad) = self.admin.bootstrap.iter().find(|e| crate::domain::Email::parse(e).is_err()) {
            return Err(ConfigError::Invalid(format!("admin.bootstrap: {bad:?} is not an email address")));
        }
        if self.max_frame_bytes < 1024 {
            return Err(ConfigError::Invalid("max_frame_bytes must be at least 1024".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("max_connections must be at least 1".into()));
        }
        if !(self.requests_per_second >= 0.0 && self.requests_per_second.is_finite())
            || (self.requests_per_second > 0.0 && self.request_burst == 0)
        {
            return Err(ConfigError::Invalid(
                "requests_per_second must be 0 (no limit) or positive, with request_burst at least 1".into(),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid("tls.cert and tls.key go together".into()));
        }
        if self.max_group_members < 2 {
            return Err(ConfigError::Invalid("max_group_members must be at least 2".into()));
        }
        if self.ephemeral.typing_per_second <= 0.0
            || self.ephemeral.typing_burst == 0
            || self.ephemeral.typing_ttl_ms == 0
        {
            return Err(ConfigError::Invalid("ephemeral typing rate and burst must be positive".into()));
        }
        if self.delivery.outbound_queue == 0 {
            return Err(ConfigError::Invalid("delivery.outbound_queue must be at least 1".into()));
        }
        self.mail.validate().map_err(|e| ConfigError::Invalid(format!("mail: {e}")))?;
        self.sms.validate().map_err(|e| ConfigError::Invalid(format!("sms: {e}")))?;
        self.media.validate().map_err(ConfigError::Invalid)?;
        self.blob.validate().map_err(|e| ConfigError::Invalid(format!("blob: {e}")))?;
        self.mls.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

/// Keys whose values are secrets: `check-config` prints `"********"` for
/// them (their `_file` variants are paths, shown as they are).
const SECRET_KEYS: &[&str] = &["client_secret", "auth_token", "smtp_password", "secret_access_key"];
const MASK: &str = "********";

impl Config {
    /// The configuration as TOML, as natterd would run with it, secrets
    /// masked (and a password in `store.url`): what `natterd check-config`
    /// prints.
    #[must_use]
    pub fn masked_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the configuration serializes");
        mask(&mut value, "");
        toml::to_string(&value).expect("a TOML table")
    }

    /// Every key with its default and the variable that sets it, as a
    /// Markdown table: what `natterd config-reference` prints, and what
    /// docs/configuration.md holds (a test keeps them equal).
    #[must_use]
    pub fn reference() -> String {
        let defaults = serde_json::to_value(Config::default()).expect("the configuration serializes");
        let mut out = String::from(
            "# natterd configuration reference\n\n\
             Generated by `natterd config-reference` from the configuration's type (a test keeps this file equal \
             to it). Every key can be set in the TOML file given with `--config` (a key `a.b` is `b` in the \
             `[a]` table) or by its variable, which wins over the file. Unset means off, or derived (see \
             README.md).\n\n| key | default | variable |\n|---|---|---|\n",
        );
        for path in known_keys() {
            let (table, key) = &path;
            let value = if table.is_empty() { &defaults[key] } else { &defaults[table][key] };
            let shown = match value {
                serde_json::Value::Null => "(unset)".to_owned(),
                other => format!("`{other}`"),
            };
            let name = if table.is_empty() { key.clone() } else { format!("{table}.{key}") };
            out.push_str(&format!("| `{name}` | {shown} | `{}` |\n", variable_name(&path)));
        }
        out
    }
}

fn mask(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                mask(v, k);
            }
        }
        toml::Value::String(s) if SECRET_KEYS.contains(&key) => *s = MASK.to_owned(),
        toml::Value::String(s) if key == "url" => *s = masked_url(s),
        _ => {}
    }
}

/// A `scheme://user:password@host/…` URL without its password, and the
/// password (`None` when it has none).
pub fn split_url_password(url: &str) -> (String, Option<String>) {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, password)) = userinfo.split_once(':') {
                return (format!("{scheme}://{user}@{host}"), Some(password.to_owned()));
            }
        }
    }
    (url.to_owned(), None)
}

/// The URL with its password masked, for printing.
pub fn masked_url(url: &str) -> String {
    match split_url_password(url) {
        (_, None) => url.to_owned(),
        (bare, Some(_)) => match bare.split_once('@') {
            Some((user, host)) => format!("{user}:{MASK}@{host}"),
            None => bare,
        },
    }
}

/// Every key a variable can set, from the defaults (a `None` is a key too).
fn known_keys() -> Vec<KeyPath> {
    let defaults = serde_json::to_value(Config::default()).expect("the configuration serializes");
    let mut keys = Vec::new();
    if let serde_json::Value::Object(root) = defaults {
        for (name, value) in root {
            match value {
                serde_json::Value::Object(table) => {
                    keys.extend(table.keys().map(|k| (name.clone(), k.clone())));
                }
                _ => keys.push((String::new(), name)),
            }
        }
    }
    keys
}

/// The variable that sets `key`: `NATTER_AUTH_LOCKOUT_MS`.
fn variable_name((table, key): &KeyPath) -> String {
    let path = if table.is_empty() { key.clone() } else { format!("{table}_{key}") };
    format!("NATTER_{}", path.to_ascii_uppercase())
}

/// Which key the variable `name` sets: `None` for a variable natterd leaves to
/// others (no `NATTER_` prefix, `NATTER_LOG`, or nothing like a natterd key).
fn env_key(name: &str, known: &[KeyPath]) -> Result<Option<KeyPath>, ConfigError> {
    let Some(rest) = name.strip_prefix("NATTER_") else {
        return Ok(None);
    };
    if NOT_CONFIG.contains(&rest) {
        return Ok(None);
    }
    let rest = rest.to_ascii_lowercase();
    if let Some(found) = known.iter().find(|path| variable_name(path) == name) {
        return Ok(Some(found.clone()));
    }
    let nearest = known.iter().min_by_key(|path| edit_distance(&variable_name(path), name));
    let in_a_table = TABLES.iter().find(|t| rest.starts_with(&format!("{t}_")));
    let close = nearest.filter(|path| edit_distance(&variable_name(path), name) <= 2);
    match (in_a_table, close) {
        (None, None) => {
            tracing::info!(variable = name, "not a natterd setting: ignored");
            Ok(None)
        }
        (Some(table), None) => {
            let keys: Vec<String> = known.iter().filter(|(t, _)| t == table).map(variable_name).collect();
            Err(ConfigError::Invalid(format!(
                "{name} is not a natterd setting; the [{table}] settings are {}",
                keys.join(", ")
            )))
        }
        (_, Some(path)) => {
            Err(ConfigError::Invalid(format!("{name} is not a natterd setting; did you mean {}?", variable_name(path))))
        }
    }
}

/// A variable's value, checked on its own so the error names the variable.
/// A value that reads as a number or boolean but belongs to a string key
/// (a numeric password, say) is taken as the string it was written as. Values
/// of secret keys are never repeated in an error.
fn check_env_value(
    name: &str,
    raw: &str,
    table: &str,
    key: &str,
    value: toml::Value,
) -> Result<toml::Value, ConfigError> {
    let fits = |value: &toml::Value| {
        let mut alone = toml::Table::new();
        if table.is_empty() {
            alone.insert(key.to_owned(), value.clone());
        } else {
            let mut t = toml::Table::new();
            t.insert(key.to_owned(), value.clone());
            alone.insert(table.to_owned(), toml::Value::Table(t));
        }
        toml::Value::Table(alone).try_into::<Config>().map(|_| ())
    };
    let error = match fits(&value) {
        Ok(()) => return Ok(value),
        Err(e) => e,
    };
    let as_string = toml::Value::String(raw.to_owned());
    if !value.is_str() && fits(&as_string).is_ok() {
        return Ok(as_string);
    }
    // 1 and 0 are how environments often say yes and no.
    let flag = match raw {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    if let Some(flag) = flag.map(toml::Value::Boolean).filter(|v| fits(v).is_ok()) {
        return Ok(flag);
    }
    let shown =
        if key.contains("password") || key.contains("secret") || key.contains("token") { "<redacted>" } else { raw };
    Err(ConfigError::Invalid(format!("{name}={shown}: {}", plain_expectation(error.message()))))
}

/// serde's "invalid type: string \"lots\", expected usize" as people say it.
fn plain_expectation(message: &str) -> String {
    let Some((_, expected)) = message.rsplit_once("expected ") else {
        return message.to_owned();
    };
    let what = match expected.trim() {
        "usize" | "u8" | "u16" | "u32" | "u64" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "true or false",
        "a sequence" => "a list, e.g. [\"a\", \"b\"]",
        "socket address" => "an address such as 127.0.0.1:7443",
        other => return format!("expected {other}"),
    };
    format!("expected {what}")
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `x = <raw>` parses numbers, booleans and arrays; anything else is a string.
    format!("x = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("x"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_off_command_lines_and_out_of_messages() {
        use super::{masked_url, split_url_password};
        let url = "postgres://natter:s3cret@db.example.org:5432/natter";
        assert_eq!(
            split_url_password(url),
            ("postgres://natter@db.example.org:5432/natter".into(), Some("s3cret".into()))
        );
        assert_eq!(masked_url(url), "postgres://natter:********@db.example.org:5432/natter");
        let plain = "postgres://postgres@127.0.0.1/test";
        assert_eq!(split_url_password(plain), (plain.into(), None));
        assert_eq!(masked_url(plain), plain);
    }

    #[test]
    fn check_config_masks_every_secret_and_the_reference_names_every_key() {
        let marker = "MARKER-not-for-printing";
        let mut c = Config::default();
        c.google.client_secret = Some(marker.into());
        c.github.client_secret = Some(marker.into());
        c.sms.auth_token = Some(marker.into());
        c.mail.smtp_password = Some(marker.into());
        c.blob.secret_access_key = Some(marker.into());
        c.store.backend = StoreBackend::Postgres;
        c.store.url = Some(format!("postgres://natter:{marker}@db.example.org/natter"));
        let shown = c.masked_toml();
        assert!(!shown.contains(marker), "{shown}");
        assert_eq!(shown.matches(MASK).count(), 6, "{shown}");
        assert!(shown.contains("postgres://natter:********@db.example.org/natter"), "{shown}");
        // What it prints is a configuration natterd reads back as it was.
        let back: Config = toml::from_str(&c.masked_toml()).unwrap();
        assert_eq!(back.store.backend, StoreBackend::Postgres);
        // Any key that looks like a secret is masked (its `_file` and `_url`
        // variants are not secrets).
        for (table, key) in known_keys() {
            let looks = ["secret", "password", "token"].iter().any(|w| key.contains(w));
            if looks && !key.ends_with("_file") && !key.ends_with("_url") {
                assert!(SECRET_KEYS.contains(&key.as_str()), "{table}.{key} looks like a secret: mask it");
            }
        }
        let reference = Config::reference();
        for path in known_keys() {
            assert!(reference.contains(&format!("`{}`", variable_name(&path))), "{path:?}");
        }
        assert!(reference.contains("| `push.idle_after_ms` | `0` | `NATTER_PUSH_IDLE_AFTER_MS` |"), "{reference}");
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.listen.port(), 7443);
        assert_eq!(c.data_dir, PathBuf::from("./natter-data"));
        assert_eq!(c.store.backend, StoreBackend::Sqlite);
    }

    #[test]
    fn file_then_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_connections = 5\n[auth]\nargon2_iterations = 3\n")
            .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("NATTER_MAX_CONNECTIONS", "7"),
                ("NATTER_AUTH_ARGON2_MEMORY_KIB", "1024"),
                ("NATTER_DATA_DIR", "/tmp/x y"),
                ("OTHER", "ignored"),
                ("NATTER_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.auth.argon2().iterations, 3);
        assert_eq!(c.auth.argon2().memory_kib, 1024);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x y"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::load(None, env(&[("NATTER_AUTH_NO_SUCH_KEY", "1")])).is_err());
        assert!(Config::load(None, env(&[("NATTER_MAX_CONNECTIONS", "lots")])).is_err());
        assert!(Config::load(None, env(&[("NATTER_STORE_BACKEND", "oracle")])).is_err());
        assert!(Config::load(None, env(&[("NATTER_TLS_CERT", "/x.pem")])).is_err());
        assert!(Config::load(None, env(&[("NATTER_STORE_BACKEND", "postgres")])).is_err(), "postgres needs a url");
        assert!(Config::load(None, env(&[("NATTER_STORE_URL", "postgres://h/db")])).is_err(), "a url without postgres");
    }

    #[test]
    fn other_programs_variables_are_left_alone_and_misspellings_are_named() {
        // The client's own variable, and one nobody defines.
        let c = Config::load(None, env(&[("NATTER_PROFILE", "/home/a/.natter"), ("NATTER_WHATEVER", "x")])).unwrap();
        assert_eq!(c.max_connections, 10_000);
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs)).unwrap_err().to_string();
        let e = err(&[("NATTER_MAX_CONECTIONS", "5")]);
        assert!(e.contains("NATTER_MAX_CONECTIONS") && e.contains("did you mean NATTER_MAX_CONNECTIONS?"), "{e}");
        let e = err(&[("NATTER_AUTH_NO_SUCH", "5")]);
        assert!(
            e.contains("NATTER_AUTH_NO_SUCH is not a natterd setting") && e.contains("NATTER_AUTH_LOCKOUT_MS"),
            "{e}"
        );
        // Keys whose default is unset are keys too.
        let c = Config::load(None, env(&[("NATTER_METRICS_LISTEN", "127.0.0.1:9464")])).unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn a_flag_is_true_false_1_or_0() {
        let c = Config::load(None, env(&[("NATTER_PUSH_ALLOW_HTTP_LOOPBACK", "1"), ("NATTER_PUSH_ENABLED", "0")]));
        let c = c.unwrap();
        assert!(c.push.allow_http_loopback && !c.push.enabled);
        let c = Config::load(None, env(&[("NATTER_PUSH_ALLOW_HTTP_LOOPBACK", "true")])).unwrap();
        assert!(c.push.allow_http_loopback);
        let e = Config::load(None, env(&[("NATTER_PUSH_ENABLED", "2")])).unwrap_err().to_string();
        assert!(e.contains("NATTER_PUSH_ENABLED=2: expected true or false"), "{e}");
        // A number key keeps its number.
        let c = Config::load(None, env(&[("NATTER_PUSH_MAX_ATTEMPTS", "1")])).unwrap();
        assert_eq!(c.push.max_attempts, 1);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = |pairs: &[(&str, &str)]| Config::load(None, env(pairs)).unwrap_err().to_string();
        assert_eq!(
            err(&[("NATTER_MAX_CONNECTIONS", "lots")]),
            "invalid configuration: NATTER_MAX_CONNECTIONS=lots: expected a whole number"
        );
        let e = err(&[("NATTER_STORE_BACKEND", "oracle")]);
        assert!(e.starts_with("invalid configuration: NATTER_STORE_BACKEND=oracle:") && e.contains("postgres"), "{e}");
        let e = err(&[("NATTER_LISTEN", "nowhere")]);
        assert!(e.starts_with("invalid configuration: NATTER_LISTEN=nowhere:"), "{e}");
    }

    #[test]
    fn a_string_key_takes_digits_as_written_and_secrets_stay_out_of_errors() {
        let c = Config::load(None, env(&[("NATTER_MAIL_SMTP_PASSWORD", "0123456789"), ("NATTER_SERVER_NAME", "42")]))
            .unwrap_err();
        // smtp settings with the console provider are refused; the value is not shown.
        assert!(!c.to_string().contains("0123456789"), "{c}");
        let c = Config::load(None, env(&[("NATTER_SERVER_NAME", "0042")])).unwrap();
        assert_eq!(c.server_name, "0042", "as written, not as the number 42");
        let e = Config::load(None, env(&[("NATTER_MAIL_SMTP_PORT", "s3cret-not-a-port")])).unwrap_err().to_string();
        assert!(e.contains("NATTER_MAIL_SMTP_PORT=s3cret-not-a-port"), "not a secret key: shown ({e})");
    }

    #[test]
    fn a_bad_file_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(&path, "[auth]\nmax_failures = \"many\"\n").unwrap();
        let e = Config::load(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(e.contains("max_failures") && e.contains("natter.toml"), "{e}");
    }

    #[test]
    fn postgres_from_the_environment() {
        let c = Config::load(
            None,
            env(&[("NATTER_STORE_BACKEND", "postgres"), ("NATTER_STORE_URL", "postgres://natter@127.0.0.1/natter")]),
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert_eq!(c.store.url.as_deref(), Some("postgres://natter@127.0.0.1/natter"));
    }

    #[test]
    fn sign_in_providers_from_the_environment_and_secrets_stay_out_of_errors() {
        let c = Config::load(
            None,
            env(&[
                ("NATTER_GOOGLE_CLIENT_ID", "1234.apps.googleusercontent.com"),
                ("NATTER_GOOGLE_CLIENT_SECRET_FILE", "/etc/natter/google-secret"),
                ("NATTER_GITHUB_CLIENT_ID", "Iv1.abc"),
                ("NATTER_GITHUB_API_BASE", "https://github.example.org/api/v3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.google.client_id.as_deref(), Some("1234.apps.googleusercontent.com"));
        assert_eq!(c.google.client_secret_file.as_deref(), Some(std::path::Path::new("/etc/natter/google-secret")));
        assert_eq!(c.google.issuer, "https://accounts.google.com");
        assert_eq!(c.github.api_base, "https://github.example.org/api/v3");
        let e =
            Config::load(None, env(&[("NATTER_GITHUB_CLIENT_SECRET", "s3cret"), ("NATTER_GITHUB_TIMEOUT_MS", "x")]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("NATTER_GITHUB_TIMEOUT_MS") && !e.contains("s3cret"), "{e}");
    }
}
