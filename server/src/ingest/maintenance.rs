//! The periodic rollup and retention job. Every replica runs the loop; the database lease
//! makes sure one of them does the work each round.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::db::{prune, run_rollups, Retention, Store};

/// Name of the lease in `job_locks`.
pub const MAINTENANCE_LOCK: &str = "telemetry-maintenance";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Runs one round if this holder gets the lease: rollups first (so raw rows are rolled up
/// before retention removes them), then pruning. Returns false when another holder has it.
pub async fn maintenance_round(
    store: &Store,
    holder_id: &str,
    lease_ms: i64,
    retention: &Retention,
    now_ms: i64,
) -> Result<bool, crate::db::StoreError> {
    if !store
        .try_job_lock(MAINTENANCE_LOCK, holder_id, lease_ms, now_ms)
        .await?
    {
        return Ok(false);
    }
    let rolled = run_rollups(store, now_ms).await?;
    let pruned = prune(store, now_ms, retention).await?;
    tracing::debug!(?rolled, ?pruned, "telemetry maintenance");
    Ok(true)
}

/// Runs [`maintenance_round`] every `interval` until the task is aborted. Errors are logged
/// and the next round tries again.
pub fn spawn_maintenance(
    store: Store,
    interval: Duration,
    retention: Retention,
    holder_id: String,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The lease outlives a round comfortably but lapses soon after a holder dies.
        let lease_ms = i64::try_from(interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) =
                maintenance_round(&store, &holder_id, lease_ms, &retention, now_ms()).await
            {
                tracing::warn!(error = %e, "telemetry maintenance failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::rigs::tests::one_rig;
    use crate::db::telemetry::tests::{sample, write};
    use crate::db::test_db::test_backends;
    use crate::db::Resolution;

    #[tokio::test]
    async fn only_the_lease_holder_runs_a_round() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 2).await;
            // Both samples in one minute bucket, wherever in the minute the test starts.
            let t = (now_ms() - 10 * 60_000) / 60_000 * 60_000;
            write(s, rig, &[sample(1, t, 2, 0), sample(2, t + 10_000, 2, 5)]).await;
            let ret = Retention::default();
            assert!(maintenance_round(s, "replica-a", 60_000, &ret, now_ms())
                .await
                .unwrap());
            assert!(!maintenance_round(s, "replica-b", 60_000, &ret, now_ms())
                .await
                .unwrap());
            let h = s.history(rig, t - 60_000, t + 7 * 3_600_000).await.unwrap();
            assert_eq!((h.resolution, h.points.len()), (Resolution::Minute, 1));
            db.cleanup().await;
        }
    }

    #[tokio::test]
    async fn the_spawned_job_rolls_up_and_prunes() {
        for db in test_backends().await {
            let s = &db.store;
            let rig = one_rig(s, "a", 1).await;
            // Both samples in one minute bucket, wherever in the minute the test starts.
            let t = (now_ms() - 10 * 60_000) / 60_000 * 60_000;
            write(s, rig, &[sample(1, t, 1, 0), sample(2, t + 10_000, 1, 5)]).await;
            let ret = Retention {
                raw_ms: 60_000,
                ..Retention::default()
            };
            let job = spawn_maintenance(s.clone(), Duration::from_millis(50), ret, "me".into());
            let mut done = false;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let raw_gone = s.raw_seq_stats(rig).await.unwrap().0 == 0;
                let minutes = s
                    .history(rig, t - 60_000, t + 7 * 3_600_000)
                    .await
                    .unwrap()
                    .points;
                if raw_gone && minutes.len() == 1 && minutes[0].accepted == 5 {
                    done = true;
                    break;
                }
            }
            job.abort();
            assert!(done, "rollup and prune did not happen");
            db.cleanup().await;
        }
    }
}
