//! Share accounting per pool: what was accepted, rejected (by the pool's code), stale, dropped
//! or never answered, how long answers took, and the best share.
//!
//! Plain counters with no I/O, so that the client, telemetry and tests read the same numbers.
//!
//! Conventions:
//! - A share found on a job that `clean_jobs` already replaced is **stale** and, by default,
//!   not submitted: the pool would answer 21 (job not found) and the share is worth nothing, so
//!   sending it only costs the pool work (cgminer also discards such shares unless told
//!   otherwise). A pool option submits them anyway; a pool answer 21 is counted as stale too,
//!   never as rejected, so `rejected` holds only shares the pool found fault with.
//! - A share found on a job of a pool connection that is gone is **dropped**: there is no
//!   connection to submit it on.
//! - A share whose answer never came (timeout, or the connection closed first) is
//!   **unanswered**.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::message::StratumError;

/// Different rejection codes kept apart; further unknown codes are folded into code 20 so a
/// pool cannot grow the map without bound.
const MAX_REJECT_CODES: usize = 16;
/// Longest rejection reason kept (pool text ends up in telemetry).
const MAX_REASON_CHARS: usize = 200;

/// Why a share counts as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleKind {
    /// Found on a job that a `clean_jobs` notify had replaced; not submitted.
    Replaced,
    /// The pool answered 21 (job not found).
    PoolSaidStale,
}

/// What became of one share.
#[derive(Clone, Debug, PartialEq)]
pub enum ShareOutcome {
    /// The pool accepted it.
    Accepted,
    /// The pool refused it with this error (never code 21, see [`ShareOutcome::Stale`]).
    Rejected(StratumError),
    /// Too late to count.
    Stale(StaleKind),
    /// Not submitted: its pool connection is gone, or the connection's queue was full.
    Dropped,
    /// Submitted, but no answer came.
    Unanswered,
}

impl ShareOutcome {
    /// Classifies a pool's answer to `mining.submit`.
    pub fn from_answer(answer: Result<(), StratumError>) -> Self {
        match answer {
            Ok(()) => ShareOutcome::Accepted,
            Err(e) if e.code == StratumError::JOB_NOT_FOUND => {
                ShareOutcome::Stale(StaleKind::PoolSaidStale)
            }
            Err(e) => ShareOutcome::Rejected(e),
        }
    }
}

impl std::fmt::Display for ShareOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShareOutcome::Accepted => f.write_str("accepted"),
            ShareOutcome::Rejected(e) => write!(f, "rejected: {e}"),
            ShareOutcome::Stale(StaleKind::Replaced) => f.write_str("stale (job replaced)"),
            ShareOutcome::Stale(StaleKind::PoolSaidStale) => {
                f.write_str("stale (pool: job not found)")
            }
            ShareOutcome::Dropped => f.write_str("dropped"),
            ShareOutcome::Unanswered => f.write_str("unanswered"),
        }
    }
}

/// Rejections with one code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectTally {
    /// How many.
    pub count: u64,
    /// The pool's text of the last one.
    pub last_reason: String,
}

/// Last / average / maximum of a duration series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyStats {
    /// Samples so far.
    pub count: u64,
    /// The latest sample.
    pub last: Duration,
    /// The largest sample.
    pub max: Duration,
    /// Sum of samples, for the average.
    pub total: Duration,
}

impl LatencyStats {
    /// Adds a sample.
    pub fn record(&mut self, sample: Duration) {
        self.count += 1;
        self.last = sample;
        self.max = self.max.max(sample);
        self.total = self.total.saturating_add(sample);
    }

    /// The mean, zero without samples.
    pub fn avg(&self) -> Duration {
        match u32::try_from(self.count) {
            Ok(0) => Duration::ZERO,
            Ok(n) => self.total / n,
            Err(_) => Duration::from_secs_f64(self.total.as_secs_f64() / self.count as f64),
        }
    }
}

/// The two difficulties of one share.
///
/// A pool credits a share with the difficulty it asked for when it sent the job (the share
/// target), however far below that target the hash happens to fall; "Difficulty Accepted" sums
/// that. How far below is luck, and only feeds the best-share figure.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShareDifficulty {
    /// The difficulty the share was submitted against: the pool's difficulty for its job.
    pub pool: f64,
    /// The difficulty of the share's own hash (at least [`ShareDifficulty::pool`] for a share
    /// that meets its target).
    pub hash: f64,
}

/// Share counters of one pool (over every connection to it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShareStats {
    /// Sent with `mining.submit`.
    pub submitted: u64,
    /// Accepted by the pool.
    pub accepted: u64,
    /// Sum of the pool difficulty of accepted shares (the work the pool credits).
    pub accepted_difficulty: f64,
    /// Rejected by the pool, by error code (20 other, 22 duplicate, 23 low difficulty,
    /// 24 unauthorized, 25 not subscribed, or the pool's own codes); 21 is counted as stale.
    pub rejected: BTreeMap<i64, RejectTally>,
    /// Found on a replaced job, or answered 21.
    pub stale: u64,
    /// Never submitted: the pool connection of its job was gone.
    pub dropped: u64,
    /// Submitted without an answer (timed out, or the connection closed first).
    pub unanswered: u64,
    /// From `mining.submit` to the pool's answer.
    pub latency: LatencyStats,
    /// Highest difficulty of an accepted share's own hash (the best share).
    pub best_difficulty: f64,
}

impl ShareStats {
    /// Every rejected share, whatever its code.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().map(|t| t.count).sum()
    }

    /// Rejections with one code.
    pub fn rejected_with(&self, code: i64) -> u64 {
        self.rejected.get(&code).map_or(0, |t| t.count)
    }

    /// Counts a share that was sent.
    pub fn record_submitted(&mut self) {
        self.submitted += 1;
    }

    /// Counts what became of a share: `difficulty` holds the pool difficulty it was submitted
    /// against (summed into [`ShareStats::accepted_difficulty`]) and its hash's own (for
    /// [`ShareStats::best_difficulty`]); `latency` is the time to the pool's answer when there
    /// was one.
    pub fn record(
        &mut self,
        outcome: &ShareOutcome,
        difficulty: ShareDifficulty,
        latency: Option<Duration>,
    ) {
        if let Some(latency) = latency {
            self.latency.record(latency);
        }
        match outcome {
            ShareOutcome::Accepted => {
                self.accepted += 1;
                if difficulty.pool.is_finite() && difficulty.pool > 0.0 {
                    self.accepted_difficulty += difficulty.pool;
                }
                if difficulty.hash.is_finite() {
                    self.best_difficulty = self.best_difficulty.max(difficulty.hash);
                }
            }
            ShareOutcome::Rejected(e) => {
                let code = if self.rejected.contains_key(&e.code)
                    || self.rejected.len() < MAX_REJECT_CODES
                {
                    e.code
                } else {
                    StratumError::OTHER
                };
                let tally = self.rejected.entry(code).or_default();
                tally.count += 1;
                tally.last_reason = e.message.chars().take(MAX_REASON_CHARS).collect();
            }
            ShareOutcome::Stale(_) => self.stale += 1,
            ShareOutcome::Dropped => self.dropped += 1,
            ShareOutcome::Unanswered => self.unanswered += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_code() {
        let mut s = ShareStats::default();
        let answers = [
            Ok(()),
            Ok(()),
            Err(StratumError::new(21, "Job not found")),
            Err(StratumError::new(22, "Duplicate share")),
            Err(StratumError::new(23, "Low difficulty share")),
            Err(StratumError::new(23, "Low difficulty share (again)")),
            Err(StratumError::new(24, "Unauthorized worker")),
            Err(StratumError::new(25, "Not subscribed")),
            Err(StratumError::new(20, "Other")),
        ];
        for (i, answer) in answers.into_iter().enumerate() {
            s.record_submitted();
            let outcome = ShareOutcome::from_answer(answer);
            s.record(
                &outcome,
                ShareDifficulty {
                    pool: i as f64 + 1.0,
                    hash: 10.0 * (i as f64 + 1.0),
                },
                Some(Duration::from_millis(10 * (i as u64 + 1))),
            );
        }
        assert_eq!(s.submitted, 9);
        assert_eq!(s.accepted, 2);
        assert_eq!(
            s.accepted_difficulty, 3.0,
            "the pool difficulty, not the hash's"
        );
        assert_eq!(
            s.best_difficulty, 20.0,
            "only accepted shares count as best"
        );
        assert_eq!(s.stale, 1, "21 is stale, not rejected");
        assert_eq!(s.rejected_with(21), 0);
        assert_eq!(s.rejected_with(22), 1);
        assert_eq!(s.rejected_with(23), 2);
        assert_eq!(s.rejected[&23].last_reason, "Low difficulty share (again)");
        assert_eq!(s.rejected_with(24), 1);
        assert_eq!(s.rejected_with(25), 1);
        assert_eq!(s.rejected_with(20), 1);
        assert_eq!(s.rejected_total(), 6);
        assert_eq!(s.latency.count, 9);
        assert_eq!(s.latency.last, Duration::from_millis(90));
        assert_eq!(s.latency.max, Duration::from_millis(90));
        assert_eq!(s.latency.avg(), Duration::from_millis(50));
    }

    #[test]
    fn local_outcomes_have_their_own_counters() {
        let mut s = ShareStats::default();
        let d = ShareDifficulty {
            pool: 1.0,
            hash: 1.0,
        };
        s.record(&ShareOutcome::Stale(StaleKind::Replaced), d, None);
        s.record(&ShareOutcome::Dropped, d, None);
        s.record(&ShareOutcome::Unanswered, d, None);
        assert_eq!((s.stale, s.dropped, s.unanswered), (1, 1, 1));
        assert_eq!((s.accepted, s.rejected_total(), s.latency.count), (0, 0, 0));
    }

    #[test]
    fn unknown_codes_cannot_grow_the_map_without_bound() {
        let mut s = ShareStats::default();
        for code in 100..200 {
            s.record(
                &ShareOutcome::Rejected(StratumError::new(code, "x".repeat(1000))),
                ShareDifficulty::default(),
                None,
            );
        }
        assert!(s.rejected.len() <= MAX_REJECT_CODES + 1);
        assert_eq!(s.rejected_total(), 100);
        assert!(s
            .rejected
            .values()
            .all(|t| t.last_reason.len() <= MAX_REASON_CHARS));
    }
}
