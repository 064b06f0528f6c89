//! The fleet and its rigs: the list (filtered, sorted and paginated in memory from the live
//! state, which holds every rig), a rig's detail, devices, history and events, renaming,
//! grouping and tagging, approval and removal. The REST API and the dashboard both call these.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::actor::{Actor, Permission};
use super::audit::record as audit;
use super::error::FleetError;
use super::status::{RigStatus, StatusJudge};
use crate::app::AppState;
use crate::db::RigRow;
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
    /// The summary of a live entry at `now_ms`, with the status `judge` gives it.
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

/// One page of the live fleet, filtered and sorted.
pub fn list(state: &AppState, actor: &Actor, q: &RigQuery) -> Result<RigList, FleetError> {
    actor.require(Permission::View)?;
    let rows = select(state, q)?;
    let total = rows.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let items = rows.into_iter().skip(offset).take(limit).collect();
    Ok(RigList { total, items })
}

/// Every rig matching the filter, sorted (the query's page is ignored): what the dashboard
/// pages through itself and what a bulk action on "all matching" reaches.
pub fn matching(
    state: &AppState,
    actor: &Actor,
    q: &RigQuery,
) -> Result<Vec<RigSummary>, FleetError> {
    actor.require(Permission::View)?;
    select(state, q)
}

fn select(state: &AppState, q: &RigQuery) -> Result<Vec<RigSummary>, FleetError> {
    let now = crate::now_ms();
    let judge = &state.status;
    let sort = q.sort.as_deref().unwrap_or("name");
    if !SORT_COLUMNS.contains(&sort) {
        return Err(FleetError::BadRequest(format!(
            "sort must be one of {}",
            SORT_COLUMNS.join(", ")
        )));
    }
    let descending = match q.dir.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => return Err(FleetError::BadRequest("dir must be asc or desc".into())),
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RigStatus::parse(s).ok_or_else(|| {
            FleetError::BadRequest("status must be online, warning or offline".into())
        })?),
    };
    let needle =
        q.q.as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
    let mut rows: Vec<RigSummary> = state.hub.live.with_all(|rigs| {
        rigs.values()
            .map(|r| RigSummary::from_live(r, now, judge))
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
    Ok(rows)
}

fn status_rank(s: RigStatus) -> f64 {
    match s {
        RigStatus::Offline => 0.0,
        RigStatus::Warning => 1.0,
        RigStatus::Online => 2.0,
    }
}

/// Sums of one algorithm over the fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlgorithmSums {
    /// The algorithm.
    pub algorithm: String,
    /// Hash rate of the rigs not offline (H/s).
    pub hashrate_hps: f64,
    /// Power of the rigs not offline (W).
    pub power_watts: f64,
    /// Rigs mining it: online, warning, offline.
    pub rigs: [usize; 3],
}

/// The whole fleet in numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetTotals {
    /// Per algorithm, by name.
    pub algorithms: Vec<AlgorithmSums>,
    /// Rigs: all, online, warning, offline.
    pub rigs: [usize; 4],
}

/// Totals per algorithm and rig counts by status, from the live state with each rig's one
/// status. Figures anyone who may see the fleet sees on every page, so no permission is asked.
pub fn totals(state: &AppState) -> FleetTotals {
    let now = crate::now_ms();
    let mut by_algo: BTreeMap<String, AlgorithmSums> = BTreeMap::new();
    let mut fleet = [0usize; 4];
    state.hub.live.with_all(|all| {
        for r in all.values() {
            let status = state.status.status(r, now);
            let idx = match status {
                RigStatus::Online => 0,
                RigStatus::Warning => 1,
                RigStatus::Offline => 2,
            };
            fleet[0] += 1;
            fleet[idx + 1] += 1;
            let Some(s) = &r.sample else { continue };
            let mut seen = HashSet::new();
            for d in &s.devices {
                // Monitored devices that mine nothing (GPUs before a GPU backend) belong to no
                // algorithm's totals.
                if d.algorithm.is_empty() {
                    continue;
                }
                let a = by_algo.entry(d.algorithm.clone()).or_default();
                if status != RigStatus::Offline {
                    a.hashrate_hps += d.hashrate_1m_hps;
                    a.power_watts += f64::from(d.power_watts.unwrap_or(0.0));
                }
                if seen.insert(d.algorithm.as_str()) {
                    a.rigs[idx] += 1;
                }
            }
        }
    });
    FleetTotals {
        algorithms: by_algo
            .into_iter()
            .map(|(algorithm, a)| AlgorithmSums { algorithm, ..a })
            .collect(),
        rigs: fleet,
    }
}

/// The groups rigs can join, by name.
pub async fn groups(state: &AppState, actor: &Actor) -> Result<Vec<String>, FleetError> {
    actor.require(Permission::View)?;
    Ok(state.hub.store.list_groups().await?)
}

/// Finds a rig by its public id (the lookup every rig operation starts with; it asks no
/// permission, the operation does).
pub async fn find_rig(state: &AppState, uid: &str) -> Result<RigRow, FleetError> {
    if uid.len() > 128 {
        return Err(FleetError::not_found("rig"));
    }
    state
        .hub
        .store
        .rig_by_uid(uid)
        .await?
        .ok_or_else(|| FleetError::not_found("rig"))
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
    /// The newest sample as sent; its `pool.user` (the wallet) only for those who may see
    /// wallets.
    #[schema(value_type = Option<Object>)]
    pub latest_sample: Option<serde_json::Value>,
}

/// One rig, as `actor` may see it: the wallet in the newest sample's pool state only with
/// [`Permission::SeeWallets`].
pub async fn detail(state: &AppState, actor: &Actor, uid: &str) -> Result<RigDetail, FleetError> {
    actor.require(Permission::View)?;
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
    let see_wallets = actor.can(Permission::SeeWallets);
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
            .map(|v| redact_sample(v, see_wallets)),
    })
}

/// A rig's devices.
pub async fn devices(
    state: &AppState,
    actor: &Actor,
    uid: &str,
) -> Result<Vec<DeviceView>, FleetError> {
    Ok(detail(state, actor, uid).await?.devices)
}

/// The newest sample without the pool's user (the wallet) unless the reader may see wallets.
fn redact_sample(mut sample: serde_json::Value, see_wallets: bool) -> serde_json::Value {
    if !see_wallets {
        if let Some(pool) = sample.get_mut("pool").and_then(|p| p.as_object_mut()) {
            pool.remove("user");
        }
    }
    sample
}

/// Range of a history query.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
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

/// A rig's history over a range, from the table that fits the range.
pub async fn history(
    state: &AppState,
    actor: &Actor,
    uid: &str,
    q: &HistoryQuery,
) -> Result<HistoryView, FleetError> {
    actor.require(Permission::View)?;
    let to = q.to_ms.unwrap_or_else(crate::now_ms);
    let from = q.from_ms.unwrap_or(to.saturating_sub(3_600_000));
    // Checked: the bounds come from the query string, any i64 (found by schemathesis).
    let span = to.checked_sub(from);
    if from >= to || span.is_none_or(|s| s > 400 * 86_400_000) {
        return Err(FleetError::BadRequest(
            "from_ms must be before to_ms, at most 400 days apart".into(),
        ));
    }
    let row = find_rig(state, uid).await?;
    let h = state.hub.store.history(row.id, from, to).await?;
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

/// An event.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Id (pages go by it).
    pub id: i64,
    /// Rig id, if about one.
    pub rig: Option<String>,
    /// Unix ms.
    pub time_ms: i64,
    /// info, warning, error.
    pub severity: String,
    /// What kind.
    pub kind: String,
    /// Text.
    pub message: String,
}

/// Events, newest first: one rig's (`rig`) or the whole fleet's, `limit` (1 to 1000) at most,
/// ids under `before` (the next page).
pub async fn events(
    state: &AppState,
    actor: &Actor,
    rig: Option<&str>,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<EventView>, FleetError> {
    actor.require(Permission::View)?;
    let rig = match rig {
        Some(uid) => Some(find_rig(state, uid).await?),
        None => None,
    };
    let rows = state
        .hub
        .store
        .list_events(rig.as_ref().map(|r| r.id), limit.clamp(1, 1000), before)
        .await?;
    let uid_of = |id: Option<i64>| id.and_then(|id| state.hub.live.get(id)).map(|l| l.uid.0);
    Ok(rows
        .into_iter()
        .map(|e| EventView {
            id: e.id,
            rig: uid_of(e.rig_id),
            time_ms: e.time_ms,
            severity: e.severity,
            kind: e.kind,
            message: e.message,
        })
        .collect())
}

/// Changes to a rig's name, group or tags.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RigPatch {
    /// New name.
    pub name: Option<String>,
    /// New group; empty string removes it.
    pub group: Option<String>,
    /// New tags (replace the old ones).
    pub tags: Option<Vec<String>>,
}

/// Longest rig name.
pub const MAX_NAME: usize = 128;
/// Longest group name and tag.
pub const MAX_LABEL: usize = 64;
/// Most tags on a rig.
pub const MAX_TAGS: usize = 32;

fn check_label(field: &str, s: &str, max: usize) -> Result<(), FleetError> {
    if s.is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(FleetError::BadRequest(format!(
            "{field} must be 1 to {max} characters without control characters"
        )));
    }
    Ok(())
}

/// The patch with its values trimmed and checked, or why it is refused.
fn checked(p: &RigPatch) -> Result<RigPatch, FleetError> {
    let name = p.name.as_deref().map(str::trim);
    if let Some(name) = name {
        check_label("name", name, MAX_NAME)?;
    }
    let group = p.group.as_deref().map(str::trim);
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        check_label("group", group, MAX_LABEL)?;
    }
    let tags: Option<Vec<String>> = p
        .tags
        .as_ref()
        .map(|t| t.iter().map(|t| t.trim().to_string()).collect());
    if let Some(tags) = &tags {
        if tags.len() > MAX_TAGS {
            return Err(FleetError::BadRequest(format!("at most {MAX_TAGS} tags")));
        }
        for t in tags {
            check_label("tag", t, MAX_LABEL)?;
        }
    }
    Ok(RigPatch {
        name: name.map(str::to_owned),
        group: group.map(str::to_owned),
        tags,
    })
}

/// Renames, regroups or retags a rig ([`Permission::ManageRigs`]); answers the rig as it is
/// now.
pub async fn patch(
    state: &AppState,
    actor: &Actor,
    uid: &str,
    p: &RigPatch,
) -> Result<RigDetail, FleetError> {
    actor.require(Permission::ManageRigs)?;
    let p = checked(p)?;
    let row = find_rig(state, uid).await?;
    let store = &state.hub.store;
    if let Some(name) = &p.name {
        store.rename_rig(row.id, name).await?;
    }
    if let Some(group) = &p.group {
        store
            .set_rig_group(row.id, (!group.is_empty()).then_some(group.as_str()))
            .await?;
    }
    if let Some(tags) = &p.tags {
        store.set_rig_tags(row.id, tags).await?;
    }
    let fresh = find_rig(state, uid).await?;
    state.hub.live.update(row.id, |l| {
        l.name = fresh.name.clone();
        l.group = fresh.group.clone();
        l.tags = fresh.tags.clone();
    });
    let mut changes = Vec::new();
    if row.name != fresh.name {
        changes.push(format!("name {:?} → {:?}", row.name, fresh.name));
    }
    if row.group != fresh.group {
        changes.push(format!("group {:?} → {:?}", row.group, fresh.group));
    }
    if row.tags != fresh.tags {
        changes.push(format!("tags {:?} → {:?}", row.tags, fresh.tags));
    }
    let detail_text = if changes.is_empty() {
        "no change".to_string()
    } else {
        changes.join("; ")
    };
    audit(state, actor, "rig.update", uid, &detail_text).await;
    detail(state, actor, uid).await
}

/// Lets a rig enrolled with an approval-required token connect
/// ([`Permission::ManageEnrollment`]).
pub async fn approve(state: &AppState, actor: &Actor, uid: &str) -> Result<RigRow, FleetError> {
    actor.require(Permission::ManageEnrollment)?;
    let row = find_rig(state, uid).await?;
    state.hub.store.approve_rig(row.id).await?;
    state
        .hub
        .live
        .update(row.id, |l| l.pending_approval = false);
    let before = if row.pending_approval {
        "pending"
    } else {
        "approved"
    };
    audit(
        state,
        actor,
        "rig.approve",
        uid,
        &format!("{before} → approved"),
    )
    .await;
    Ok(row)
}

/// Removes a rig ([`Permission::ManageEnrollment`]): its history goes, its link is closed, and
/// its agent's key stops working when the agent fronts no other rig. Answers the rig as it was.
pub async fn remove(state: &AppState, actor: &Actor, uid: &str) -> Result<RigRow, FleetError> {
    actor.require(Permission::ManageEnrollment)?;
    let row = find_rig(state, uid).await?;
    state.hub.store.remove_rig(row.id).await?;
    state.hub.disconnect_rig(row.id, "rig removed");
    state.hub.live.remove(row.id);
    audit(
        state,
        actor,
        "rig.remove",
        uid,
        &format!("{:?} → removed", row.name),
    )
    .await;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{header, Request, StatusCode};
    use rigfleet_proto::telemetry::{DeviceSample, RigSample, Sample};
    use sha2::Digest;
    use tower::ServiceExt;

    use super::*;
    use crate::db::test_db::TestDb;
    use crate::db::{Role, Scope};
    use crate::hub::live::LiveState;
    use crate::hub::Hub;
    use crate::ingest::{WriterMetrics, WriterOptions};
    use crate::metrics::ServerMetrics;

    fn sample(time_ms: i64, hps: f64) -> Sample {
        Sample {
            seq: 1,
            time_unix_ms: time_ms,
            rig: RigSample::default(),
            devices: vec![DeviceSample {
                device_id: "dev0".into(),
                algorithm: "sha256d".into(),
                enabled: true,
                hashrate_5s_hps: hps,
                hashrate_1m_hps: hps,
                accepted: 10,
                rejected: 0,
                stale: 0,
                hardware_errors: 0,
                temperature_celsius: Some(60.0),
                fan_rpm: None,
                fan_percent: None,
                power_watts: None,
                core_clock_mhz: None,
                memory_clock_mhz: None,
            }],
            pool: None,
        }
    }

    fn sha256_hex(text: &str) -> String {
        crate::keys::hex(&sha2::Sha256::digest(text.as_bytes()))
    }

    async fn get(app: &axum::Router, path: &str, auth: (header::HeaderName, &str)) -> String {
        let res = app
            .clone()
            .oneshot(
                Request::get(path)
                    .header(auth.0, auth.1)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .expect("body");
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Issue 12: a device far under its 1-hour average made the dashboard say WARNING while
    /// the REST API and `/metrics` said all was well. The three now ask one judge.
    #[tokio::test]
    async fn a_rig_under_its_hour_average_is_warning_in_the_api_the_dashboard_and_metrics() {
        let db = TestDb::sqlite().await.expect("test database");
        let store = db.store.clone();
        let rig_id = crate::db::rigs::tests::one_rig(&store, "rig-slow", 1).await;
        let live = Arc::new(LiveState::default());
        let judge = Arc::new(StatusJudge::default());
        let metrics =
            Arc::new(ServerMetrics::new(live.clone(), judge.clone()).expect("metrics register"));
        let writer = crate::ingest::spawn_writer(
            store.clone(),
            WriterOptions::default(),
            WriterMetrics::unregistered(),
        );
        let key = crate::keys::ServerKey::generate().expect("key");
        let hub = Arc::new(Hub::new(
            store.clone(),
            writer,
            key,
            None,
            live.clone(),
            metrics,
            10,
        ));
        hub.rebuild_live_state().await.expect("live state");

        // Twenty minutes at 1 MH/s, then half of that now.
        let now = crate::now_ms();
        let base = live.get(rig_id).expect("rig in the live state");
        for i in 0..=20 {
            let mut r = base.clone();
            r.sample = Some(sample(now - (21 - i) * 60_000, 1e6));
            judge.record(&r);
        }
        live.update(rig_id, |r| {
            r.sample = Some(sample(now, 0.5e6));
            r.last_seen_ms = Some(now);
            r.connected = true;
        });

        let user = store
            .create_user("ann", "not a hash: nobody logs in", Role::Viewer)
            .await
            .expect("user");
        let token = "rft_status_truth_test_token";
        store
            .create_api_token(user, "truth", &sha256_hex(token), &[Scope::Read])
            .await
            .expect("token");
        let cookie = "status-truth-test-session";
        store
            .create_session(&sha256_hex(cookie), user, "csrf", now, now + 3_600_000)
            .await
            .expect("session");
        let state = AppState {
            hub: hub.clone(),
            status: judge,
            metrics_token: None,
            public_url: "http://127.0.0.1:9".into(),
            tls_fingerprint: None,
            enroll_limiter: Arc::default(),
        };
        let app = crate::app::router(state);

        let bearer = format!("Bearer {token}");
        let list = get(&app, "/api/v1/rigs", (header::AUTHORIZATION, &bearer)).await;
        let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
        assert_eq!(list["items"][0]["id"], "rig-slow", "{list}");
        assert_eq!(list["items"][0]["status"], "warning", "{list}");

        let session = format!("rf_session={cookie}");
        let html = get(&app, "/", (header::COOKIE, &session)).await;
        assert!(
            html.contains(r#"<tr data-rig="rig-slow" class="rig st-warning">"#),
            "{html}"
        );

        let text = get(&app, "/metrics", (header::USER_AGENT, "test")).await;
        let line = text
            .lines()
            .find(|l| l.starts_with("rigfleet_rig_warning{") && l.contains(r#"rig="rig-slow""#))
            .unwrap_or_else(|| panic!("no warning series: {text}"));
        assert!(line.ends_with(" 1"), "{line}");

        db.cleanup().await;
    }

    #[test]
    fn a_patch_is_trimmed_and_checked_once() {
        let p = checked(&RigPatch {
            name: Some("  rig one ".into()),
            group: Some(" ".into()),
            tags: Some(vec![" a ".into(), "b".into()]),
        })
        .expect("valid");
        assert_eq!(p.name.as_deref(), Some("rig one"));
        assert_eq!(p.group.as_deref(), Some(""));
        assert_eq!(p.tags, Some(vec!["a".to_string(), "b".to_string()]));
        for bad in [
            RigPatch {
                name: Some(" ".into()),
                ..Default::default()
            },
            RigPatch {
                name: Some("x".repeat(MAX_NAME + 1)),
                ..Default::default()
            },
            RigPatch {
                group: Some("a\u{7}".into()),
                ..Default::default()
            },
            RigPatch {
                tags: Some(vec!["t".into(); MAX_TAGS + 1]),
                ..Default::default()
            },
            RigPatch {
                tags: Some(vec!["".into()]),
                ..Default::default()
            },
        ] {
            assert!(
                matches!(checked(&bad), Err(FleetError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
