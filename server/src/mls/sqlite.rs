//! [`KeyPackageStore`] for the embedded store: a database file of its own
//! beside the log (`mls.db`), so claims never queue behind the log's group
//! commits and `rebuild` never touches it. Every change is fsynced before it
//! is answered (`synchronous = FULL`): a claimed package is gone for good,
//! even after a crash. One connection, used on the blocking pool; each
//! publication and claim is one immediate transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{Claimed, KeyPackageStore, Publication, PublishError, Stock};
use crate::domain::{DeviceId, Millis};
use crate::store::StoreError;

/// The file beside the log.
pub const FILE: &str = "mls.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mls_key_packages (
    device_id TEXT NOT NULL, package_ref BLOB NOT NULL, user_id TEXT NOT NULL, signature_key BLOB NOT NULL,
    last_resort INTEGER NOT NULL, not_after_ms INTEGER NOT NULL, published_at_ms INTEGER NOT NULL,
    package BLOB NOT NULL,
    PRIMARY KEY (device_id, package_ref)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mls_key_packages_to_claim
    ON mls_key_packages (device_id, last_resort, published_at_ms);
";

pub struct SqliteKeyPackages {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteKeyPackages {
    /// Opens (creating) `<data_dir>/mls.db`.
    ///
    /// # Errors
    /// When the file cannot be opened or its schema created.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(data_dir.join(FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("key package store lock");
            f(&mut conn)
        })
        .await
        .map_err(|e| Failure::Store(StoreError::Database(format!("key package task: {e}"))))?
    }
}

/// A publication's failure inside the blocking task.
enum Failure {
    Full { would: u32, capacity: u32 },
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Store(e.into())
    }
}

impl From<Failure> for PublishError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Full { would, capacity } => PublishError::Full { would, capacity },
            Failure::Store(e) => PublishError::Store(e),
        }
    }
}

fn store_only(f: Failure) -> StoreError {
    match f {
        Failure::Store(e) => e,
        Failure::Full { .. } => StoreError::Database("a stock limit outside a publication".into()),
    }
}

fn stock_of(c: &Connection, device: &str, key: &[u8], now: Millis) -> Result<Stock, rusqlite::Error> {
    let (remaining, last_resort): (i64, i64) = c
        .prepare_cached(
            "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0) FROM mls_key_packages
             WHERE device_id = ?1 AND signature_key = ?2 AND not_after_ms > ?3",
        )?
        .query_row(params![device, key, now.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(Stock { remaining: remaining as u32, has_last_resort: last_resort > 0 })
}

#[async_trait]
impl KeyPackageStore for SqliteKeyPackages {
    async fn publish(&self, publication: Publication, capacity: u32, now: Millis) -> Result<Stock, PublishError> {
        let Publication { user, device, signature_key, packages, last_resort } = publication;
        let (device, user, key) = (device.to_string(), user.to_string(), signature_key);
        Ok(self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                // The device's earlier key's packages, and expired ones, go first.
                tx.prepare_cached(
                    "DELETE FROM mls_key_packages WHERE device_id = ?1 AND (signature_key != ?2 OR not_after_ms <= ?3)",
                )?
                .execute(params![device, key, now.0 as i64])?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO mls_key_packages (device_id, package_ref, user_id, signature_key, last_resort,
                         not_after_ms, published_at_ms, package)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                )?;
                for p in &packages {
                    insert.execute(params![
                        device,
                        p.package_ref,
                        user,
                        key,
                        false,
                        p.not_after.0 as i64,
                        now.0 as i64,
                        p.bytes
                    ])?;
                }
                drop(insert);
                let stock = stock_of(&tx, &device, &key, now)?;
                if !packages.is_empty() && stock.remaining > capacity {
                    return Err(Failure::Full { would: stock.remaining, capacity });
                }
                if let Some(p) = &last_resort {
                    tx.prepare_cached("DELETE FROM mls_key_packages WHERE device_id = ?1 AND last_resort = 1")?
                        .execute([&device])?;
                    tx.prepare_cached(
                        "INSERT INTO mls_key_packages (device_id, package_ref, user_id, signature_key, last_resort,
                             not_after_ms, published_at_ms, package)
                         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)
                         ON CONFLICT (device_id, package_ref) DO UPDATE SET last_resort = 1",
                    )?
                    .execute(params![
                        device,
                        p.package_ref,
                        user,
                        key,
                        p.not_after.0 as i64,
                        now.0 as i64,
                        p.bytes
                    ])?;
                }
                let stock = stock_of(&tx, &device, &key, now)?;
                tx.commit()?;
                Ok(stock)
            })
            .await?)
    }

    async fn stock(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Stock, StoreError> {
        let (device, key) = (device.to_string(), signature_key.to_vec());
        self.with(move |c| Ok(stock_of(c, &device, &key, now)?)).await.map_err(store_only)
    }

    async fn claim(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Option<Claimed>, StoreError> {
        let (device, key) = (device.to_string(), signature_key.to_vec());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pick = |last_resort: bool| -> Result<Option<(Vec<u8>, Vec<u8>)>, rusqlite::Error> {
                tx.prepare_cached(
                    "SELECT package_ref, package FROM mls_key_packages
                     WHERE device_id = ?1 AND signature_key = ?2 AND last_resort = ?3 AND not_after_ms > ?4
                     ORDER BY published_at_ms, package_ref LIMIT 1",
                )?
                .query_row(params![device, key, last_resort, now.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
            };
            let (bytes, last_resort) = match pick(false)? {
                Some((package_ref, bytes)) => {
                    tx.prepare_cached("DELETE FROM mls_key_packages WHERE device_id = ?1 AND package_ref = ?2")?
                        .execute(params![device, package_ref])?;
                    (bytes, false)
                }
                None => match pick(true)? {
                    Some((_, bytes)) => (bytes, true),
                    None => return Ok(None),
                },
            };
            let stock = stock_of(&tx, &device, &key, now)?;
            tx.commit()?;
            Ok(Some(Claimed { bytes, last_resort, stock }))
        })
        .await
        .map_err(store_only)
    }

    async fn sweep(&self, now: Millis) -> Result<u64, StoreError> {
        self.with(move |c| {
            Ok(c.prepare_cached("DELETE FROM mls_key_packages WHERE not_after_ms <= ?1")?.execute([now.0 as i64])?
                as u64)
        })
        .await
        .map_err(store_only)
    }

    async fn forget(&self, user: crate::domain::UserId) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute("DELETE FROM mls_key_packages WHERE user_id = ?1", [user.to_string()])?;
            crate::store::sqlite::truncate_wal(c)?;
            Ok(())
        })
        .await
        .map_err(store_only)
    }
}
