//! The device watchdog: fixes the smallest thing first. A device that should mine (a config
//! with an algorithm, a pool handing out jobs) but reports no hash rate for
//! [`WatchdogPolicy::zero_for`] is restarted; after [`WatchdogPolicy::max_restarts`] restarts
//! within [`WatchdogPolicy::restart_window`] it is disabled alone (the rest of the rig keeps
//! mining), or, only when the local config opts in, the rig is rebooted once instead. A new
//! config clears a device's record. Pure state: the daemon loop feeds observations and carries
//! out the actions (each one an event to the server).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// When the watchdog acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogPolicy {
    /// Zero hash rate for this long while it should mine.
    pub zero_for: Duration,
    /// Restarts allowed within [`Self::restart_window`] before the next step.
    pub max_restarts: usize,
    /// The window restarts are counted in (caps a restart loop).
    pub restart_window: Duration,
    /// Reboot (once) instead of disabling: only with the local opt-in and a reboot command.
    pub reboot: bool,
}

impl Default for WatchdogPolicy {
    fn default() -> Self {
        WatchdogPolicy {
            zero_for: Duration::from_secs(120),
            max_restarts: 3,
            restart_window: Duration::from_secs(3600),
            reboot: false,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Restart the device (the `n`th time within the window).
    Restart {
        /// Device id.
        device: String,
        /// How many restarts in the window, this one included.
        n: usize,
    },
    /// Stop the device until a new config arrives.
    Disable {
        /// Device id.
        device: String,
    },
    /// Reboot the rig.
    Reboot {
        /// The device that led to it.
        device: String,
    },
}

#[derive(Debug, Default)]
struct DeviceRecord {
    zero_since: Option<Instant>,
    restarts: VecDeque<Instant>,
    disabled: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Watchdog {
    policy: WatchdogPolicy,
    devices: BTreeMap<String, DeviceRecord>,
    rebooted: bool,
}

impl Watchdog {
    /// A watchdog with `policy`.
    pub fn new(policy: WatchdogPolicy) -> Self {
        Watchdog {
            policy,
            devices: BTreeMap::new(),
            rebooted: false,
        }
    }

    /// Forgets every record (a new config was applied: it may fix what was failing).
    pub fn reset(&mut self) {
        self.devices.clear();
    }

    /// Whether the watchdog disabled `device`.
    #[cfg(test)]
    pub fn is_disabled(&self, device: &str) -> bool {
        self.devices.get(device).is_some_and(|d| d.disabled)
    }

    /// One observation of `device` at `now`.
    pub fn observe(
        &mut self,
        device: &str,
        should_mine: bool,
        rate_hps: f64,
        now: Instant,
    ) -> Option<Action> {
        let policy = self.policy;
        let record = self.devices.entry(device.to_string()).or_default();
        if record.disabled {
            return None;
        }
        while record
            .restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > policy.restart_window)
        {
            record.restarts.pop_front();
        }
        if !should_mine || rate_hps > 0.0 {
            record.zero_since = None;
            return None;
        }
        let since = *record.zero_since.get_or_insert(now);
        if now.saturating_duration_since(since) < policy.zero_for {
            return None;
        }
        // Whatever happens, the device gets a full period before the next step.
        record.zero_since = Some(now);
        if record.restarts.len() < policy.max_restarts {
            record.restarts.push_back(now);
            return Some(Action::Restart {
                device: device.to_string(),
                n: record.restarts.len(),
            });
        }
        if policy.reboot && !self.rebooted {
            self.rebooted = true;
            return Some(Action::Reboot {
                device: device.to_string(),
            });
        }
        record.disabled = true;
        Some(Action::Disable {
            device: device.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> WatchdogPolicy {
        WatchdogPolicy {
            zero_for: Duration::from_secs(60),
            max_restarts: 2,
            restart_window: Duration::from_secs(3600),
            reboot: false,
        }
    }

    #[test]
    fn restarts_then_disables_only_the_failing_device() {
        let mut w = Watchdog::new(policy());
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut actions = Vec::new();
        for i in 0..400 {
            let now = t0 + s(i);
            actions.extend(w.observe("gpu0", true, 0.0, now));
            assert_eq!(w.observe("gpu1", true, 1e6, now), None);
        }
        assert_eq!(
            actions,
            vec![
                Action::Restart {
                    device: "gpu0".into(),
                    n: 1
                },
                Action::Restart {
                    device: "gpu0".into(),
                    n: 2
                },
                Action::Disable {
                    device: "gpu0".into()
                },
            ]
        );
        assert!(w.is_disabled("gpu0") && !w.is_disabled("gpu1"));
        w.reset();
        assert!(!w.is_disabled("gpu0"));
    }

    #[test]
    fn idle_or_hashing_devices_are_left_alone() {
        let mut w = Watchdog::new(policy());
        let t0 = Instant::now();
        for i in 0..1000 {
            let now = t0 + Duration::from_secs(i);
            assert_eq!(w.observe("cpu", false, 0.0, now), None);
            assert_eq!(
                w.observe("asic", true, if i % 50 == 0 { 0.0 } else { 5.0 }, now),
                None
            );
        }
    }

    #[test]
    fn reboot_happens_once_and_only_by_policy() {
        let mut w = Watchdog::new(WatchdogPolicy {
            reboot: true,
            ..policy()
        });
        let t0 = Instant::now();
        let actions: Vec<_> = (0..1000)
            .filter_map(|i| w.observe("cpu", true, 0.0, t0 + Duration::from_secs(i)))
            .collect();
        let reboots = actions
            .iter()
            .filter(|a| matches!(a, Action::Reboot { .. }))
            .count();
        assert_eq!(reboots, 1, "{actions:?}");
        assert!(matches!(actions.last(), Some(Action::Disable { .. })));
    }

    #[test]
    fn restarts_age_out_of_the_window() {
        let mut w = Watchdog::new(WatchdogPolicy {
            restart_window: Duration::from_secs(100),
            ..policy()
        });
        let t0 = Instant::now();
        let mut kinds = Vec::new();
        for i in 0..2000 {
            let now = t0 + Duration::from_secs(i);
            // Works for a while after every restart, then stalls again.
            let rate = if i % 500 < 200 { 1.0 } else { 0.0 };
            kinds.extend(w.observe("cpu", true, rate, now));
        }
        assert!(
            kinds.iter().all(|a| matches!(a, Action::Restart { .. })),
            "{kinds:?}"
        );
    }
}
