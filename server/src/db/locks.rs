//! Leases for jobs that must run on one replica at a time (rollups, pruning, sweeps).

use super::{dispatch, Store, StoreError};

impl Store {
    /// Takes or renews the lease `name` for `ttl_ms`: true when `holder` now holds it (it was
    /// free, expired, or already this holder's). One statement, so two replicas cannot both win.
    pub async fn try_job_lock(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, p => Ok(sqlx::query(
            "INSERT INTO job_locks (name, holder, expires_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms
             WHERE job_locks.expires_at_ms <= $4 OR job_locks.holder = excluded.holder",
        )
        .bind(name).bind(holder).bind(now_ms.saturating_add(ttl_ms)).bind(now_ms)
        .execute(p).await?.rows_affected() == 1))
    }

    /// Gives a lease back early (only the holder can).
    pub async fn release_job_lock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        dispatch!(self, p => {
            sqlx::query("DELETE FROM job_locks WHERE name = $1 AND holder = $2")
                .bind(name).bind(holder).execute(p).await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_db::test_backends;

    #[tokio::test]
    async fn one_holder_at_a_time_until_expiry() {
        for db in test_backends().await {
            let s = &db.store;
            assert!(s.try_job_lock("rollup", "a", 1000, 0).await.unwrap());
            assert!(!s.try_job_lock("rollup", "b", 1000, 500).await.unwrap());
            assert!(s.try_job_lock("rollup", "a", 1000, 900).await.unwrap());
            assert!(!s.try_job_lock("rollup", "b", 1000, 1800).await.unwrap());
            assert!(s.try_job_lock("rollup", "b", 1000, 1900).await.unwrap());
            assert!(s.try_job_lock("prune", "a", 1000, 1900).await.unwrap());
            s.release_job_lock("rollup", "a").await.unwrap();
            assert!(!s.try_job_lock("rollup", "a", 1000, 1950).await.unwrap());
            s.release_job_lock("rollup", "b").await.unwrap();
            assert!(s.try_job_lock("rollup", "a", 1000, 1950).await.unwrap());
            db.cleanup().await;
        }
    }
}
