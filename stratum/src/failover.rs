//! Which pool to use when: the priority order, per-pool exponential backoff with full jitter, and
//! when to probe a better pool. Pure bookkeeping over instants, with no I/O, so the policy is
//! tested without sockets or sleeping; [`crate::client`] acts on it.
//!
//! Policy:
//! - Pools are ordered by priority (lower first), ties by list position. The client mines on the
//!   best pool that may be tried now.
//! - A failure (connect, handshake, no job) makes a pool wait `uniform(0, min(max, initial ×
//!   2^(failures−1)))` before its next try ("full jitter": many rigs behind one farm do not
//!   reconnect in step after a pool outage). 1 s → 60 s by default.
//! - A session that mined for at least [`MIN_HEALTHY`] and then dropped is retried at once
//!   without counting a failure (a pool restart should not send a farm to the backup);
//!   one that dropped sooner counts as a failure, so a pool that accepts and then drops
//!   cannot make us reconnect in a tight loop.
//! - While mining on a lower pool, each better pool is probed when its backoff ends; a probe
//!   that gets as far as a job takes over.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// First backoff ceiling.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Largest backoff ceiling: a pool that is down is retried at least about once a minute.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a session must have mined for its end to count as a drop, not a failure.
pub const MIN_HEALTHY: Duration = Duration::from_secs(30);

/// Exponential backoff bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling after the first failure.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: DEFAULT_BACKOFF_INITIAL,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl Backoff {
    /// The ceiling after `failures` consecutive failures: `initial × 2^(failures−1)`, at most
    /// `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// A small random source for jitter (splitmix64); seeded from the process's hash keys, or fixed
/// in tests.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded unpredictably (std's `RandomState` keys come from the OS).
    pub fn from_entropy() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        Self(h.finish())
    }

    /// A fixed sequence.
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, ceiling]`.
    pub fn below(&mut self, ceiling: Duration) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(unit)
    }
}

#[derive(Clone, Debug)]
struct Health {
    failures: u32,
    next_attempt: Instant,
}

/// The failover state of an ordered pool list.
#[derive(Clone, Debug)]
pub struct Failover {
    /// Pool indices, best first.
    order: Vec<usize>,
    /// `rank[pool]`: position in `order`.
    rank: Vec<usize>,
    health: Vec<Health>,
    backoff: Backoff,
    jitter: Jitter,
}

impl Failover {
    /// Every pool may be tried at `now`.
    pub fn new(priorities: &[u32], backoff: Backoff, jitter: Jitter, now: Instant) -> Self {
        let mut order: Vec<usize> = (0..priorities.len()).collect();
        // Stable: equal priorities keep list order.
        order.sort_by_key(|&i| priorities[i]);
        let mut rank = vec![0; priorities.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        Self {
            order,
            rank,
            health: vec![
                Health {
                    failures: 0,
                    next_attempt: now,
                };
                priorities.len()
            ],
            backoff,
            jitter,
        }
    }

    /// Position of a pool in the order (0 is the best).
    pub fn rank(&self, pool: usize) -> usize {
        self.rank[pool]
    }

    /// Consecutive failures of a pool.
    pub fn failures(&self, pool: usize) -> u32 {
        self.health[pool].failures
    }

    /// When a pool may be tried next.
    pub fn next_attempt(&self, pool: usize) -> Instant {
        self.health[pool].next_attempt
    }

    /// The best pool that may be tried at `now`, other than `busy` (a pool already being
    /// connected to).
    pub fn pick(&self, now: Instant, busy: Option<usize>) -> Option<usize> {
        self.order
            .iter()
            .copied()
            .find(|&p| Some(p) != busy && self.health[p].next_attempt <= now)
    }

    /// When some pool other than `busy` may be tried next.
    pub fn next_ready(&self, busy: Option<usize>) -> Option<Instant> {
        self.order
            .iter()
            .filter(|&&p| Some(p) != busy)
            .map(|&p| self.health[p].next_attempt)
            .min()
    }

    /// The best pool ranked above `active` that is due for a probe at `now`.
    pub fn probe_candidate(&self, active: usize, now: Instant) -> Option<usize> {
        self.order[..self.rank[active]]
            .iter()
            .copied()
            .find(|&p| self.health[p].next_attempt <= now)
    }

    /// When the next probe of a pool ranked above `active` is due.
    pub fn next_probe_at(&self, active: usize) -> Option<Instant> {
        self.order[..self.rank[active]]
            .iter()
            .map(|&p| self.health[p].next_attempt)
            .min()
    }

    /// Counts a failure; returns how long the pool now waits.
    pub fn failed(&mut self, pool: usize, now: Instant) -> Duration {
        let h = &mut self.health[pool];
        h.failures = h.failures.saturating_add(1);
        let wait = self.jitter.below(self.backoff.ceiling(h.failures));
        h.next_attempt = now + wait;
        wait
    }

    /// The pool works (it sent a job): forgets its failures and returns how many there were.
    pub fn healthy(&mut self, pool: usize) -> u32 {
        std::mem::take(&mut self.health[pool].failures)
    }

    /// Puts back failures forgotten by [`Failover::healthy`], for a session that did not last.
    pub fn restore_failures(&mut self, pool: usize, failures: u32) {
        self.health[pool].failures = failures;
    }

    /// The pool may be tried again at `at` (a drop after a healthy session, `client.reconnect`).
    pub fn retry_at(&mut self, pool: usize, at: Instant) {
        self.health[pool].next_attempt = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|f| b.ceiling(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), b.max);
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_varies() {
        let mut j = Jitter::seeded(7);
        let ceiling = Duration::from_secs(8);
        let samples: Vec<Duration> = (0..1000).map(|_| j.below(ceiling)).collect();
        assert!(samples.iter().all(|&d| d <= ceiling));
        let low = samples.iter().filter(|&&d| d < ceiling / 2).count();
        assert!((350..650).contains(&low), "{low} of 1000 in the lower half");
    }

    #[test]
    fn picks_by_priority_and_skips_pools_in_backoff() {
        let now = Instant::now();
        // Pool 2 has the best priority, then 0, then 1 (ties keep list order).
        let mut f = Failover::new(&[5, 9, 1], Backoff::default(), Jitter::seeded(1), now);
        assert_eq!(f.pick(now, None), Some(2));
        assert_eq!(f.pick(now, Some(2)), Some(0));
        let wait = f.failed(2, now);
        assert!(wait <= Duration::from_secs(1));
        let later = now + Duration::from_millis(1);
        if wait >= Duration::from_millis(1) {
            assert_eq!(f.pick(later, None), Some(0));
        }
        assert_eq!(f.pick(now + Duration::from_secs(2), None), Some(2));
        assert_eq!(f.next_ready(Some(0)), Some(f.next_attempt(2).min(now)));
    }

    #[test]
    fn probes_only_better_pools_when_due() {
        let now = Instant::now();
        let mut f = Failover::new(&[0, 1, 2], Backoff::default(), Jitter::seeded(3), now);
        for _ in 0..6 {
            f.failed(0, now);
        }
        assert_eq!(f.failures(0), 6);
        // Mining on pool 1: pool 0 is the only candidate, once its backoff ends.
        let due = f.next_probe_at(1).unwrap();
        assert!(due <= now + Duration::from_secs(32));
        assert_eq!(f.probe_candidate(1, due), Some(0));
        if due > now {
            assert_eq!(f.probe_candidate(1, now), None);
        }
        assert_eq!(
            f.probe_candidate(0, due),
            None,
            "nothing is better than the best"
        );
        assert_eq!(f.next_probe_at(0), None);
        assert_eq!(f.healthy(0), 6);
        assert_eq!(f.failures(0), 0);
        f.restore_failures(0, 6);
        assert_eq!(f.failures(0), 6);
        f.retry_at(0, now);
        assert_eq!(f.pick(now, None), Some(0));
    }
}
