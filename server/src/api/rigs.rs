//! `/api/v1/rigs…`: the fleet list (filtered, sorted and paginated in memory from the live
//! state, which holds every rig), rig detail, history, devices, rename/group/tags, approval and
//! removal.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson, ApiQuery};
use crate::app::AppState;
use crate::db::{RigRow, Scope};
use crate::fleet::status::{RigStatus, StatusJudge};
use crate::hub::live::RigLive;

/// One rig in the fleet list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RigSummary {
    /// Public id (`rig-…`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Group.
    pub group: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// online / warning / offline.
    pub status: RigStatus,
    /// Agent link up now.
    pub connected: bool,
    /// Awaiting an operator's approval.
    pub pending_approval: bool,
    /// Why the rig is flagged, if it is.
    pub flagged: Option<String>,
    /// Sum of device 1-minute hash rates (H/s).
    pub hashrate_hps: f64,
    /// Algorithms the devices mine.
    pub algorithms: Vec<String>,
    /// Hottest device (°C).
    pub max_temperature: Option<f32>,
    /// Mean fan duty (%).
    pub fan_percent: Option<f32>,
    /// Total power (W).
    pub power_watts: Option<f32>,
    /// Shares accepted (sum over devices, since the agent started).
    pub accepted: u64,
    /// Shares rejected.
    pub rejected: u64,
    /// Current pool URL.
    pub pool: Option<String>,
    /// Pool state as the agent sees it.
    pub pool_state: Option<String>,
    /// Rig uptime (s).
    pub uptime_secs: Option<u64>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// Last time the server heard from the rig (Unix ms).
    pub last_seen_ms: Option<i64>,
}

impl RigSummary {
    /// The summary of a live entry at `now_ms`.
    pub fn from_live(rig: &RigLive, now_ms: i64, judge: &StatusJudge) -> Self {
        let s = rig.sample.as_ref();
        let devices = s.map(|s| s.devices.as_slice()).unwrap_or(&[]);
        let temps: Vec<f32> = devices
            .iter()
            .filter_map(|d| d.temperature_celsius)
            .collect();
        let fans: Vec<f32> = devices.iter().filter_map(|d| d.fan_percent).collect();
        let powers: Vec<f32> = devices.iter().filter_map(|d| d.power_watts).collect();
        let mut algorithms: Vec<String> = devices.iter().map(|d| d.algorithm.clone()).collect();
        algorithms.sort();
        algorithms.dedup();
        RigSummary {
            id: rig.uid.0.clone(),
            name: rig.name.clone(),
            group: rig.group.clone(),
            tags: rig.tags.clone(),
            status: judge.status(rig, now_ms),
            connected: rig.connected,
            pending_approval: rig.pending_approval,
            flagged: rig.flagged.clone(),
            hashrate_hps: rig.hashrate_hps(),
            algorithms,
            max_temperature: temps.iter().copied().reduce(f32::max),
            fan_percent: (!fans.is_empty()).then(|| fans.iter().sum::<f32>() / fans.len() as f32),
            power_watts: (!powers.is_empty()).then(|| powers.iter().sum()),
            accepted: devices.iter().map(|d| d.accepted).sum(),
            rejected: devices.iter().map(|d| d.rejected).sum(),
            pool: s.and_then(|s| s.pool.as_ref()).map(|p| p.url.clone()),
            pool_state: s.and_then(|s| s.pool.as_ref()).map(|p| p.state.clone()),
            uptime_secs: s.map(|s| s.rig.uptime_secs),
            agent_version: rig.agent_version.clone(),
            last_seen_ms: rig.last_seen_ms,
        }
    }
}

/// Filters, sort and page of the fleet list.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RigQuery {
    /// Text in the name, id, group, tags or pool.
    pub q: Option<String>,
    /// Exact group.
    pub group: Option<String>,
    /// Has this tag.
    pub tag: Option<String>,
    /// online, warning or offline.
    pub status: Option<String>,
    /// name, status, hashrate, temperature, fan, power, pool, uptime, version, last_seen, group.
    pub sort: Option<String>,
    /// asc (default) or desc.
    pub dir: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Rows to skip.
    pub offset: Option<usize>,
}

/// A page of the fleet list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RigList {
    /// Rigs matching the filter, all pages together.
    pub total: usize,
    /// This page.
    pub items: Vec<RigSummary>,
}

/// The columns the list sorts by.
pub const SORT_COLUMNS: &[&str] = &[
    "name",
    "status",
    "hashrate",
    "temperature",
    "fan",
    "power",
    "pool",
    "uptime",
    "version",
    "last_seen",
    "group",
];

/// Filters, sorts and pages the live fleet (also used by the web pages).
pub fn query_fleet(state: &AppState, q: &RigQuery) -> Result<RigList, ApiFailure> {
    let now = crate::now_ms();
    let judge = state.status.clone();
    let sort = q.sort.as_deref().unwrap_or("name");
    if !SORT_COLUMNS.contains(&sort) {
        return Err(ApiFailure::bad_request(format!(
            "sort must be one of {}",
            SORT_COLUMNS.join(", ")
        )));
    }
    let descending = match q.dir.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(ApiFailure::bad_request("dir must be asc or desc")),
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some("online") => Some(RigStatus::Online),
        Some("warning") => Some(RigStatus::Warning),
        Some("offline") => Some(RigStatus::Offline),
        Some(_) => {
            return Err(ApiFailure::bad_request(
                "status must be online, warning or offline",
            ))
        }
    };
    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
    let mut rows: Vec<RigSummary> = state.hub.live.with_all(|rigs| {
        rigs.values()
            .map(|r| RigSummary::from_live(r, now, &judge))
            .filter(|r| status.is_none_or(|s| r.status == s))
            .filter(|r| {
                q.group
                    .as_deref()
                    .is_none_or(|g| r.group.as_deref() == Some(g))
            })
            .filter(|r| {
                q.tag
                    .as_deref()
                    .is_none_or(|t| r.tags.iter().any(|x| x == t))
            })
            .filter(|r| {
                needle.as_deref().is_none_or(|n| {
                    r.name.to_lowercase().contains(n)
                        || r.id.contains(n)
                        || r.group
                            .as_deref()
                            .is_some_and(|g| g.to_lowercase().contains(n))
                        || r.tags.iter().any(|t| t.to_lowercase().contains(n))
                        || r.pool
                            .as_deref()
                            .is_some_and(|p| p.to_lowercase().contains(n))
                })
            })
            .collect()
    });
    let key = |r: &RigSummary| -> (f64, String) {
        match sort {
            "status" => (status_rank(r.status), String::new()),
            "hashrate" => (r.hashrate_hps, String::new()),
            "temperature" => (r.max_temperature.map_or(f64::MIN, f64::from), String::new()),
            "fan" => (r.fan_percent.map_or(f64::MIN, f64::from), String::new()),
            "power" => (r.power_watts.map_or(f64::MIN, f64::from), String::new()),
            "uptime" => (r.uptime_secs.map_or(-1.0, |u| u as f64), String::new()),
            "last_seen" => (r.last_seen_ms.map_or(-1.0, |t| t as f64), String::new()),
            "pool" => (0.0, r.pool.clone().unwrap_or_default()),
            "version" => (0.0, r.agent_version.clone().unwrap_or_default()),
            "group" => (0.0, r.group.clone().unwrap_or_default()),
            _ => (0.0, r.name.to_lowercase()),
        }
    };
    rows.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0)
            .then_with(|| ka.1.cmp(&kb.1))
            .then_with(|| a.id.cmp(&b.id))
    });
    if descending {
        rows.reverse();
    }
    let total = rows.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = rows.into_iter().skip(offset).take(limit).collect();
    Ok(RigList { total, items })
}

fn status_rank(s: RigStatus) -> f64 {
    match s {
        RigStatus::Offline => 0.0,
        RigStatus::Warning => 1.0,
        RigStatus::Online => 2.0,
    }
}

/// List rigs.
#[utoipa::path(get, path = "/api/v1/rigs", params(RigQuery), responses((status = 200, body = RigList)), tag = "rigs")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RigQuery>,
) -> Result<Json<RigList>, ApiFailure> {
    caller.require(Scope::Read)?;
    query_fleet(&state, &q).map(Json)
}

/// A device as the detail shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// Stable id (PCI bus id, USB path, serial, `cpu`).
    pub id: String,
    /// cpu, gpu, usb, asic…
    pub kind: String,
    /// Model.
    pub model: String,
    /// Newest figures, if any telemetry named the device.
    #[schema(value_type = Option<Object>)]
    pub latest: Option<serde_json::Value>,
}

/// Config state of a rig.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ConfigState {
    /// Version the server wants (0 = none yet).
    pub desired_version: u64,
    /// Version the agent last reported.
    pub applied_version: Option<u64>,
    /// Whether that apply worked.
    pub applied_ok: Option<bool>,
    /// Its error.
    pub applied_error: Option<String>,
    /// When (Unix ms).
    pub applied_at_ms: Option<i64>,
}

/// Everything about one rig.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RigDetail {
    /// The list view of the rig.
    pub summary: RigSummary,
    /// Host name from the last handshake.
    pub hostname: Option<String>,
    /// Enrolled at (Unix ms).
    pub created_at_ms: i64,
    /// Highest telemetry seq stored.
    pub last_seq: Option<u64>,
    /// Devices.
    pub devices: Vec<DeviceView>,
    /// Config state.
    pub config: ConfigState,
    /// The newest sample as sent; its `pool.user` (the wallet) only for the write scope and up.
    #[schema(value_type = Option<Object>)]
    pub latest_sample: Option<serde_json::Value>,
}

/// Finds a rig by its public id.
pub async fn find_rig(state: &AppState, uid: &str) -> Result<RigRow, ApiFailure> {
    if uid.len() > 128 {
        return Err(ApiFailure::not_found("rig"));
    }
    state
        .hub
        .store
        .rig_by_uid(uid)
        .await?
        .ok_or_else(|| ApiFailure::not_found("rig"))
}

/// One rig.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}", params(("rig" = String, Path, description = "rig id")), responses((status = 200, body = RigDetail), (status = 404)), tag = "rigs")]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<Json<RigDetail>, ApiFailure> {
    caller.require(Scope::Read)?;
    rig_detail(&state, &uid, caller.level).await.map(Json)
}

/// Builds the detail as a caller with `scope` may see it (also used by the web pages): the
/// wallet in the newest sample's pool state only for those who [may see
/// wallets](super::auth::may_see_wallets).
pub async fn rig_detail(
    state: &AppState,
    uid: &str,
    scope: Scope,
) -> Result<RigDetail, ApiFailure> {
    let row = find_rig(state, uid).await?;
    let live = state
        .hub
        .live
        .get(row.id)
        .unwrap_or_else(|| crate::hub::live_entry(&row, state.hub.telemetry_interval_secs));
    let devices = state.hub.store.list_devices(row.id).await?;
    let sample = live.sample.as_ref();
    let devices = devices
        .into_iter()
        .map(|d| DeviceView {
            latest: sample
                .and_then(|s| {
                    s.devices
                        .iter()
                        .find(|x| x.device_id.as_str() == d.device_uid)
                })
                .and_then(|x| serde_json::to_value(x).ok()),
            id: d.device_uid,
            kind: d.kind,
            model: d.model,
        })
        .collect();
    Ok(RigDetail {
        summary: RigSummary::from_live(&live, crate::now_ms(), &state.status),
        hostname: live.hostname.clone(),
        created_at_ms: row.created_at_ms,
        last_seq: row.last_seq,
        devices,
        config: ConfigState {
            desired_version: row.desired_version,
            applied_version: row.applied_version,
            applied_ok: row.applied_ok,
            applied_error: row.applied_error.clone(),
            applied_at_ms: row.applied_at_ms,
        },
        latest_sample: sample
            .and_then(|s| serde_json::to_value(s).ok())
            .map(|v| redact_sample(v, scope)),
    })
}

/// The newest sample without the pool's user (the wallet) unless `scope` may see wallets.
fn redact_sample(mut sample: serde_json::Value, scope: Scope) -> serde_json::Value {
    if !super::auth::may_see_wallets(scope) {
        if let Some(pool) = sample.get_mut("pool").and_then(|p| p.as_object_mut()) {
            pool.remove("user");
        }
    }
    sample
}

/// Changes to a rig's name, group or tags.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RigPatch {
    /// New name.
    pub name: Option<String>,
    /// New group; empty string removes it.
    pub group: Option<String>,
    /// New tags (replace the old ones).
    pub tags: Option<Vec<String>>,
}

fn check_label(field: &str, s: &str, max: usize) -> Result<(), ApiFailure> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(ApiFailure::bad_request(format!(
            "{field} must be 1 to {max} characters without control characters"
        )));
    }
    Ok(())
}

/// Rename, regroup, retag.
#[utoipa::path(patch, path = "/api/v1/rigs/{rig}", params(("rig" = String, Path, description = "rig id")), request_body = RigPatch, responses((status = 200, body = RigDetail)), tag = "rigs")]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiJson(p): ApiJson<RigPatch>,
) -> Result<Json<RigDetail>, ApiFailure> {
    caller.require(Scope::Write)?;
    let row = find_rig(&state, &uid).await?;
    let store = &state.hub.store;
    if let Some(name) = &p.name {
        check_label("name", name, 128)?;
        store.rename_rig(row.id, name.trim()).await?;
    }
    if let Some(group) = &p.group {
        let group = group.trim();
        if !group.is_empty() {
            check_label("group", group, 64)?;
        }
        store
            .set_rig_group(row.id, (!group.is_empty()).then_some(group))
            .await?;
    }
    if let Some(tags) = &p.tags {
        if tags.len() > 32 {
            return Err(ApiFailure::bad_request("at most 32 tags"));
        }
        for t in tags {
            check_label("tag", t, 64)?;
        }
        store.set_rig_tags(row.id, tags).await?;
    }
    let fresh = find_rig(&state, &uid).await?;
    state.hub.live.update(row.id, |l| {
        l.name = fresh.name.clone();
        l.group = fresh.group.clone();
        l.tags = fresh.tags.clone();
    });
    audit(&state, &caller, "rig.update", &uid, &format!("{p:?}")).await;
    rig_detail(&state, &uid, caller.level).await.map(Json)
}

/// Approve a rig enrolled with an approval-required token.
#[utoipa::path(post, path = "/api/v1/rigs/{rig}/approve", params(("rig" = String, Path, description = "rig id")), responses((status = 204)), tag = "rigs")]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Scope::Admin)?;
    let row = find_rig(&state, &uid).await?;
    state.hub.store.approve_rig(row.id).await?;
    state
        .hub
        .live
        .update(row.id, |l| l.pending_approval = false);
    audit(&state, &caller, "rig.approve", &uid, "").await;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a rig: its history goes, and its agent's key stops working when the agent fronts no
/// other rig.
#[utoipa::path(delete, path = "/api/v1/rigs/{rig}", params(("rig" = String, Path, description = "rig id")), responses((status = 204)), tag = "rigs")]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Scope::Admin)?;
    let row = find_rig(&state, &uid).await?;
    state.hub.store.remove_rig(row.id).await?;
    state.hub.disconnect_rig(row.id, "rig removed");
    state.hub.live.remove(row.id);
    audit(&state, &caller, "rig.remove", &uid, &row.name).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Range of a history query.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start (Unix ms); default: `to` − 1 hour.
    pub from_ms: Option<i64>,
    /// End (Unix ms); default: now.
    pub to_ms: Option<i64>,
}

/// One point of a rig's history.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryPointView {
    /// Bucket start or sample time (Unix ms).
    pub ts_ms: i64,
    /// Total hash rate (H/s).
    pub hashrate_hps: f64,
    /// Hottest device (°C).
    pub max_temperature: Option<f32>,
    /// Mean fan (%).
    pub fan_percent: Option<f32>,
    /// Total power (W).
    pub power_watts: Option<f32>,
    /// Shares accepted in the bucket.
    pub accepted: u64,
    /// Rejected in the bucket.
    pub rejected: u64,
    /// Stale in the bucket.
    pub stale: u64,
}

/// A rig's history.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HistoryView {
    /// raw, minute or hour: the table the range was read from.
    pub resolution: String,
    /// Points in time order.
    pub points: Vec<HistoryPointView>,
}

/// History of a rig over a range, from the table that fits the range.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}/history", params(("rig" = String, Path, description = "rig id"), HistoryQuery), responses((status = 200, body = HistoryView)), tag = "rigs")]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiFailure> {
    caller.require(Scope::Read)?;
    let row = find_rig(&state, &uid).await?;
    rig_history(&state, row.id, q).await.map(Json)
}

/// Reads a rig's history (also used by the web pages).
pub async fn rig_history(
    state: &AppState,
    rig_id: i64,
    q: HistoryQuery,
) -> Result<HistoryView, ApiFailure> {
    let to = q.to_ms.unwrap_or_else(crate::now_ms);
    let from = q.from_ms.unwrap_or(to.saturating_sub(3_600_000));
    // Checked: the bounds come from the query string, any i64 (found by schemathesis).
    let span = to.checked_sub(from);
    if from >= to || span.is_none_or(|s| s > 400 * 86_400_000) {
        return Err(ApiFailure::bad_request(
            "from_ms must be before to_ms, at most 400 days apart",
        ));
    }
    let h = state.hub.store.history(rig_id, from, to).await?;
    Ok(HistoryView {
        resolution: format!("{:?}", h.resolution).to_lowercase(),
        points: h
            .points
            .into_iter()
            .map(|p| HistoryPointView {
                ts_ms: p.ts_ms,
                hashrate_hps: p.hashrate_hps,
                max_temperature: p.max_temperature,
                fan_percent: p.avg_fan_percent,
                power_watts: p.power_watts,
                accepted: p.accepted,
                rejected: p.rejected,
                stale: p.stale,
            })
            .collect(),
    })
}

/// Writes an audit record; a failure is logged, not returned (the change itself happened).
pub async fn audit(state: &AppState, caller: &Caller, action: &str, target: &str, detail: &str) {
    state
        .hub
        .store
        .audit(&caller.actor, action, target, detail)
        .await;
}
