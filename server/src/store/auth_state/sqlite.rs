//! [`AuthState`] for the embedded store: a database file of its own beside the
//! log (`auth.db`), so its small writes never queue behind the log's group
//! commits and `rebuild` never touches it. One connection, used on the
//! blocking pool; each check runs in an immediate transaction.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{window_start, AuthState, CodeCheck, CodePurpose, PendingChallenge, SessionActivity};
use crate::domain::{Millis, SignInMethod, TokenHash, UserId};
use crate::store::StoreError;

/// The file beside the log.
pub const FILE: &str = "auth.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS auth_codes (
    purpose TEXT NOT NULL, subject TEXT NOT NULL, code_hash BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL, attempts_left INTEGER NOT NULL,
    PRIMARY KEY (purpose, subject)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_counters (
    key TEXT PRIMARY KEY, window_start_ms INTEGER NOT NULL, count INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_totp_steps (user_id TEXT PRIMARY KEY, last_step INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_challenges (
    challenge_hash BLOB PRIMARY KEY, user_id TEXT NOT NULL, device_name TEXT NOT NULL, method TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL, attempts_left INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_session_activity (
    token_hash BLOB PRIMARY KEY, last_used_ms INTEGER NOT NULL, last_address TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

pub struct SqliteAuthState {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteAuthState {
    /// Opens (creating) `<data_dir>/auth.db`.
    ///
    /// # Errors
    /// When the file cannot be opened or its schema created.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(data_dir.join(FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("auth state lock");
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Database(format!("auth state task: {e}")))?
        .map_err(StoreError::from)
    }
}

#[async_trait]
impl AuthState for SqliteAuthState {
    async fn put_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let subject = subject.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM auth_codes WHERE expires_at_ms < ?1", [expires_at.0 as i64 - 86_400_000])?;
            c.execute(
                "INSERT INTO auth_codes (purpose, subject, code_hash, expires_at_ms, attempts_left)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (purpose, subject) DO UPDATE SET code_hash = excluded.code_hash,
                     expires_at_ms = excluded.expires_at_ms, attempts_left = excluded.attempts_left",
                params![purpose.as_str(), subject, code_hash.as_slice(), expires_at.0 as i64, attempts],
            )?;
            Ok(())
        })
        .await
    }

    async fn check_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        now: Millis,
    ) -> Result<CodeCheck, StoreError> {
        let subject = subject.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(Vec<u8>, i64, u32)> = tx
                .query_row(
                    "SELECT code_hash, expires_at_ms, attempts_left FROM auth_codes WHERE purpose = ?1 AND subject = ?2",
                    params![purpose.as_str(), subject],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let delete = "DELETE FROM auth_codes WHERE purpose = ?1 AND subject = ?2";
            let answer = match row {
                None => CodeCheck::Missing,
                Some((_, expires, left)) if expires as u64 <= now.0 || left == 0 => {
                    tx.execute(delete, params![purpose.as_str(), subject])?;
                    CodeCheck::Missing
                }
                Some((stored, _, _)) if constant_time_eq(&stored, &code_hash) => {
                    tx.execute(delete, params![purpose.as_str(), subject])?;
                    CodeCheck::Accepted
                }
                Some((_, _, left)) => {
                    let left = left - 1;
                    if left == 0 {
                        tx.execute(delete, params![purpose.as_str(), subject])?;
                    } else {
                        tx.execute(
                            "UPDATE auth_codes SET attempts_left = ?3 WHERE purpose = ?1 AND subject = ?2",
                            params![purpose.as_str(), subject, left],
                        )?;
                    }
                    CodeCheck::Wrong { attempts_left: left }
                }
            };
            tx.commit()?;
            Ok(answer)
        })
        .await
    }

    async fn hit(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError> {
        let key = key.to_owned();
        let start = window_start(now, window) as i64;
        self.with(move |c| {
            c.query_row(
                "INSERT INTO auth_counters (key, window_start_ms, count) VALUES (?1, ?2, 1)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN window_start_ms = excluded.window_start_ms THEN count + 1 ELSE 1 END,
                     window_start_ms = excluded.window_start_ms
                 RETURNING count",
                params![key, start],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn hits(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError> {
        let key = key.to_owned();
        let start = window_start(now, window) as i64;
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT count FROM auth_counters WHERE key = ?1 AND window_start_ms = ?2",
                params![key, start],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    async fn use_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError> {
        self.with(move |c| {
            let changed = c.execute(
                "INSERT INTO auth_totp_steps (user_id, last_step) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET last_step = excluded.last_step
                 WHERE auth_totp_steps.last_step < excluded.last_step",
                params![user.to_string(), step as i64],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn put_challenge(
        &self,
        challenge_hash: [u8; 32],
        challenge: &PendingChallenge,
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let challenge = challenge.clone();
        self.with(move |c| {
            c.execute("DELETE FROM auth_challenges WHERE expires_at_ms < ?1", [expires_at.0 as i64 - 86_400_000])?;
            c.execute(
                "INSERT INTO auth_challenges (challenge_hash, user_id, device_name, method, expires_at_ms, attempts_left)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    challenge_hash.as_slice(),
                    challenge.user_id.to_string(),
                    challenge.device_name,
                    challenge.method.as_str(),
                    expires_at.0 as i64,
                    attempts
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn challenge(&self, challenge_hash: [u8; 32], now: Millis) -> Result<Option<PendingChallenge>, StoreError> {
        let row = self
            .with(move |c| {
                c.query_row(
                    "SELECT user_id, device_name, method FROM auth_challenges
                     WHERE challenge_hash = ?1 AND expires_at_ms > ?2 AND attempts_left > 0",
                    params![challenge_hash.as_slice(), now.0 as i64],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()
            })
            .await?;
        row.map(|(user, device_name, method)| pending(&user, device_name, &method)).transpose()
    }

    async fn challenge_failed(&self, challenge_hash: [u8; 32]) -> Result<u32, StoreError> {
        self.with(move |c| {
            let left: Option<u32> = c
                .query_row(
                    "UPDATE auth_challenges SET attempts_left = attempts_left - 1
                     WHERE challenge_hash = ?1 AND attempts_left > 0 RETURNING attempts_left",
                    [challenge_hash.as_slice()],
                    |r| r.get(0),
                )
                .optional()?;
            if left.unwrap_or(0) == 0 {
                c.execute("DELETE FROM auth_challenges WHERE challenge_hash = ?1", [challenge_hash.as_slice()])?;
            }
            Ok(left.unwrap_or(0))
        })
        .await
    }

    async fn take_challenge(&self, challenge_hash: [u8; 32]) -> Result<bool, StoreError> {
        self.with(move |c| {
            Ok(c.execute("DELETE FROM auth_challenges WHERE challenge_hash = ?1", [challenge_hash.as_slice()])? == 1)
        })
        .await
    }

    async fn touch_session(&self, token_hash: TokenHash, at: Millis, address: &str) -> Result<(), StoreError> {
        let address = address.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO auth_session_activity (token_hash, last_used_ms, last_address) VALUES (?1, ?2, ?3)
                 ON CONFLICT (token_hash) DO UPDATE SET last_used_ms = excluded.last_used_ms,
                     last_address = excluded.last_address",
                params![token_hash.0.as_slice(), at.0 as i64, address],
            )?;
            Ok(())
        })
        .await
    }

    async fn session_activity(
        &self,
        token_hashes: &[TokenHash],
    ) -> Result<HashMap<TokenHash, SessionActivity>, StoreError> {
        let hashes = token_hashes.to_vec();
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT last_used_ms, last_address FROM auth_session_activity WHERE token_hash = ?1")?;
            let mut out = HashMap::new();
            for hash in hashes {
                let row = stmt
                    .query_row([hash.0.as_slice()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .optional()?;
                if let Some((at, address)) = row {
                    out.insert(hash, SessionActivity { last_used: Millis(at as u64), last_address: address });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn check_key_id(&self, key_id: &str) -> Result<bool, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            c.execute("INSERT OR IGNORE INTO auth_meta (key, value) VALUES ('server_key_id', ?1)", [&key_id])?;
            let stored: String =
                c.query_row("SELECT value FROM auth_meta WHERE key = 'server_key_id'", [], |r| r.get(0))?;
            Ok(stored == key_id)
        })
        .await
    }

    async fn sweep(&self, now: Millis) -> Result<u64, StoreError> {
        let now = now.0 as i64;
        let counters_before = now - super::COUNTER_RETENTION.as_millis() as i64;
        self.with(move |c| {
            let codes = c.execute("DELETE FROM auth_codes WHERE expires_at_ms <= ?1", [now])?;
            let challenges = c.execute("DELETE FROM auth_challenges WHERE expires_at_ms <= ?1", [now])?;
            let counters = c.execute("DELETE FROM auth_counters WHERE window_start_ms < ?1", [counters_before])?;
            Ok((codes + challenges + counters) as u64)
        })
        .await
    }

    async fn forget(&self, user: UserId, subjects: Vec<String>, tokens: Vec<TokenHash>) -> Result<(), StoreError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let id = user.to_string();
            for subject in &subjects {
                tx.execute("DELETE FROM auth_codes WHERE subject = ?1", [subject])?;
                tx.execute("DELETE FROM auth_counters WHERE instr(key, ?1) > 0", [format!(":{subject}")])?;
            }
            tx.execute("DELETE FROM auth_counters WHERE key = ?1", [format!("mfa-failures:{id}")])?;
            tx.execute("DELETE FROM auth_totp_steps WHERE user_id = ?1", [&id])?;
            tx.execute("DELETE FROM auth_challenges WHERE user_id = ?1", [&id])?;
            for token in &tokens {
                tx.execute("DELETE FROM auth_session_activity WHERE token_hash = ?1", [token.0.as_slice()])?;
            }
            tx.commit()?;
            super::super::sqlite::truncate_wal(c)
        })
        .await
    }
}

pub(crate) fn pending(user: &str, device_name: String, method: &str) -> Result<PendingChallenge, StoreError> {
    Ok(PendingChallenge {
        user_id: UserId(
            uuid::Uuid::parse_str(user).map_err(|_| StoreError::Database("stored challenge: user id".into()))?,
        ),
        device_name,
        method: SignInMethod::parse(method).ok_or_else(|| StoreError::Database("stored challenge: method".into()))?,
    })
}

/// Compares two hashes in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
