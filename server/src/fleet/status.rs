//! A rig's status: the one function that the dashboard, the REST API, the live feed and
//! `/metrics` all call, so that no two of them can disagree about a rig (issue 12: the
//! dashboard once showed WARNING for a rig that `/api/v1/rigs` and `rigfleet_rig_warning`
//! called healthy, because only the dashboard applied the hash-rate rule).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use rigfleet_proto::telemetry::Sample;
use tokio::sync::broadcast;

use crate::hub::live::{LiveState, RigLive};

/// Rig status as the fleet overview shows it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RigStatus {
    /// Reporting and healthy.
    Online,
    /// Reporting, but a device is hot, slow or rejecting.
    Warning,
    /// No telemetry for 3 intervals.
    Offline,
}

impl RigStatus {
    /// The name used in URLs, JSON and CSS classes.
    pub fn as_str(self) -> &'static str {
        match self {
            RigStatus::Online => "online",
            RigStatus::Warning => "warning",
            RigStatus::Offline => "offline",
        }
    }

    /// Parses a name given in a filter.
    pub fn parse(s: &str) -> Option<RigStatus> {
        match s {
            "online" => Some(RigStatus::Online),
            "warning" => Some(RigStatus::Warning),
            "offline" => Some(RigStatus::Offline),
            _ => None,
        }
    }
}

/// Thresholds that turn numbers into a status.
#[derive(Clone, Copy, Debug)]
pub struct StatusRules {
    /// Intervals without a sample before a rig is offline.
    pub offline_after_intervals: u32,
    /// Device temperature limit (°C).
    pub max_temperature: f32,
    /// Rejected share ratio that warns.
    pub max_rejected_ratio: f64,
}

impl Default for StatusRules {
    fn default() -> Self {
        StatusRules {
            offline_after_intervals: 3,
            max_temperature: 85.0,
            max_rejected_ratio: 0.05,
        }
    }
}

/// Hash-rate warning thresholds (settings `web.hashrate_warning_ratio` and
/// `web.hashrate_min_history_secs`).
#[derive(Clone, Copy, Debug)]
pub struct HashrateRule {
    /// A device under this share of its 1-hour average warns.
    pub ratio: f64,
    /// History needed before the rule applies (a fresh average means little).
    pub min_history_ms: i64,
}

impl Default for HashrateRule {
    fn default() -> Self {
        HashrateRule {
            ratio: 0.8,
            min_history_ms: 600_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Avg {
    value: f64,
    first_ms: i64,
    last_ms: i64,
}

/// Exponentially weighted 1-hour averages per rig and device.
#[derive(Default)]
pub struct Averages {
    by_rig: HashMap<String, HashMap<String, Avg>>,
    uid_of: HashMap<i64, String>,
}

const AVG_WINDOW_MS: f64 = 3_600_000.0;

impl Averages {
    /// Takes the rig's newest sample into its devices' averages.
    pub fn record(&mut self, rig: &RigLive) {
        let Some(s) = &rig.sample else { return };
        self.uid_of.insert(rig.id, rig.uid.0.clone());
        let devices = self.by_rig.entry(rig.uid.0.clone()).or_default();
        for d in &s.devices {
            let v = d.hashrate_1m_hps;
            if !v.is_finite() {
                continue;
            }
            let t = s.time_unix_ms;
            let e = devices.entry(d.device_id.0.clone()).or_insert(Avg {
                value: v,
                first_ms: t,
                last_ms: t,
            });
            if t > e.last_ms {
                let alpha = 1.0 - (-((t - e.last_ms) as f64) / AVG_WINDOW_MS).exp();
                e.value += alpha * (v - e.value);
                e.last_ms = t;
            }
        }
    }

    fn forget(&mut self, id: i64) {
        if let Some(uid) = self.uid_of.remove(&id) {
            self.by_rig.remove(&uid);
        }
    }

    /// Whether a device of the sample runs under `rule.ratio` of its average.
    pub fn dropped(&self, uid: &str, sample: Option<&Sample>, rule: HashrateRule) -> bool {
        let (Some(s), Some(devs)) = (sample, self.by_rig.get(uid)) else {
            return false;
        };
        s.devices.iter().any(|d| {
            devs.get(d.device_id.as_str()).is_some_and(|a| {
                a.last_ms - a.first_ms >= rule.min_history_ms
                    && a.value > 0.0
                    && d.hashrate_1m_hps < rule.ratio * a.value
            })
        })
    }

    /// The device's 1-hour average, if known.
    pub fn device_avg(&self, uid: &str, device: &str) -> Option<f64> {
        self.by_rig.get(uid)?.get(device).map(|a| a.value)
    }
}

/// Decides every rig's status: thresholds on the newest sample plus each device's hash rate
/// against its own 1-hour average.
pub struct StatusJudge {
    /// Thresholds on the newest sample.
    pub rules: StatusRules,
    hashrate: Mutex<HashrateRule>,
    averages: Mutex<Averages>,
}

impl Default for StatusJudge {
    fn default() -> Self {
        StatusJudge::new(StatusRules::default())
    }
}

impl StatusJudge {
    /// A judge with these thresholds and the default hash-rate rule.
    pub fn new(rules: StatusRules) -> StatusJudge {
        StatusJudge {
            rules,
            hashrate: Mutex::new(HashrateRule::default()),
            averages: Mutex::new(Averages::default()),
        }
    }

    /// The rig's status at `now_ms`. Everything that shows or exports a status calls this.
    pub fn status(&self, rig: &RigLive, now_ms: i64) -> RigStatus {
        let rules = &self.rules;
        let limit_ms = i64::from(rig.telemetry_interval_secs)
            * 1000
            * i64::from(rules.offline_after_intervals);
        let fresh = rig
            .sample
            .as_ref()
            .map(|s| s.time_unix_ms.max(rig.last_seen_ms.unwrap_or(0)))
            .or(rig.last_seen_ms)
            .is_some_and(|t| now_ms - t <= limit_ms);
        if !fresh {
            return RigStatus::Offline;
        }
        let Some(sample) = &rig.sample else {
            return RigStatus::Online;
        };
        for d in &sample.devices {
            if d.temperature_celsius
                .is_some_and(|t| t > rules.max_temperature)
            {
                return RigStatus::Warning;
            }
            let total = d.accepted + d.rejected + d.stale;
            if total >= 20 && (d.rejected as f64) / (total as f64) > rules.max_rejected_ratio {
                return RigStatus::Warning;
            }
        }
        let rule = self.hashrate_rule();
        if self
            .lock_averages()
            .dropped(rig.uid.as_str(), Some(sample), rule)
        {
            return RigStatus::Warning;
        }
        RigStatus::Online
    }

    /// The hash-rate rule now.
    pub fn hashrate_rule(&self) -> HashrateRule {
        *self.hashrate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the hash-rate rule.
    pub fn set_hashrate_rule(&self, rule: HashrateRule) {
        *self.hashrate.lock().unwrap_or_else(|e| e.into_inner()) = rule;
    }

    /// A device's 1-hour average hash rate, if known.
    pub fn device_avg(&self, uid: &str, device: &str) -> Option<f64> {
        self.lock_averages().device_avg(uid, device)
    }

    /// Takes a rig's newest sample into the averages (the keeper task does this on every
    /// change; tests call it directly).
    pub fn record(&self, rig: &RigLive) {
        self.lock_averages().record(rig);
    }

    fn lock_averages(&self) -> std::sync::MutexGuard<'_, Averages> {
        self.averages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the hash-rate rule's settings from the database (defaults stay where a setting is
    /// missing or out of range).
    pub async fn load_settings(&self, store: &crate::db::Store) {
        let ratio = store
            .get_setting("web.hashrate_warning_ratio")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| (0.0..=1.0).contains(v));
        let min = store
            .get_setting("web.hashrate_min_history_secs")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0);
        let mut r = self.hashrate_rule();
        if let Some(v) = ratio {
            r.ratio = v;
        }
        if let Some(v) = min {
            r.min_history_ms = v.saturating_mul(1000);
        }
        self.set_hashrate_rule(r);
    }

    /// Starts the task that follows the live state's changes into the averages (when a runtime
    /// is there to run it).
    pub fn follow(self: &Arc<Self>, live: &Arc<LiveState>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rx = live.subscribe();
        let live = Arc::downgrade(live);
        let judge = Arc::downgrade(self);
        rt.spawn(keep_averages(rx, live, judge));
    }
}

async fn keep_averages(
    mut rx: broadcast::Receiver<i64>,
    live: Weak<LiveState>,
    judge: Weak<StatusJudge>,
) {
    loop {
        match rx.recv().await {
            Ok(id) => {
                let (Some(live), Some(judge)) = (live.upgrade(), judge.upgrade()) else {
                    return;
                };
                let rig = live.get(id);
                let mut a = judge.lock_averages();
                match rig {
                    Some(r) => a.record(&r),
                    None => a.forget(id),
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::telemetry::{DeviceSample, RigSample};

    fn device(temp: f32, accepted: u64, rejected: u64, hps: f64) -> DeviceSample {
        DeviceSample {
            device_id: "cpu".into(),
            algorithm: "sha256d".into(),
            enabled: true,
            hashrate_5s_hps: hps,
            hashrate_1m_hps: hps,
            accepted,
            rejected,
            stale: 0,
            hardware_errors: 0,
            temperature_celsius: Some(temp),
            fan_rpm: None,
            fan_percent: None,
            power_watts: None,
            core_clock_mhz: None,
            memory_clock_mhz: None,
        }
    }

    fn rig(sample_time: Option<i64>, devices: Vec<DeviceSample>) -> RigLive {
        RigLive {
            id: 1,
            uid: "rig-1".into(),
            name: "a".into(),
            group: None,
            tags: vec![],
            pending_approval: false,
            flagged: None,
            connected: true,
            last_seen_ms: None,
            sample: sample_time.map(|t| Sample {
                seq: 1,
                time_unix_ms: t,
                rig: RigSample::default(),
                devices,
                pool: None,
            }),
            agent_version: None,
            hostname: None,
            telemetry_interval_secs: 10,
            clock_offset_ms: None,
        }
    }

    #[test]
    fn status_follows_the_thresholds() {
        let judge = StatusJudge::default();
        let now = 1_000_000;
        assert_eq!(judge.status(&rig(None, vec![]), now), RigStatus::Offline);
        let ok = rig(Some(now - 29_000), vec![device(60.0, 100, 1, 1e6)]);
        assert_eq!(judge.status(&ok, now), RigStatus::Online);
        assert_eq!(judge.status(&ok, now + 2_000), RigStatus::Offline);
        let hot = rig(Some(now), vec![device(90.0, 100, 1, 1e6)]);
        assert_eq!(judge.status(&hot, now), RigStatus::Warning);
        let rejecting = rig(Some(now), vec![device(60.0, 90, 10, 1e6)]);
        assert_eq!(judge.status(&rejecting, now), RigStatus::Warning);
    }

    #[test]
    fn a_device_far_under_its_hour_average_warns_once_there_is_history() {
        let judge = StatusJudge::default();
        let start = 10_000_000;
        // Twenty minutes at 1 MH/s, one sample a minute.
        for i in 0..=20 {
            judge.record(&rig(
                Some(start + i * 60_000),
                vec![device(60.0, 10, 0, 1e6)],
            ));
        }
        let now = start + 21 * 60_000;
        let steady = rig(Some(now), vec![device(60.0, 10, 0, 0.95e6)]);
        assert_eq!(judge.status(&steady, now), RigStatus::Online);
        let slow = rig(Some(now), vec![device(60.0, 10, 0, 0.5e6)]);
        assert_eq!(judge.status(&slow, now), RigStatus::Warning);
        // Without enough history the same drop says nothing.
        judge.set_hashrate_rule(HashrateRule {
            ratio: 0.8,
            min_history_ms: 3_600_000,
        });
        assert_eq!(judge.status(&slow, now), RigStatus::Online);
    }

    #[test]
    fn names_round_trip() {
        for s in [RigStatus::Online, RigStatus::Warning, RigStatus::Offline] {
            assert_eq!(RigStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RigStatus::parse("dead"), None);
    }
}
