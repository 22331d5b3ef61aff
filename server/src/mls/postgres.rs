//! [`KeyPackageStore`] on PostgreSQL: `mls_key_packages` (migration 7), in the
//! database every node shares, through a small pool of its own. A claim is
//! one `DELETE … RETURNING` of a row picked `FOR UPDATE SKIP LOCKED`, so two
//! claims on any nodes never get the same package and never wait on each
//! other; a device's publications take a transaction-scoped advisory lock on
//! the device, so its capacity holds against concurrent ones.

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::GenericClient;

use super::{Claimed, KeyPackageStore, Publication, PublishError, Stock};
use crate::domain::{DeviceId, Millis};
use crate::store::StoreError;

/// Connections for KeyPackages (their requests are short).
const POOL_SIZE: usize = 4;

pub struct PostgresKeyPackages {
    pool: Pool,
}

impl PostgresKeyPackages {
    /// A pool on `url`; the table comes from the store's migrations, which
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

async fn stock_of(c: &impl GenericClient, device: &str, key: &[u8], now: Millis) -> Result<Stock, StoreError> {
    let row = c
        .query_one(
            "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COUNT(*) FILTER (WHERE last_resort)
             FROM mls_key_packages WHERE device_id = $1 AND signature_key = $2 AND not_after_ms > $3",
            &[&device, &key, &(now.0 as i64)],
        )
        .await?;
    Ok(Stock { remaining: row.get::<_, i64>(0) as u32, has_last_resort: row.get::<_, i64>(1) > 0 })
}

const INSERT: &str = "INSERT INTO mls_key_packages
    (device_id, package_ref, user_id, signature_key, last_resort, not_after_ms, published_at_ms, package)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

#[async_trait]
impl KeyPackageStore for PostgresKeyPackages {
    async fn publish(&self, publication: Publication, capacity: u32, now: Millis) -> Result<Stock, PublishError> {
        let Publication { user, device, signature_key, packages, last_resort } = publication;
        let (device, user, signature_key) = (device.to_string(), user.to_string(), signature_key.as_slice());
        let at = now.0 as i64;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(StoreError::from)?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[&device])
            .await
            .map_err(StoreError::from)?;
        tx.execute(
            "DELETE FROM mls_key_packages WHERE device_id = $1 AND (signature_key <> $2 OR not_after_ms <= $3)",
            &[&device, &signature_key, &at],
        )
        .await
        .map_err(StoreError::from)?;
        let insert = format!("{INSERT} ON CONFLICT DO NOTHING");
        for p in &packages {
            tx.execute(
                &insert,
                &[&device, &p.package_ref, &user, &signature_key, &false, &(p.not_after.0 as i64), &at, &p.bytes],
            )
            .await
            .map_err(StoreError::from)?;
        }
        let stock = stock_of(&*tx, &device, signature_key, now).await?;
        if !packages.is_empty() && stock.remaining > capacity {
            // Dropping the transaction rolls it back.
            return Err(PublishError::Full { would: stock.remaining, capacity });
        }
        if let Some(p) = &last_resort {
            tx.execute("DELETE FROM mls_key_packages WHERE device_id = $1 AND last_resort", &[&device])
                .await
                .map_err(StoreError::from)?;
            tx.execute(
                &format!("{INSERT} ON CONFLICT (device_id, package_ref) DO UPDATE SET last_resort = TRUE"),
                &[&device, &p.package_ref, &user, &signature_key, &true, &(p.not_after.0 as i64), &at, &p.bytes],
            )
            .await
            .map_err(StoreError::from)?;
        }
        let stock = stock_of(&*tx, &device, signature_key, now).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(stock)
    }

    async fn stock(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Stock, StoreError> {
        let conn = self.conn().await?;
        stock_of(&**conn, &device.to_string(), signature_key, now).await
    }

    async fn claim(&self, device: DeviceId, signature_key: &[u8], now: Millis) -> Result<Option<Claimed>, StoreError> {
        let device = device.to_string();
        let at = now.0 as i64;
        let conn = self.conn().await?;
        let taken = conn
            .query_opt(
                "DELETE FROM mls_key_packages WHERE (device_id, package_ref) = (
                     SELECT device_id, package_ref FROM mls_key_packages
                     WHERE device_id = $1 AND signature_key = $2 AND NOT last_resort AND not_after_ms > $3
                     ORDER BY published_at_ms, package_ref LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING package",
                &[&device, &signature_key, &at],
            )
            .await?;
        let (bytes, last_resort) = match taken {
            Some(row) => (row.get::<_, Vec<u8>>(0), false),
            None => {
                let row = conn
                    .query_opt(
                        "SELECT package FROM mls_key_packages
                         WHERE device_id = $1 AND signature_key = $2 AND last_resort AND not_after_ms > $3",
                        &[&device, &signature_key, &at],
                    )
                    .await?;
                match row {
                    Some(row) => (row.get::<_, Vec<u8>>(0), true),
                    None => return Ok(None),
                }
            }
        };
        let stock = stock_of(&**conn, &device, signature_key, now).await?;
        Ok(Some(Claimed { bytes, last_resort, stock }))
    }

    async fn sweep(&self, now: Millis) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        Ok(conn.execute("DELETE FROM mls_key_packages WHERE not_after_ms <= $1", &[&(now.0 as i64)]).await?)
    }

    async fn forget(&self, user: crate::domain::UserId) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute("DELETE FROM mls_key_packages WHERE user_id = $1", &[&user.to_string()]).await?;
        Ok(())
    }
}
