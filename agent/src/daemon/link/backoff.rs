//! Reconnect delays: exponential backoff with full jitter (1 s doubling to 60 s, then a uniform
//! draw below that cap), so a thousand rigs that lost the server at the same instant do not all
//! come back at the same instant.

use std::time::Duration;

/// Cap of the first retry.
pub const BASE_DELAY: Duration = Duration::from_secs(1);
/// Largest cap.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Floor of every delay: a draw of 0 would make a refusing server a busy loop.
pub const MIN_DELAY: Duration = Duration::from_millis(50);

/// The delay before retry number `attempt` (0 for the first retry): uniform in
/// [`MIN_DELAY`, min(`max`, `base` × 2^attempt)], drawn from `rng`.
pub fn backoff_delay_with(
    attempt: u32,
    base: Duration,
    max: Duration,
    rng: &mut impl FnMut() -> u64,
) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let cap = base.saturating_mul(factor).min(max);
    let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    let drawn = if cap_ms == 0 { 0 } else { rng() % (cap_ms + 1) };
    Duration::from_millis(drawn).max(MIN_DELAY.min(cap.max(MIN_DELAY)))
}

/// [`backoff_delay_with`] over the protocol's 1 s → 60 s range.
// The link takes its range from `LinkTimings` (tests shorten it); this names the default.
#[allow(dead_code)]
pub fn backoff_delay(attempt: u32, rng: &mut impl FnMut() -> u64) -> Duration {
    backoff_delay_with(attempt, BASE_DELAY, MAX_DELAY, rng)
}

/// A small, fast, non-cryptographic generator (xorshift64*) for jitter and synthetic figures;
/// seeded from the OS so agents started together draw differently.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the operating system (a fixed seed if that fails: jitter is not security).
    pub fn from_os() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Self::seeded(u64::from_le_bytes(seed))
    }

    /// A reproducible sequence (tests).
    pub fn seeded(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_doubling_cap() {
        let mut j = Jitter::seeded(42);
        let mut rng = || j.next_u64();
        for attempt in 0..64 {
            let cap = BASE_DELAY
                .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .min(MAX_DELAY);
            for _ in 0..200 {
                let d = backoff_delay(attempt, &mut rng);
                assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
                assert!(d >= MIN_DELAY, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn extremes_of_the_draw() {
        assert_eq!(backoff_delay(0, &mut || 0), MIN_DELAY);
        assert_eq!(backoff_delay(0, &mut || 1000), Duration::from_secs(1));
        assert_eq!(backoff_delay(3, &mut || 8000), Duration::from_secs(8));
        assert_eq!(backoff_delay(6, &mut || 60_000), MAX_DELAY);
        assert_eq!(backoff_delay(u32::MAX, &mut || u64::MAX), {
            // u64::MAX % 60_001
            Duration::from_millis(u64::MAX % 60_001)
        });
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut j = Jitter::seeded(7);
        let mut rng = || j.next_u64();
        let draws: Vec<Duration> = (0..2000).map(|_| backoff_delay(10, &mut rng)).collect();
        let low = draws
            .iter()
            .filter(|d| **d < Duration::from_secs(15))
            .count();
        let high = draws
            .iter()
            .filter(|d| **d > Duration::from_secs(45))
            .count();
        assert!(low > 300 && high > 300, "low {low} high {high}");
    }
}
