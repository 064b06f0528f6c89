//! What the dashboard keeps in memory (logins waiting for their second factor,
//! TOTP enrollments in progress, per-device 1-hour hash-rate averages) and the live feed: a
//! Server-Sent Events stream fed by the hub's change broadcast plus a once-a-second status
//! sweep, so a rig that falls silent turns offline without any event of its own.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use rigfleet_proto::telemetry::Sample;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::session::{origin_absent_or_ours, WebUser};
use super::{fmt, WebError};
use crate::api::rigs::RigSummary;
use crate::app::AppState;
use crate::hub::live::{LiveState, RigLive, RigStatus};

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
    fn record(&mut self, rig: &RigLive) {
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

/// A login that passed its password and waits for the second factor.
#[derive(Clone, Debug)]
pub struct PendingMfa {
    /// Who.
    pub user_id: i64,
    /// Until when.
    pub until: Instant,
    /// Codes tried.
    pub attempts: u32,
}

/// Memory shared by the dashboard's handlers (one per server).
pub struct WebShared {
    /// Logins waiting for a TOTP code, by the SHA-256 of their cookie.
    pub mfa: Mutex<HashMap<String, PendingMfa>>,
    /// TOTP secrets shown to a user and not yet confirmed.
    pub totp_enroll: Mutex<HashMap<i64, (String, Instant)>>,
    /// Per-device averages.
    pub averages: Arc<Mutex<Averages>>,
    /// Hash-rate warning rule.
    pub rule: Arc<Mutex<HashrateRule>>,
}

impl WebShared {
    /// Shared state for `state`'s server; starts the task that keeps the averages when a
    /// runtime is there to run it.
    pub fn new(state: &AppState) -> WebShared {
        let shared = WebShared {
            mfa: Mutex::new(HashMap::new()),
            totp_enroll: Mutex::new(HashMap::new()),
            averages: Arc::new(Mutex::new(Averages::default())),
            rule: Arc::new(Mutex::new(HashrateRule::default())),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let rx = state.hub.live.subscribe();
            let live = Arc::downgrade(&state.hub.live);
            let averages = shared.averages.clone();
            let rule = shared.rule.clone();
            let store = state.hub.store.clone();
            rt.spawn(async move {
                load_rule(&store, &rule).await;
                drop(store);
                keep_averages(rx, live, averages).await;
            });
        }
        shared
    }

    /// The rule now.
    pub fn rule(&self) -> HashrateRule {
        *self.rule.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status the dashboard shows: the hub's, turned to warning when a device's hash rate
    /// fell under the rule's share of its 1-hour average.
    pub fn effective(&self, status: RigStatus, uid: &str, sample: Option<&Sample>) -> RigStatus {
        if status != RigStatus::Online {
            return status;
        }
        let avg = self.averages.lock().unwrap_or_else(|e| e.into_inner());
        if avg.dropped(uid, sample, self.rule()) {
            RigStatus::Warning
        } else {
            status
        }
    }
}

async fn load_rule(store: &crate::db::Store, rule: &Mutex<HashrateRule>) {
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
    let mut r = rule.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = ratio {
        r.ratio = v;
    }
    if let Some(v) = min {
        r.min_history_ms = v.saturating_mul(1000);
    }
}

async fn keep_averages(
    mut rx: broadcast::Receiver<i64>,
    live: Weak<LiveState>,
    averages: Arc<Mutex<Averages>>,
) {
    loop {
        match rx.recv().await {
            Ok(id) => {
                let Some(live) = live.upgrade() else { return };
                let rig = live.get(id);
                let mut a = averages.lock().unwrap_or_else(|e| e.into_inner());
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

/// One rig as the live feed sends it (display text, already formatted).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RigUpdate {
    /// Rig id.
    pub id: String,
    /// online / warning / offline.
    pub status: &'static str,
    /// Hash rate.
    pub hashrate: String,
    /// Hottest device.
    pub temp: String,
    /// Fan.
    pub fan: String,
    /// Power.
    pub power: String,
    /// Pool.
    pub pool: String,
    /// Uptime.
    pub uptime: String,
    /// Last seen.
    pub last_seen: String,
    /// Shares.
    pub shares: String,
}

/// One device as the live feed sends it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DeviceUpdate {
    /// Device id.
    pub id: String,
    /// Hash rate.
    pub hashrate: String,
    /// Temperature.
    pub temp: String,
    /// Fan.
    pub fan: String,
    /// Power.
    pub power: String,
    /// Shares.
    pub shares: String,
}

/// The name of a status.
pub fn status_name(s: RigStatus) -> &'static str {
    match s {
        RigStatus::Online => "online",
        RigStatus::Warning => "warning",
        RigStatus::Offline => "offline",
    }
}

/// The feed's view of a summary.
pub fn rig_update(s: &RigSummary, status: RigStatus, now_ms: i64) -> RigUpdate {
    RigUpdate {
        id: s.id.clone(),
        status: status_name(status),
        hashrate: fmt::hashrate(s.hashrate_hps),
        temp: fmt::temp(s.max_temperature),
        fan: fmt::percent(s.fan_percent),
        power: fmt::watts(s.power_watts),
        pool: s.pool.clone().unwrap_or_else(fmt::dash),
        uptime: s.uptime_secs.map_or_else(fmt::dash, fmt::duration),
        last_seen: fmt::ago(s.last_seen_ms, now_ms),
        shares: format!("{} / {}", s.accepted, s.rejected),
    }
}

/// Device rows of a sample.
pub fn device_updates(sample: Option<&Sample>) -> Vec<DeviceUpdate> {
    sample
        .map(|s| {
            s.devices
                .iter()
                .map(|d| DeviceUpdate {
                    id: d.device_id.0.clone(),
                    hashrate: fmt::hashrate(d.hashrate_1m_hps),
                    temp: fmt::temp(d.temperature_celsius),
                    fan: fmt::percent(d.fan_percent),
                    power: fmt::watts(d.power_watts),
                    shares: format!("{} / {} / {}", d.accepted, d.rejected, d.stale),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Serialize)]
struct Batch {
    rigs: Vec<RigUpdate>,
    devices: Vec<DeviceUpdate>,
    /// Whole-fleet counts (overview only): total, online, warning, offline.
    fleet: Option<[usize; 4]>,
}

/// Which rig a rig page follows.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    /// Rig id; absent: the whole fleet.
    pub rig: Option<String>,
}

struct Feed {
    rx: broadcast::Receiver<i64>,
    tick: tokio::time::Interval,
    last: HashMap<i64, RigStatus>,
    state: AppState,
    shared: Arc<WebShared>,
    only: Option<String>,
}

impl Feed {
    fn next_batch(&mut self) -> Option<Batch> {
        let mut dirty: HashSet<i64> = HashSet::new();
        loop {
            match self.rx.try_recv() {
                Ok(id) => {
                    dirty.insert(id);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    // Too far behind to know what changed: resend everything.
                    self.last.clear();
                }
                Err(_) => break,
            }
        }
        let now = crate::now_ms();
        let rules = self.state.rules;
        let only = self.only.as_deref();
        let shared = &self.shared;
        let last = &mut self.last;
        let mut rigs = Vec::new();
        let mut devices = Vec::new();
        let mut fleet = [0usize; 4];
        self.state.hub.live.with_all(|all| {
            for r in all.values() {
                if only.is_some_and(|u| u != r.uid.as_str()) {
                    continue;
                }
                let status =
                    shared.effective(r.status(now, &rules), r.uid.as_str(), r.sample.as_ref());
                fleet[0] += 1;
                fleet[match status {
                    RigStatus::Online => 1,
                    RigStatus::Warning => 2,
                    RigStatus::Offline => 3,
                }] += 1;
                let changed = last.get(&r.id) != Some(&status);
                if changed || dirty.contains(&r.id) {
                    last.insert(r.id, status);
                    let summary = RigSummary::from_live(r, now, &rules);
                    rigs.push(rig_update(&summary, status, now));
                    if only.is_some() {
                        devices = device_updates(r.sample.as_ref());
                    }
                }
            }
        });
        (!rigs.is_empty()).then_some(Batch {
            rigs,
            devices,
            fleet: only.is_none().then_some(fleet),
        })
    }
}

/// `GET /live`: the live feed (Server-Sent Events, one `rigs` event per second at most).
pub async fn events(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    _user: WebUser,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    if !origin_absent_or_ours(&state, &headers) {
        return WebError::forbidden("cross-origin request refused").into_response();
    }
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        rx: state.hub.live.subscribe(),
        tick,
        // The page was rendered moments ago: statuses start as "unknown" so the first batch
        // confirms them all.
        last: HashMap::new(),
        state,
        shared,
        only: q.rig.filter(|r| r.len() <= 128),
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            feed.tick.tick().await;
            if let Some(batch) = feed.next_batch() {
                let data = serde_json::to_string(&batch).unwrap_or_else(|_| "{}".into());
                let event = Event::default().event("rigs").data(data);
                return Some((Ok::<Event, Infallible>(event), feed));
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rigfleet_proto::telemetry::{DeviceSample, RigSample};

    fn rig(t: i64, hps: f64) -> RigLive {
        RigLive {
            id: 7,
            uid: "rig-7".into(),
            name: "r".into(),
            group: None,
            tags: vec![],
            pending_approval: false,
            flagged: None,
            connected: true,
            last_seen_ms: Some(t),
            sample: Some(Sample {
                seq: 1,
                time_unix_ms: t,
                rig: RigSample::default(),
                devices: vec![DeviceSample {
                    device_id: "gpu0".into(),
                    algorithm: "sha256d".into(),
                    enabled: true,
                    hashrate_5s_hps: hps,
                    hashrate_1m_hps: hps,
                    accepted: 0,
                    rejected: 0,
                    stale: 0,
                    hardware_errors: 0,
                    temperature_celsius: None,
                    fan_rpm: None,
                    fan_percent: None,
                    power_watts: None,
                    core_clock_mhz: None,
                    memory_clock_mhz: None,
                }],
                pool: None,
            }),
            agent_version: None,
            hostname: None,
            telemetry_interval_secs: 10,
            clock_offset_ms: None,
        }
    }

    #[test]
    fn a_drop_under_80_percent_of_the_hour_average_warns() {
        let rule = HashrateRule::default();
        let mut a = Averages::default();
        // 20 minutes steady at 100 MH/s.
        for m in 0..=20 {
            a.record(&rig(m * 60_000, 100e6));
        }
        let steady = rig(20 * 60_000, 100e6);
        assert!(!a.dropped("rig-7", steady.sample.as_ref(), rule));
        let slow = rig(21 * 60_000, 70e6);
        a.record(&slow);
        assert!(a.dropped("rig-7", slow.sample.as_ref(), rule));
        assert!(a.device_avg("rig-7", "gpu0").is_some_and(|v| v > 95e6));
        // Too little history: no verdict.
        let mut fresh = Averages::default();
        fresh.record(&rig(0, 100e6));
        fresh.record(&rig(60_000, 10e6));
        assert!(!fresh.dropped("rig-7", rig(60_000, 10e6).sample.as_ref(), rule));
        a.forget(7);
        assert!(a.device_avg("rig-7", "gpu0").is_none());
    }
}
