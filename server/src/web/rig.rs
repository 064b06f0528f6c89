//! The rig page (devices, charts, events, config, commands) and its forms: command, rename /
//! group / tags, approve, remove.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::{Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use super::chart::{line_chart, Series, Unit};
use super::common::{rig_href, WebForm};
use super::live::{status_name, WebShared};
use super::overview::command_of;
use super::session::WebUser;
use super::{fmt, render, Nav, WebError};
use crate::app::AppState;
use crate::fleet::rigs::{self as fleet_rigs, HistoryPointView, HistoryQuery, RigPatch};
use crate::fleet::{commands, configs, FleetError, Permission};

/// The rig page's chart range.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RigPageQuery {
    /// 1h, 24h, 7d or 30d.
    pub range: Option<String>,
}

struct DeviceRowView {
    id: String,
    kind: String,
    model: String,
    algorithm: String,
    hashrate: String,
    avg: String,
    temp: String,
    fan: String,
    power: String,
    shares: String,
}

struct EventView {
    time: String,
    severity: String,
    kind: String,
    message: String,
}

struct CommandViewRow {
    id: String,
    command: String,
    by: String,
    time: String,
    result: &'static str,
    output: String,
}

struct RangeLink {
    label: &'static str,
    href: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "rig.html")]
struct RigPage {
    nav: Option<Nav>,
    csrf: String,
    can_write: bool,
    is_admin: bool,
    id: String,
    action_base: String,
    name: String,
    status: &'static str,
    group: String,
    tags: String,
    hostname: String,
    version: String,
    pool: String,
    pool_state: String,
    hashrate: String,
    uptime: String,
    last_seen: String,
    enrolled: String,
    note: Option<String>,
    pending: bool,
    devices: Vec<DeviceRowView>,
    charts: Vec<String>,
    ranges: Vec<RangeLink>,
    events: Vec<EventView>,
    commands: Vec<CommandViewRow>,
    desired_version: u64,
    applied: String,
    desired_json: Option<String>,
    config_algorithm: String,
    config_pools: Vec<super::rig_config::PoolRow>,
    algorithms: &'static [&'static str],
}

const RANGES: &[(&str, i64)] = &[
    ("1h", 3_600_000),
    ("24h", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];

fn resolution_label(resolution: &str) -> &'static str {
    match resolution {
        "minute" => "minute",
        "hour" => "hour",
        _ => "sample",
    }
}

/// `GET /rigs/{rig}`.
pub async fn rig_page(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
    Query(q): Query<RigPageQuery>,
) -> Result<Response, WebError> {
    let actor = user.as_actor();
    let row = fleet_rigs::find_rig(&state, &uid).await?;
    let detail = fleet_rigs::detail(&state, &actor, &uid).await?;
    let live = state.hub.live.get(row.id);
    let sample = live.as_ref().and_then(|l| l.sample.as_ref());
    let now = crate::now_ms();
    let s = &detail.summary;
    let range = q.range.as_deref().unwrap_or("1h");
    let span = RANGES
        .iter()
        .find(|(r, _)| *r == range)
        .map(|(_, s)| *s)
        .ok_or_else(|| WebError::bad_request("range must be 1h, 24h, 7d or 30d"))?;
    let from = now - span;
    let history = fleet_rigs::history(
        &state,
        &actor,
        &uid,
        &HistoryQuery {
            from_ms: Some(from),
            to_ms: Some(now),
        },
    )
    .await?;
    let pts = |f: &dyn Fn(&HistoryPointView) -> Option<f64>| {
        history
            .points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.ts_ms, v)))
            .collect::<Vec<_>>()
    };
    let charts = vec![
        line_chart(
            "Hash rate",
            Unit::HashRate,
            from,
            now,
            &[Series {
                name: "total",
                points: pts(&|p| Some(p.hashrate_hps)),
            }],
        ),
        line_chart(
            "Temperature (hottest device)",
            Unit::Celsius,
            from,
            now,
            &[Series {
                name: "max",
                points: pts(&|p| p.max_temperature.map(f64::from)),
            }],
        ),
        line_chart(
            "Fan",
            Unit::Percent,
            from,
            now,
            &[Series {
                name: "mean",
                points: pts(&|p| p.fan_percent.map(f64::from)),
            }],
        ),
        line_chart(
            "Power",
            Unit::Watts,
            from,
            now,
            &[Series {
                name: "total",
                points: pts(&|p| p.power_watts.map(f64::from)),
            }],
        ),
        line_chart(
            &format!("Shares per {}", resolution_label(&history.resolution)),
            Unit::Shares,
            from,
            now,
            &[
                Series {
                    name: "accepted",
                    points: pts(&|p| Some(p.accepted as f64)),
                },
                Series {
                    name: "rejected",
                    points: pts(&|p| Some(p.rejected as f64)),
                },
            ],
        ),
    ];
    let devices: Vec<DeviceRowView> = detail
        .devices
        .iter()
        .map(|d| {
            let ds = sample.and_then(|s| s.devices.iter().find(|x| x.device_id.as_str() == d.id));
            DeviceRowView {
                id: d.id.clone(),
                kind: d.kind.clone(),
                model: d.model.clone(),
                algorithm: ds.map_or_else(fmt::dash, |x| x.algorithm.clone()),
                hashrate: ds.map_or_else(fmt::dash, |x| fmt::hashrate(x.hashrate_1m_hps)),
                avg: state
                    .status
                    .device_avg(&s.id, &d.id)
                    .map_or_else(fmt::dash, fmt::hashrate),
                temp: fmt::temp(ds.and_then(|x| x.temperature_celsius)),
                fan: fmt::percent(ds.and_then(|x| x.fan_percent)),
                power: fmt::watts(ds.and_then(|x| x.power_watts)),
                shares: ds.map_or_else(fmt::dash, |x| {
                    format!("{} / {} / {}", x.accepted, x.rejected, x.stale)
                }),
            }
        })
        .collect();
    let events = fleet_rigs::events(&state, &actor, Some(&uid), 20, None)
        .await?
        .into_iter()
        .map(|e| EventView {
            time: fmt::utc(e.time_ms),
            severity: e.severity,
            kind: e.kind,
            message: e.message,
        })
        .collect();
    let commands = commands::list(&state, &actor, &uid, Some(10), Some(0))
        .await?
        .into_iter()
        .map(|c| CommandViewRow {
            command: c.command["kind"]
                .as_str()
                .map_or_else(|| "?".into(), str::to_owned),
            id: c.id,
            by: c.created_by.unwrap_or_default(),
            time: fmt::utc(c.created_at_ms),
            result: match c.ok {
                None => "pending",
                Some(true) => "ok",
                Some(false) => "failed",
            },
            output: c.output.unwrap_or_default(),
        })
        .collect();
    // Pool passwords and wallets live in the config: operators and admins only.
    let desired = if actor.can(Permission::SeeWallets) {
        match configs::get(&state, &actor, &uid).await {
            Ok(d) => Some(d),
            Err(FleetError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let desired_json = desired
        .as_ref()
        .and_then(|d| serde_json::to_string_pretty(&d.config).ok());
    let desired = desired.map(|d| d.config);
    let c = &detail.config;
    let applied = match (c.applied_version, c.applied_ok) {
        (None, _) => "nothing reported yet".to_string(),
        (Some(v), Some(false)) => format!(
            "version {v} failed: {}",
            c.applied_error.clone().unwrap_or_default()
        ),
        (Some(v), _) => format!(
            "version {v} applied{}",
            c.applied_at_ms
                .map(|t| format!(" at {}", fmt::utc(t)))
                .unwrap_or_default()
        ),
    };
    let base = rig_href(&s.id);
    let page = RigPage {
        nav: Some(Nav::new(&user, "rig")),
        csrf: user.csrf.clone(),
        can_write: user.can_write(),
        is_admin: user.is_admin(),
        id: s.id.clone(),
        name: s.name.clone(),
        status: status_name(s.status),
        group: s.group.clone().unwrap_or_default(),
        tags: s.tags.join(", "),
        hostname: detail.hostname.clone().unwrap_or_else(fmt::dash),
        version: s.agent_version.clone().unwrap_or_else(fmt::dash),
        pool: s.pool.clone().unwrap_or_else(fmt::dash),
        pool_state: s.pool_state.clone().unwrap_or_default(),
        hashrate: fmt::hashrate(s.hashrate_hps),
        uptime: s.uptime_secs.map_or_else(fmt::dash, fmt::duration),
        last_seen: fmt::ago(s.last_seen_ms, now),
        enrolled: fmt::utc(detail.created_at_ms),
        pending: s.pending_approval,
        note: if s.pending_approval {
            Some("waiting for an admin's approval".into())
        } else {
            s.flagged.clone()
        },
        devices,
        charts,
        ranges: RANGES
            .iter()
            .map(|(r, _)| RangeLink {
                label: r,
                href: format!("{base}?range={r}"),
                current: *r == range,
            })
            .collect(),
        action_base: base,
        events,
        commands,
        desired_version: c.desired_version,
        applied,
        desired_json,
        config_algorithm: desired
            .as_ref()
            .map(|c| c.algorithm.clone())
            .unwrap_or_default(),
        config_pools: super::rig_config::pool_rows(desired.as_ref()),
        algorithms: super::rig_config::SUGGESTED_ALGORITHMS,
    };
    render(&page)
}

/// How long the rig page waits for a command's result before showing it as pending.
const COMMAND_WAIT: Duration = Duration::from_secs(8);

/// The rig page's command buttons.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommandForm {
    /// restart_mining, reboot or identify.
    pub cmd: String,
    /// The user's password (a reboot needs it).
    pub confirm_password: String,
}

/// `POST /rigs/{rig}/command`.
pub async fn rig_command(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    Path(uid): Path<String>,
    WebForm(f): WebForm<CommandForm>,
) -> Result<Redirect, WebError> {
    let command = command_of(&f.cmd).ok_or_else(|| WebError::bad_request("unknown command"))?;
    let mut actor = user.as_actor();
    // Refused before the password is asked for: a viewer learns nothing from typing one.
    actor.require(commands::permission(&command))?;
    // A reboot takes the password again, as a wallet change does.
    if commands::needs_password(&command) {
        super::account::confirm_password(&state, &shared, &user, &f.confirm_password).await?;
        actor = actor.reauthenticated();
    }
    let sent = commands::send(&state, &actor, &uid, command).await?;
    // The page shows the result when it comes quickly, else the command as pending.
    let _ = sent.outcome(COMMAND_WAIT).await;
    Ok(Redirect::to(&format!("{}#commands", rig_href(&uid))))
}

/// The rig page's edit form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EditForm {
    /// Name.
    pub name: String,
    /// Group (empty: none).
    pub group: String,
    /// Tags, comma separated.
    pub tags: String,
}

impl EditForm {
    /// The form as a patch of all three.
    fn patch(&self) -> RigPatch {
        RigPatch {
            name: Some(self.name.clone()),
            group: Some(self.group.clone()),
            tags: Some(
                self.tags
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
        }
    }
}

/// `POST /rigs/{rig}/edit`: name, group, tags.
pub async fn rig_edit(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
    WebForm(f): WebForm<EditForm>,
) -> Result<Redirect, WebError> {
    let rig = fleet_rigs::patch(&state, &user.as_actor(), &uid, &f.patch()).await?;
    Ok(Redirect::to(&rig_href(&rig.summary.id)))
}

/// `POST /rigs/{rig}/remove` (admins).
pub async fn rig_remove(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
) -> Result<Redirect, WebError> {
    fleet_rigs::remove(&state, &user.as_actor(), &uid).await?;
    Ok(Redirect::to("/"))
}

/// `POST /rigs/{rig}/approve` (admins): lets a rig enrolled with an approval token connect.
pub async fn rig_approve(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
) -> Result<Redirect, WebError> {
    let row = fleet_rigs::approve(&state, &user.as_actor(), &uid).await?;
    Ok(Redirect::to(&rig_href(&row.rig_uid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edit_form_becomes_a_whole_patch() {
        let p = EditForm {
            name: " a ".into(),
            group: String::new(),
            tags: "x, ,y ,".into(),
        }
        .patch();
        assert_eq!(p.name.as_deref(), Some(" a "));
        assert_eq!(p.group.as_deref(), Some(""));
        assert_eq!(p.tags, Some(vec!["x".to_string(), "y".to_string()]));
    }
}
