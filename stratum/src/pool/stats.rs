//! What the pool counts: per worker shares by outcome and difficulty-weighted work, and per pool
//! connections and bad input.
//!
//! One lock-protected book shared by every session; tests and the `pool` command read snapshots,
//! and `PoolHandle::wait_for_stats` lets a test wait for a condition without a sleep loop.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Counters of one worker (the name given in `mining.authorize`), summed over its connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerStats {
    /// Accepted shares.
    pub accepted: u64,
    /// Rejected shares by Stratum error code (20–25); stale shares are counted here under 21
    /// as well as in `stale`.
    pub rejected: BTreeMap<i64, u64>,
    /// Shares for a job that existed but was replaced by a new block or aged out (a subset of
    /// `rejected[21]`).
    pub stale: u64,
    /// Sum of the difficulties accepted shares were credited at: the work done, in units of
    /// difficulty-1 shares (2^32 hashes for SHA-256d, 2^16 for Scrypt).
    pub accepted_work: f64,
    /// Highest difficulty of any accepted share's hash.
    pub best_share_difficulty: f64,
    /// Accepted shares that also met the network target.
    pub blocks: u64,
}

impl WorkerStats {
    /// Every rejected share.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Rejected shares with one code.
    pub fn rejected_with(&self, code: i64) -> u64 {
        self.rejected.get(&code).copied().unwrap_or(0)
    }

    fn add(&mut self, other: &WorkerStats) {
        self.accepted += other.accepted;
        for (code, n) in &other.rejected {
            *self.rejected.entry(*code).or_default() += n;
        }
        self.stale += other.stale;
        self.accepted_work += other.accepted_work;
        self.best_share_difficulty = self.best_share_difficulty.max(other.best_share_difficulty);
        self.blocks += other.blocks;
    }
}

/// A snapshot of the pool's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolStats {
    /// Per worker name.
    pub workers: BTreeMap<String, WorkerStats>,
    /// Share rejections that cannot be put on an authorized worker (codes 24 and 25, and
    /// malformed submits naming no authorized worker): counting them per claimed name would let
    /// any client grow the table.
    pub unattributed_rejects: BTreeMap<i64, u64>,
    /// Open connections now.
    pub connections: usize,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections closed at once because the pool was at its connection limit.
    pub connections_refused: u64,
    /// Lines that were not JSON-RPC, or over the length limit.
    pub malformed_lines: u64,
    /// Requests with a method the pool does not handle.
    pub unknown_methods: u64,
    /// Shares where the two header builders disagreed (must stay 0; see `validate`).
    pub internal_errors: u64,
    /// Jobs made since start.
    pub jobs: u64,
    /// Height of the block being worked on.
    pub height: u64,
    /// The newest job's id.
    pub current_job_id: String,
}

impl PoolStats {
    /// Counters summed over every worker.
    pub fn totals(&self) -> WorkerStats {
        let mut t = WorkerStats::default();
        for w in self.workers.values() {
            t.add(w);
        }
        t
    }

    /// One worker's counters (zeros if it never authorized).
    pub fn worker(&self, name: &str) -> WorkerStats {
        self.workers.get(name).cloned().unwrap_or_default()
    }
}

/// What happened to one share, for [`StatsBook::record_share`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ShareOutcome {
    /// Accepted at `credited` difficulty.
    Accepted {
        credited: f64,
        share_difficulty: f64,
        is_block: bool,
    },
    /// Rejected with a code; `stale` when the job was known but replaced.
    Rejected { code: i64, stale: bool },
}

/// The shared book.
#[derive(Debug, Default)]
pub(crate) struct StatsBook {
    stats: Mutex<PoolStats>,
    changed: tokio::sync::Notify,
}

impl StatsBook {
    fn lock(&self) -> MutexGuard<'_, PoolStats> {
        // Counters stay meaningful even if a holder panicked mid-update.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a change and wakes waiters.
    pub(crate) fn update(&self, f: impl FnOnce(&mut PoolStats)) {
        f(&mut self.lock());
        self.changed.notify_waiters();
    }

    /// A copy of the counters.
    pub(crate) fn snapshot(&self) -> PoolStats {
        self.lock().clone()
    }

    /// Makes sure a worker appears in the table (on successful authorization).
    pub(crate) fn add_worker(&self, worker: &str) {
        self.update(|s| {
            s.workers.entry(worker.to_string()).or_default();
        });
    }

    /// Counts a share for an authorized worker, or as unattributed when there is none.
    pub(crate) fn record_share(&self, worker: Option<&str>, outcome: ShareOutcome) {
        self.update(|s| {
            let entry = match worker {
                Some(name) => s.workers.get_mut(name),
                None => None,
            };
            match (entry, outcome) {
                (
                    Some(w),
                    ShareOutcome::Accepted {
                        credited,
                        share_difficulty,
                        is_block,
                    },
                ) => {
                    w.accepted += 1;
                    w.accepted_work += credited;
                    w.best_share_difficulty = w.best_share_difficulty.max(share_difficulty);
                    w.blocks += u64::from(is_block);
                }
                (Some(w), ShareOutcome::Rejected { code, stale }) => {
                    *w.rejected.entry(code).or_default() += 1;
                    w.stale += u64::from(stale);
                }
                (None, ShareOutcome::Rejected { code, .. }) => {
                    *s.unattributed_rejects.entry(code).or_default() += 1;
                }
                (None, ShareOutcome::Accepted { .. }) => {
                    // Sessions accept shares only from authorized workers, which are in the
                    // table; nothing to count otherwise.
                }
            }
        });
    }

    /// Waits until `pred` holds for a snapshot, up to `timeout`; the last snapshot either way.
    pub(crate) async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&PoolStats) -> bool,
    ) -> Result<PoolStats, PoolStats> {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before the check, so an update between check and wait is not lost.
            let notified = self.changed.notified();
            let snap = self.snapshot();
            if pred(&snap) {
                return Ok(snap);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                let snap = self.snapshot();
                return if pred(&snap) { Ok(snap) } else { Err(snap) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_counted_per_worker_and_unknown_workers_apart() {
        let book = StatsBook::default();
        book.add_worker("a.1");
        book.record_share(
            Some("a.1"),
            ShareOutcome::Accepted {
                credited: 0.5,
                share_difficulty: 3.0,
                is_block: false,
            },
        );
        book.record_share(
            Some("a.1"),
            ShareOutcome::Accepted {
                credited: 0.5,
                share_difficulty: 1.0,
                is_block: true,
            },
        );
        book.record_share(
            Some("a.1"),
            ShareOutcome::Rejected {
                code: 21,
                stale: true,
            },
        );
        book.record_share(
            Some("a.1"),
            ShareOutcome::Rejected {
                code: 23,
                stale: false,
            },
        );
        book.record_share(
            Some("ghost"),
            ShareOutcome::Rejected {
                code: 24,
                stale: false,
            },
        );
        book.record_share(
            None,
            ShareOutcome::Rejected {
                code: 25,
                stale: false,
            },
        );
        let s = book.snapshot();
        let w = s.worker("a.1");
        assert_eq!(w.accepted, 2);
        assert_eq!(w.accepted_work, 1.0);
        assert_eq!(w.best_share_difficulty, 3.0);
        assert_eq!(w.blocks, 1);
        assert_eq!(w.stale, 1);
        assert_eq!(w.rejected_with(21), 1);
        assert_eq!(w.rejected_total(), 2);
        assert!(!s.workers.contains_key("ghost"));
        assert_eq!(s.unattributed_rejects.get(&24), Some(&1));
        assert_eq!(s.unattributed_rejects.get(&25), Some(&1));
        assert_eq!(s.totals().accepted, 2);
    }

    #[tokio::test]
    async fn wait_for_sees_a_later_update_and_times_out_otherwise() {
        let book = std::sync::Arc::new(StatsBook::default());
        let b = book.clone();
        let waiter = tokio::spawn(async move {
            b.wait_for(Duration::from_secs(5), |s| s.malformed_lines == 2)
                .await
        });
        tokio::task::yield_now().await;
        book.update(|s| s.malformed_lines += 1);
        book.update(|s| s.malformed_lines += 1);
        assert!(waiter.await.unwrap().is_ok());
        let r = book
            .wait_for(Duration::from_millis(20), |s| s.malformed_lines == 3)
            .await;
        assert!(r.is_err());
    }
}
