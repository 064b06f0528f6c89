//! Variable difficulty: per connection, move the share difficulty toward a target time between
//! shares.
//!
//! Kept apart from the session and free of I/O and clocks (the caller passes `now`), so the
//! arithmetic is unit-tested without sockets or sleeping. The estimate is work-based (the sum of
//! the difficulties credited in the window divided by its length), so a miner that still works at
//! an older difficulty after a change is measured correctly.

use std::time::{Duration, Instant};

use rigfleet_engine::Difficulty;

/// Largest factor one retarget may move the difficulty by, either way: a burst of lucky shares
/// must not send a miner to a difficulty it needs minutes to meet.
pub const MAX_STEP: f64 = 4.0;

/// Changes smaller than this fraction are not sent: share arrivals are random (Poisson), and a
/// new `mining.set_difficulty` for every small wobble would only churn the miner.
pub const HYSTERESIS: f64 = 0.2;

/// Vardiff settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VardiffConfig {
    /// Wanted seconds between shares of one connection.
    pub target_share_secs: f64,
    /// Retarget after this many accepted shares…
    pub retarget_shares: u32,
    /// …or after this long, whichever comes first (also when no share came at all).
    pub retarget_after: Duration,
    /// Lowest difficulty vardiff may set.
    pub min_difficulty: Difficulty,
    /// Highest difficulty vardiff may set.
    pub max_difficulty: Difficulty,
}

impl VardiffConfig {
    /// Settings for a target share interval: retarget every 8 shares or 6 intervals, between
    /// 2^-24 (far below any test pool's need) and 2^40 (well above a CPU's).
    pub fn with_target_secs(target_share_secs: f64) -> Self {
        Self {
            target_share_secs,
            retarget_shares: 8,
            retarget_after: Duration::from_secs_f64((target_share_secs * 6.0).clamp(1.0, 3600.0)),
            min_difficulty: Difficulty::new(2f64.powi(-24)).expect("BUG: positive constant"),
            max_difficulty: Difficulty::new(2f64.powi(40)).expect("BUG: positive constant"),
        }
    }

    /// Why the settings cannot work, if they cannot.
    pub fn problem(&self) -> Option<String> {
        if !(self.target_share_secs.is_finite() && self.target_share_secs > 0.0) {
            return Some("vardiff target seconds per share must be positive".into());
        }
        if self.retarget_shares == 0 {
            return Some("vardiff must retarget after at least one share".into());
        }
        if self.retarget_after.is_zero() {
            return Some("vardiff retarget interval must be positive".into());
        }
        if self.min_difficulty.value() > self.max_difficulty.value() {
            return Some("vardiff minimum difficulty is above the maximum".into());
        }
        None
    }
}

impl Default for VardiffConfig {
    fn default() -> Self {
        Self::with_target_secs(5.0)
    }
}

/// The measuring window of one connection.
#[derive(Clone, Debug)]
pub struct Vardiff {
    config: VardiffConfig,
    window_start: Instant,
    shares: u32,
    work: f64,
}

impl Vardiff {
    /// Starts a window now.
    pub fn new(config: VardiffConfig, now: Instant) -> Self {
        Self {
            config,
            window_start: now,
            shares: 0,
            work: 0.0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &VardiffConfig {
        &self.config
    }

    /// Clamps a difficulty (from the pool's start value or a miner's suggestion) into bounds.
    pub fn clamp(&self, difficulty: f64) -> f64 {
        difficulty.clamp(
            self.config.min_difficulty.value(),
            self.config.max_difficulty.value(),
        )
    }

    /// Starts a new window (after the difficulty was set from elsewhere).
    pub fn reset(&mut self, now: Instant) {
        self.window_start = now;
        self.shares = 0;
        self.work = 0.0;
    }

    /// An accepted share credited at `credited` difficulty; returns a new difficulty when the
    /// window is full and the rate is off by more than the hysteresis.
    pub fn on_share(&mut self, now: Instant, credited: f64, current: f64) -> Option<f64> {
        self.shares += 1;
        self.work += credited;
        let elapsed = now.saturating_duration_since(self.window_start);
        if self.shares >= self.config.retarget_shares || elapsed >= self.config.retarget_after {
            self.retarget(now, current)
        } else {
            None
        }
    }

    /// A periodic check, so that a miner who finds no share at all still gets a lower
    /// difficulty.
    pub fn on_tick(&mut self, now: Instant, current: f64) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= self.config.retarget_after {
            self.retarget(now, current)
        } else {
            None
        }
    }

    fn retarget(&mut self, now: Instant, current: f64) -> Option<f64> {
        // A millisecond floor keeps a burst of shares within one clock tick from dividing by 0.
        let elapsed = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            .max(1e-3);
        // No share in the window: the rate is at most one share's worth, so that is the
        // (optimistic) estimate; the step bound then lowers the difficulty gradually.
        let work = if self.shares == 0 { current } else { self.work };
        let ideal = work / elapsed * self.config.target_share_secs;
        let stepped = ideal.clamp(current / MAX_STEP, current * MAX_STEP);
        let new = self.clamp(stepped);
        self.reset(now);
        let change = (new - current).abs() / current;
        (change > HYSTERESIS).then_some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VardiffConfig {
        VardiffConfig {
            target_share_secs: 10.0,
            retarget_shares: 4,
            retarget_after: Duration::from_secs(60),
            min_difficulty: Difficulty::new(0.001).unwrap(),
            max_difficulty: Difficulty::new(1000.0).unwrap(),
        }
    }

    #[test]
    fn fast_shares_raise_the_difficulty_by_at_most_the_step() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(config(), t0);
        // Four shares in 4 s at difficulty 1: one per second, ten times too fast.
        for i in 1..4 {
            assert_eq!(v.on_share(t0 + Duration::from_secs(i), 1.0, 1.0), None);
        }
        assert_eq!(
            v.on_share(t0 + Duration::from_secs(4), 1.0, 1.0),
            Some(MAX_STEP)
        );
    }

    #[test]
    fn a_moderately_fast_miner_moves_to_the_ideal_difficulty() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(config(), t0);
        // Four shares at difficulty 1 in 20 s: one per 5 s, twice too fast.
        let mut result = None;
        for i in 1..=4 {
            result = v.on_share(t0 + Duration::from_secs(5 * i), 1.0, 1.0);
        }
        let new = result.unwrap();
        assert!((new - 2.0).abs() < 1e-9, "{new}");
    }

    #[test]
    fn on_target_rates_change_nothing() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(config(), t0);
        let mut last = None;
        for i in 1..=4 {
            last = v.on_share(t0 + Duration::from_secs(11 * i), 2.0, 2.0);
        }
        // 8 work in 44 s at a 10 s target: ideal 1.82, within the hysteresis of 2.
        assert_eq!(last, None);
    }

    #[test]
    fn silence_lowers_the_difficulty_on_the_tick_and_bounds_hold() {
        let t0 = Instant::now();
        let mut v = Vardiff::new(config(), t0);
        assert_eq!(v.on_tick(t0 + Duration::from_secs(30), 8.0), None);
        assert_eq!(v.on_tick(t0 + Duration::from_secs(60), 8.0), Some(2.0));
        // At the floor nothing moves below it.
        let mut v = Vardiff::new(config(), t0);
        assert_eq!(v.on_tick(t0 + Duration::from_secs(600), 0.001), None);
        // At the ceiling fast shares change nothing.
        let mut v = Vardiff::new(config(), t0);
        let mut last = None;
        for i in 1..=4 {
            last = v.on_share(t0 + Duration::from_millis(i), 1000.0, 1000.0);
        }
        assert_eq!(last, None);
        assert_eq!(v.clamp(1e9), 1000.0);
    }

    #[test]
    fn invalid_settings_are_reported() {
        assert!(config().problem().is_none());
        assert!(VardiffConfig::default().problem().is_none());
        let mut c = config();
        c.min_difficulty = Difficulty::new(2000.0).unwrap();
        assert!(c.problem().is_some());
        let mut c = config();
        c.target_share_secs = 0.0;
        assert!(c.problem().is_some());
        let mut c = config();
        c.retarget_shares = 0;
        assert!(c.problem().is_some());
    }
}
