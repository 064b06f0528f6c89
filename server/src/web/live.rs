//! What the dashboard keeps in memory (logins waiting for their second factor,
//! TOTP enrollments in progress) and the live feed: a
//! Server-Sent Events stream fed by the hub's change broadcast plus a once-a-second status
//! sweep, so a rig that falls silent turns offline without any event of its own.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rigfleet_proto::telemetry::Sample;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::session::{origin_absent_or_ours, WebUser};
use super::{fmt, WebError};
use crate::app::AppState;
use crate::fleet::rigs::RigSummary;
use crate::fleet::RigStatus;

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
}

impl Default for WebShared {
    fn default() -> Self {
        WebShared {
            mfa: Mutex::new(HashMap::new()),
            totp_enroll: Mutex::new(HashMap::new()),
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
    s.as_str()
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
        let judge = self.state.status.clone();
        let only = self.only.as_deref();
        let last = &mut self.last;
        let mut rigs = Vec::new();
        let mut devices = Vec::new();
        let mut fleet = [0usize; 4];
        self.state.hub.live.with_all(|all| {
            for r in all.values() {
                if only.is_some_and(|u| u != r.uid.as_str()) {
                    continue;
                }
                let status = judge.status(r, now);
                fleet[0] += 1;
                fleet[match status {
                    RigStatus::Online => 1,
                    RigStatus::Warning => 2,
                    RigStatus::Offline => 3,
                }] += 1;
                let changed = last.get(&r.id) != Some(&status);
                if changed || dirty.contains(&r.id) {
                    last.insert(r.id, status);
                    let summary = RigSummary::from_live(r, now, &judge);
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
