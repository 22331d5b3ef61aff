//! [`AuthState`] on PostgreSQL: the `auth_*` tables of migration 2, in the
//! database every node shares, through a small pool of its own. Checks that
//! read and then write lock their row (`FOR UPDATE`), so two nodes never both
//! accept one code or spend one try.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};

use super::sqlite::{constant_time_eq, pending};
use super::{window_start, AuthState, CodeCheck, CodePurpose, PendingChallenge, SessionActivity};
use crate::domain::{Millis, TokenHash, UserId};
use crate::store::StoreError;

/// Connections for auth state (its requests are short and few).
const POOL_SIZE: usize = 4;

pub struct PostgresAuthState {
    pool: Pool,
}

impl PostgresAuthState {
    /// A pool on `url`; the tables come from the store's migrations, which
    /// [`crate::store::postgres::PostgresStore::open`] applies first.
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        Ok(Self { pool: crate::store::postgres::connection_pool(url, POOL_SIZE)? })
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

#[async_trait]
impl AuthState for PostgresAuthState {
    async fn put_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute("DELETE FROM auth_codes WHERE expires_at_ms < $1", &[&(expires_at.0 as i64 - 86_400_000)]).await?;
        conn.execute(
            "INSERT INTO auth_codes (purpose, subject, code_hash, expires_at_ms, attempts_left)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (purpose, subject) DO UPDATE SET code_hash = excluded.code_hash,
                 expires_at_ms = excluded.expires_at_ms, attempts_left = excluded.attempts_left",
            &[&purpose.as_str(), &subject, &code_hash.as_slice(), &(expires_at.0 as i64), &(attempts as i32)],
        )
        .await?;
        Ok(())
    }

    async fn check_code(
        &self,
        purpose: CodePurpose,
        subject: &str,
        code_hash: [u8; 32],
        now: Millis,
    ) -> Result<CodeCheck, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT code_hash, expires_at_ms, attempts_left FROM auth_codes
                 WHERE purpose = $1 AND subject = $2 FOR UPDATE",
                &[&purpose.as_str(), &subject],
            )
            .await?;
        let delete = "DELETE FROM auth_codes WHERE purpose = $1 AND subject = $2";
        let answer = match row {
            None => CodeCheck::Missing,
            Some(row) => {
                let (stored, expires, left): (Vec<u8>, i64, i32) = (row.get(0), row.get(1), row.get(2));
                if expires as u64 <= now.0 || left <= 0 {
                    tx.execute(delete, &[&purpose.as_str(), &subject]).await?;
                    CodeCheck::Missing
                } else if constant_time_eq(&stored, &code_hash) {
                    tx.execute(delete, &[&purpose.as_str(), &subject]).await?;
                    CodeCheck::Accepted
                } else {
                    let left = left - 1;
                    if left == 0 {
                        tx.execute(delete, &[&purpose.as_str(), &subject]).await?;
                    } else {
                        tx.execute(
                            "UPDATE auth_codes SET attempts_left = $3 WHERE purpose = $1 AND subject = $2",
                            &[&purpose.as_str(), &subject, &left],
                        )
                        .await?;
                    }
                    CodeCheck::Wrong { attempts_left: left as u32 }
                }
            }
        };
        tx.commit().await?;
        Ok(answer)
    }

    async fn hit(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError> {
        let start = window_start(now, window) as i64;
        let row = self
            .conn()
            .await?
            .query_one(
                "INSERT INTO auth_counters (key, window_start_ms, count) VALUES ($1, $2, 1)
                 ON CONFLICT (key) DO UPDATE SET
                     count = CASE WHEN auth_counters.window_start_ms = excluded.window_start_ms
                                  THEN auth_counters.count + 1 ELSE 1 END,
                     window_start_ms = excluded.window_start_ms
                 RETURNING count",
                &[&key, &start],
            )
            .await?;
        Ok(row.get::<_, i32>(0) as u32)
    }

    async fn hits(&self, key: &str, window: Duration, now: Millis) -> Result<u32, StoreError> {
        let start = window_start(now, window) as i64;
        let row = self
            .conn()
            .await?
            .query_opt("SELECT count FROM auth_counters WHERE key = $1 AND window_start_ms = $2", &[&key, &start])
            .await?;
        Ok(row.map_or(0, |r| r.get::<_, i32>(0) as u32))
    }

    async fn use_totp_step(&self, user: UserId, step: u64) -> Result<bool, StoreError> {
        let changed = self
            .conn()
            .await?
            .execute(
                "INSERT INTO auth_totp_steps (user_id, last_step) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET last_step = excluded.last_step
                 WHERE auth_totp_steps.last_step < excluded.last_step",
                &[&user.to_string(), &(step as i64)],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn put_challenge(
        &self,
        challenge_hash: [u8; 32],
        challenge: &PendingChallenge,
        expires_at: Millis,
        attempts: u32,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute("DELETE FROM auth_challenges WHERE expires_at_ms < $1", &[&(expires_at.0 as i64 - 86_400_000)])
            .await?;
        conn.execute(
            "INSERT INTO auth_challenges (challenge_hash, user_id, device_name, method, expires_at_ms, attempts_left)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &challenge_hash.as_slice(),
                &challenge.user_id.to_string(),
                &challenge.device_name,
                &challenge.method.as_str(),
                &(expires_at.0 as i64),
                &(attempts as i32),
            ],
        )
        .await?;
        Ok(())
    }

    async fn challenge(&self, challenge_hash: [u8; 32], now: Millis) -> Result<Option<PendingChallenge>, StoreError> {
        let row = self
            .conn()
            .await?
            .query_opt(
                "SELECT user_id, device_name, method FROM auth_challenges
                 WHERE challenge_hash = $1 AND expires_at_ms > $2 AND attempts_left > 0",
                &[&challenge_hash.as_slice(), &(now.0 as i64)],
            )
            .await?;
        row.map(|r| pending(r.get(0), r.get(1), r.get(2))).transpose()
    }

    async fn challenge_failed(&self, challenge_hash: [u8; 32]) -> Result<u32, StoreError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "UPDATE auth_challenges SET attempts_left = attempts_left - 1
                 WHERE challenge_hash = $1 AND attempts_left > 0 RETURNING attempts_left",
                &[&challenge_hash.as_slice()],
            )
            .await?;
        let left = row.map_or(0, |r| r.get::<_, i32>(0).max(0) as u32);
        if left == 0 {
            conn.execute("DELETE FROM auth_challenges WHERE challenge_hash = $1", &[&challenge_hash.as_slice()])
                .await?;
        }
        Ok(left)
    }

    async fn take_challenge(&self, challenge_hash: [u8; 32]) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .await?
            .execute("DELETE FROM auth_challenges WHERE challenge_hash = $1", &[&challenge_hash.as_slice()])
            .await?;
        Ok(n == 1)
    }

    async fn touch_session(&self, token_hash: TokenHash, at: Millis, address: &str) -> Result<(), StoreError> {
        self.conn()
            .await?
            .execute(
                "INSERT INTO auth_session_activity (token_hash, last_used_ms, last_address) VALUES ($1, $2, $3)
                 ON CONFLICT (token_hash) DO UPDATE SET last_used_ms = excluded.last_used_ms,
                     last_address = excluded.last_address",
                &[&token_hash.0.as_slice(), &(at.0 as i64), &address],
            )
            .await?;
        Ok(())
    }

    async fn session_activity(
        &self,
        token_hashes: &[TokenHash],
    ) -> Result<HashMap<TokenHash, SessionActivity>, StoreError> {
        let hashes: Vec<Vec<u8>> = token_hashes.iter().map(|h| h.0.to_vec()).collect();
        let rows = self
            .conn()
            .await?
            .query(
                "SELECT token_hash, last_used_ms, last_address FROM auth_session_activity
                 WHERE token_hash = ANY($1)",
                &[&hashes],
            )
            .await?;
        let mut out = HashMap::new();
        for row in rows {
            let hash: Vec<u8> = row.get(0);
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else { continue };
            out.insert(
                TokenHash(hash),
                SessionActivity { last_used: Millis(row.get::<_, i64>(1) as u64), last_address: row.get(2) },
            );
        }
        Ok(out)
    }

    async fn check_key_id(&self, key_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO auth_meta (key, value) VALUES ('server_key_id', $1) ON CONFLICT (key) DO NOTHING",
            &[&key_id],
        )
        .await?;
        let row = conn.query_one("SELECT value FROM auth_meta WHERE key = 'server_key_id'", &[]).await?;
        Ok(row.get::<_, String>(0) == key_id)
    }

    async fn sweep(&self, now: Millis) -> Result<u64, StoreError> {
        let now = now.0 as i64;
        let counters_before = now - super::COUNTER_RETENTION.as_millis() as i64;
        let conn = self.conn().await?;
        let codes = conn.execute("DELETE FROM auth_codes WHERE expires_at_ms <= $1", &[&now]).await?;
        let challenges = conn.execute("DELETE FROM auth_challenges WHERE expires_at_ms <= $1", &[&now]).await?;
        let counters =
            conn.execute("DELETE FROM auth_counters WHERE window_start_ms < $1", &[&counters_before]).await?;
        Ok(codes + challenges + counters)
    }

    async fn forget(&self, user: UserId, subjects: Vec<String>, tokens: Vec<TokenHash>) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let id = user.to_string();
        for subject in &subjects {
            tx.execute("DELETE FROM auth_codes WHERE subject = $1", &[subject]).await?;
            tx.execute("DELETE FROM auth_counters WHERE strpos(key, $1) > 0", &[&format!(":{subject}")]).await?;
        }
        tx.execute("DELETE FROM auth_counters WHERE key = $1", &[&format!("mfa-failures:{id}")]).await?;
        tx.execute("DELETE FROM auth_totp_steps WHERE user_id = $1", &[&id]).await?;
        tx.execute("DELETE FROM auth_challenges WHERE user_id = $1", &[&id]).await?;
        let hashes: Vec<&[u8]> = tokens.iter().map(|t| t.0.as_slice()).collect();
        tx.execute("DELETE FROM auth_session_activity WHERE token_hash = ANY($1)", &[&hashes]).await?;
        tx.commit().await?;
        Ok(())
    }
}
