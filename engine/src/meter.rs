//! Hash-rate averages over 5 seconds, 1 minute and 15 minutes, from cumulative hash counts.
//!
//! Counts go into one-second buckets covering the longest window, so each average is exact
//! over its window rather than an exponential decay: a device that stops shows zero in the 5 s
//! average five seconds later, as operators expect.

use std::time::{Duration, Instant};

/// Averages of one device or of a whole miner, in hashes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HashRates {
    /// Average over the last 5 seconds.
    pub avg_5s_hps: f64,
    /// Average over the last minute.
    pub avg_1m_hps: f64,
    /// Average over the last 15 minutes.
    pub avg_15m_hps: f64,
}

impl std::ops::Add for HashRates {
    type Output = HashRates;

    fn add(self, o: HashRates) -> HashRates {
        HashRates {
            avg_5s_hps: self.avg_5s_hps + o.avg_5s_hps,
            avg_1m_hps: self.avg_1m_hps + o.avg_1m_hps,
            avg_15m_hps: self.avg_15m_hps + o.avg_15m_hps,
        }
    }
}

/// The longest window, in one-second buckets.
const BUCKETS: usize = 15 * 60;

/// Accumulates hash counts and answers windowed averages.
#[derive(Clone, Debug)]
pub struct HashMeter {
    start: Instant,
    /// `(second since start, hashes in that second)`; a slot is stale when its second is old.
    buckets: Vec<(u64, u64)>,
    total: u64,
}

impl HashMeter {
    /// A meter whose clock starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            start: now,
            buckets: vec![(u64::MAX, 0); BUCKETS],
            total: 0,
        }
    }

    /// Adds `hashes` done by `now`.
    pub fn record(&mut self, hashes: u64, now: Instant) {
        let sec = self.second(now);
        let slot = &mut self.buckets[(sec % BUCKETS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 = slot.1.saturating_add(hashes);
        self.total = self.total.saturating_add(hashes);
    }

    /// Every hash recorded since the meter started.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The three averages as of `now`.
    pub fn rates(&self, now: Instant) -> HashRates {
        HashRates {
            avg_5s_hps: self.average(Duration::from_secs(5), now),
            avg_1m_hps: self.average(Duration::from_secs(60), now),
            avg_15m_hps: self.average(Duration::from_secs(900), now),
        }
    }

    /// Average over `window` ending at `now`. The current second is partly elapsed, so the
    /// divisor is the whole seconds before it plus the elapsed fraction, and never more than the
    /// meter's age (a fresh device is not averaged against time it did not exist).
    pub fn average(&self, window: Duration, now: Instant) -> f64 {
        let window_secs = window.as_secs().clamp(1, BUCKETS as u64);
        let elapsed = now.saturating_duration_since(self.start);
        let sec = elapsed.as_secs();
        let oldest = sec.saturating_sub(window_secs - 1);
        let sum: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s != u64::MAX && *s >= oldest && *s <= sec)
            .map(|(_, n)| n)
            .sum();
        let covered = (window_secs - 1) as f64 + f64::from(elapsed.subsec_nanos()) / 1e9;
        let divisor = covered.min(elapsed.as_secs_f64());
        if divisor <= 0.0 {
            0.0
        } else {
            sum as f64 / divisor
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_reads_the_same_in_every_window() {
        let t0 = Instant::now();
        let mut m = HashMeter::new(t0);
        for s in 1..=1000u64 {
            m.record(1_000_000, t0 + Duration::from_secs(s));
        }
        let r = m.rates(t0 + Duration::from_millis(1_000_500));
        for v in [r.avg_5s_hps, r.avg_1m_hps, r.avg_15m_hps] {
            assert!((v - 1e6).abs() / 1e6 < 0.15, "{r:?}");
        }
        assert_eq!(m.total(), 1_000_000_000);
    }

    #[test]
    fn stopped_device_drops_to_zero_in_the_short_window_first() {
        let t0 = Instant::now();
        let mut m = HashMeter::new(t0);
        for s in 0..120u64 {
            m.record(500, t0 + Duration::from_secs(s));
        }
        let later = t0 + Duration::from_secs(130);
        let r = m.rates(later);
        assert_eq!(r.avg_5s_hps, 0.0);
        assert!(r.avg_1m_hps > 0.0);
        assert!(r.avg_15m_hps > 0.0);
        let much_later = t0 + Duration::from_secs(120 + 900 + 5);
        assert_eq!(m.rates(much_later), HashRates::default());
    }

    #[test]
    fn young_meter_divides_by_its_age() {
        let t0 = Instant::now();
        let mut m = HashMeter::new(t0);
        m.record(1000, t0 + Duration::from_millis(500));
        let r = m.rates(t0 + Duration::from_millis(500));
        assert!((r.avg_15m_hps - 2000.0).abs() < 1.0, "{r:?}");
        assert_eq!(HashMeter::new(t0).rates(t0), HashRates::default());
    }
}
