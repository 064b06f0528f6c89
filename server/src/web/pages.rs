//! The fleet pages: overview (totals, filtered/sorted/paginated rig table, bulk actions), the
//! rig page (devices, charts, events, config, commands, rename/tags/remove) and "Add rigs".

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use rigfleet_proto::command::Command;
use rigfleet_proto::RigId;
use serde::Deserialize;

use super::chart::{line_chart, Series, Unit};
use super::live::{status_name, WebShared};
use super::session::WebUser;
use super::{fmt, render, respond, Fields, Nav, WebError};
use crate::api::rigs::{find_rig, query_fleet, rig_detail, rig_history, HistoryQuery, RigQuery};
use crate::api::rigs::{RigSummary, SORT_COLUMNS};
use crate::app::AppState;
use crate::coins::CoinData;
use crate::fleet::RigStatus;

/// Rows per overview page unless the query says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most rows per overview page.
pub const MAX_PAGE_SIZE: usize = 500;

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The overview's filter, sort and page.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct OverviewQuery {
    /// Free text.
    pub q: Option<String>,
    /// Group.
    pub group: Option<String>,
    /// Tag.
    pub tag: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Sort column.
    pub sort: Option<String>,
    /// asc / desc.
    pub dir: Option<String>,
    /// 1-based page.
    pub page: Option<usize>,
    /// Page size.
    pub per: Option<usize>,
    /// Commands sent by the last bulk action.
    pub sent: Option<usize>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl OverviewQuery {
    fn filter_query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("q", &self.q),
            ("group", &self.group),
            ("tag", &self.tag),
            ("status", &self.status),
        ] {
            if let Some(v) = nonempty(v) {
                parts.push(format!("{k}={}", urlencode(&v)));
            }
        }
        parts.join("&")
    }

    fn href(&self, sort: &str, dir: &str, page: usize) -> String {
        let mut q = self.filter_query();
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(&format!("sort={}&dir={dir}&page={page}", urlencode(sort)));
        if let Some(per) = self.per {
            q.push_str(&format!("&per={per}"));
        }
        format!("/?{q}")
    }
}

/// Every rig matching the filter, sorted, with the status the dashboard shows.
pub fn matching_rigs(
    state: &AppState,
    q: &OverviewQuery,
) -> Result<Vec<(RigSummary, RigStatus)>, WebError> {
    let status = match nonempty(&q.status).as_deref() {
        None => None,
        Some(s) => {
            Some(RigStatus::parse(s).ok_or_else(|| WebError::bad_request("unknown status"))?)
        }
    };
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let page = query_fleet(
            state,
            &RigQuery {
                q: nonempty(&q.q),
                group: nonempty(&q.group),
                tag: nonempty(&q.tag),
                status: None,
                sort: nonempty(&q.sort),
                dir: nonempty(&q.dir),
                limit: Some(1000),
                offset: Some(offset),
            },
        )?;
        let n = page.items.len();
        all.extend(page.items);
        offset += n;
        if n == 0 || offset >= page.total {
            break;
        }
    }
    Ok(all
        .into_iter()
        .map(|r| {
            let s = r.status;
            (r, s)
        })
        .filter(|(_, s)| status.is_none_or(|want| *s == want))
        .collect())
}

/// Totals of one algorithm.
pub struct AlgoTotal {
    pub(super) algorithm: String,
    pub(super) hashrate: String,
    rigs: usize,
    online: usize,
    warning: usize,
    offline: usize,
    power: String,
    efficiency: String,
    /// Estimated revenue per day, when coin data is set for the algorithm.
    pub(super) revenue: Option<String>,
}

struct RowView {
    id: String,
    href: String,
    name: String,
    status: &'static str,
    group: String,
    tags: Vec<String>,
    hashrate: String,
    temp: String,
    fan: String,
    power: String,
    pool: String,
    uptime: String,
    version: String,
    last_seen: String,
    note: Option<String>,
}

struct SortLink {
    label: &'static str,
    href: String,
    arrow: &'static str,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    csrf: String,
    can_write: bool,
    totals: Vec<AlgoTotal>,
    fleet_total: usize,
    fleet_online: usize,
    fleet_warning: usize,
    fleet_offline: usize,
    rows: Vec<RowView>,
    matching: usize,
    page: usize,
    pages: usize,
    prev_href: Option<String>,
    next_href: Option<String>,
    sort_links: Vec<SortLink>,
    q: String,
    group: String,
    tag: String,
    status: String,
    groups: Vec<String>,
    sent: Option<usize>,
}

const COLUMNS: &[(&str, &str)] = &[
    ("status", "Status"),
    ("name", "Name"),
    ("group", "Group / tags"),
    ("hashrate", "Hash rate"),
    ("temperature", "Max temp"),
    ("fan", "Fan"),
    ("power", "Power"),
    ("pool", "Pool"),
    ("uptime", "Uptime"),
    ("version", "Agent"),
    ("last_seen", "Last seen"),
];

fn efficiency(algorithm: &str, watts: f64, hps: f64) -> String {
    if watts <= 0.0 || hps <= 0.0 {
        return fmt::dash();
    }
    if algorithm == "sha256d" {
        format!("{} J/TH", fmt::num3(watts / (hps / 1e12)))
    } else {
        format!("{} W per MH/s", fmt::num3(watts / (hps / 1e6)))
    }
}

/// Totals per algorithm (rigs by status, hash rate and power of the rigs not offline, revenue
/// where `coins` has the algorithm) and fleet counts `[all, online, warning, offline]`.
pub(super) fn totals(
    state: &AppState,
    coins: &[(String, CoinData)],
) -> (Vec<AlgoTotal>, [usize; 4]) {
    #[derive(Default)]
    struct Acc {
        hps: f64,
        watts: f64,
        counts: [usize; 3],
    }
    let now = crate::now_ms();
    let mut by_algo: BTreeMap<String, Acc> = BTreeMap::new();
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
                    a.hps += d.hashrate_1m_hps;
                    a.watts += f64::from(d.power_watts.unwrap_or(0.0));
                }
                if seen.insert(d.algorithm.as_str()) {
                    a.counts[idx] += 1;
                }
            }
        }
    });
    let totals = by_algo
        .into_iter()
        .map(|(algorithm, a)| AlgoTotal {
            hashrate: fmt::hashrate(a.hps),
            rigs: a.counts.iter().sum(),
            online: a.counts[0],
            warning: a.counts[1],
            offline: a.counts[2],
            power: fmt::watts(Some(a.watts as f32)),
            efficiency: efficiency(&algorithm, a.watts, a.hps),
            revenue: coins
                .iter()
                .find(|(alg, _)| *alg == algorithm)
                .map(|(_, c)| fmt::revenue(c, c.revenue_per_day(a.hps))),
            algorithm,
        })
        .collect();
    (totals, fleet)
}

/// Path of a rig's page.
pub fn rig_href(uid: &str) -> String {
    format!("/rigs/{}", urlencode(uid))
}

/// Renders the overview page (also used by the benchmark).
pub async fn render_overview(
    state: &AppState,
    user: &WebUser,
    q: &OverviewQuery,
) -> Result<String, WebError> {
    let sort = nonempty(&q.sort).unwrap_or_else(|| "name".into());
    if !SORT_COLUMNS.contains(&sort.as_str()) {
        return Err(WebError::bad_request("unknown sort column"));
    }
    let dir = if q.dir.as_deref() == Some("desc") {
        "desc"
    } else {
        "asc"
    };
    let rigs = matching_rigs(state, q)?;
    let per = q.per.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    let pages = rigs.len().div_ceil(per).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let now = crate::now_ms();
    let rows = rigs
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|(r, s)| {
            let u = super::live::rig_update(r, *s, now);
            let note = if r.pending_approval {
                Some("waiting for approval".to_string())
            } else {
                r.flagged.clone()
            };
            RowView {
                href: rig_href(&r.id),
                id: r.id.clone(),
                name: r.name.clone(),
                status: status_name(*s),
                group: r.group.clone().unwrap_or_default(),
                tags: r.tags.clone(),
                hashrate: u.hashrate,
                temp: u.temp,
                fan: u.fan,
                power: u.power,
                pool: u.pool,
                uptime: u.uptime,
                version: r.agent_version.clone().unwrap_or_else(fmt::dash),
                last_seen: u.last_seen,
                note,
            }
        })
        .collect();
    let sort_links = COLUMNS
        .iter()
        .map(|(col, label)| {
            let current = *col == sort;
            let next_dir = if current && dir == "asc" {
                "desc"
            } else {
                "asc"
            };
            SortLink {
                label,
                href: q.href(col, next_dir, 1),
                arrow: match (current, dir) {
                    (false, _) => "",
                    (true, "asc") => " ▲",
                    (true, _) => " ▼",
                },
            }
        })
        .collect();
    let coins = crate::coins::load_all(&state.hub.store)
        .await
        .unwrap_or_default();
    let (totals, fleet) = totals(state, &coins);
    let groups = state.hub.store.list_groups().await.unwrap_or_default();
    let p = OverviewPage {
        nav: Some(Nav::new(user, "overview")),
        csrf: user.csrf.clone(),
        can_write: user.can_write(),
        totals,
        fleet_total: fleet[0],
        fleet_online: fleet[1],
        fleet_warning: fleet[2],
        fleet_offline: fleet[3],
        rows,
        matching: rigs.len(),
        page,
        pages,
        prev_href: (page > 1).then(|| q.href(&sort, dir, page - 1)),
        next_href: (page < pages).then(|| q.href(&sort, dir, page + 1)),
        sort_links,
        q: nonempty(&q.q).unwrap_or_default(),
        group: nonempty(&q.group).unwrap_or_default(),
        tag: nonempty(&q.tag).unwrap_or_default(),
        status: nonempty(&q.status).unwrap_or_default(),
        groups,
        sent: q.sent,
    };
    Ok(p.render()?)
}

/// `GET /`.
pub async fn overview(
    State(state): State<AppState>,
    user: WebUser,
    Query(q): Query<OverviewQuery>,
) -> Response {
    respond(
        render_overview(&state, &user, &q)
            .await
            .map(|html| axum::response::Html(html).into_response()),
    )
}

fn command_of(name: &str) -> Option<Command> {
    match name {
        "restart_mining" => Some(Command::RestartMining),
        "reboot" => Some(Command::Reboot),
        "identify" => Some(Command::Identify { seconds: 30 }),
        _ => None,
    }
}

/// `POST /bulk`: a command to the selected rigs, or to every rig matching the filter.
pub async fn bulk(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_write()?;
            let f = Fields::parse(&body);
            let command = command_of(f.get("action"))
                .ok_or_else(|| WebError::bad_request("choose an action"))?;
            if crate::api::auth::command_needs_reauth(&command) {
                super::account::confirm_password(&state, &shared, &user, f.get("confirm_password"))
                    .await?;
            }
            let ids: Vec<String> = if f.get("all") == "1" {
                let q = OverviewQuery {
                    q: Some(f.get("q").to_string()),
                    group: Some(f.get("group").to_string()),
                    tag: Some(f.get("tag").to_string()),
                    status: Some(f.get("status").to_string()),
                    ..Default::default()
                };
                matching_rigs(&state, &q)?
                    .into_iter()
                    .map(|(r, _)| r.id)
                    .collect()
            } else {
                f.all("ids").into_iter().map(str::to_owned).collect()
            };
            if ids.is_empty() {
                return Err(WebError::bad_request("select at least one rig"));
            }
            if ids.len() > 10_000 {
                return Err(WebError::bad_request("too many rigs in one action"));
            }
            let mut sent = 0;
            for uid in &ids {
                let Ok(row) = find_rig(&state, uid).await else {
                    continue;
                };
                let (_, _rx) = state
                    .hub
                    .send_command(
                        row.id,
                        &RigId(row.rig_uid.clone()),
                        command.clone(),
                        Some(&user.actor()),
                    )
                    .await
                    .map_err(|e| WebError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
                sent += 1;
            }
            audit(
                &state,
                &user,
                "rig.bulk_command",
                &format!("{sent} rigs"),
                f.get("action"),
            )
            .await;
            Ok(Redirect::to(&format!("/?sent={sent}")).into_response())
        }
        .await,
    )
}

pub(super) async fn audit(
    state: &AppState,
    user: &WebUser,
    action: &str,
    target: &str,
    detail: &str,
) {
    state
        .hub
        .store
        .audit(&user.actor(), action, target, detail)
        .await;
}

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

/// `GET /rigs/{rig}`.
pub async fn rig_page(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
    Query(q): Query<RigPageQuery>,
) -> Response {
    respond(
        async {
            let row = find_rig(&state, &uid).await?;
            let detail = rig_detail(&state, &uid, user.scope()).await?;
            let live = state.hub.live.get(row.id);
            let sample = live.as_ref().and_then(|l| l.sample.as_ref());
            let now = crate::now_ms();
            let s = &detail.summary;
            let status = s.status;
            let range = q.range.as_deref().unwrap_or("1h");
            let span = RANGES
                .iter()
                .find(|(r, _)| *r == range)
                .map(|(_, s)| *s)
                .ok_or_else(|| WebError::bad_request("range must be 1h, 24h, 7d or 30d"))?;
            let history = rig_history(
                &state,
                row.id,
                HistoryQuery {
                    from_ms: Some(now - span),
                    to_ms: Some(now),
                },
            )
            .await?;
            let pts = |f: &dyn Fn(&crate::api::rigs::HistoryPointView) -> Option<f64>| {
                history
                    .points
                    .iter()
                    .filter_map(|p| f(p).map(|v| (p.ts_ms, v)))
                    .collect::<Vec<_>>()
            };
            let from = now - span;
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
                    &format!("Shares per {}", history.resolution_label()),
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
            let devices: Vec<DeviceRowView> = {
                detail
                    .devices
                    .iter()
                    .map(|d| {
                        let ds = sample
                            .and_then(|s| s.devices.iter().find(|x| x.device_id.as_str() == d.id));
                        DeviceRowView {
                            id: d.id.clone(),
                            kind: d.kind.clone(),
                            model: d.model.clone(),
                            algorithm: ds.map_or_else(fmt::dash, |x| x.algorithm.clone()),
                            hashrate: ds
                                .map_or_else(fmt::dash, |x| fmt::hashrate(x.hashrate_1m_hps)),
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
                    .collect()
            };
            let events = state
                .hub
                .store
                .list_events(Some(row.id), 20, None)
                .await?
                .into_iter()
                .map(|e| EventView {
                    time: fmt::utc(e.time_ms),
                    severity: e.severity,
                    kind: e.kind,
                    message: e.message,
                })
                .collect();
            let commands = state
                .hub
                .store
                .list_commands(row.id, 10, 0)
                .await?
                .into_iter()
                .map(|c| CommandViewRow {
                    command: serde_json::from_str::<serde_json::Value>(&c.command_json)
                        .ok()
                        .and_then(|v| v["command"]["kind"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "?".into()),
                    id: c.command_uid,
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
            let desired = if crate::api::auth::may_see_wallets(user.scope()) {
                state.hub.store.desired_config(row.id).await?
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
                status: status_name(status),
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
        .await,
    )
}

trait ResolutionLabel {
    fn resolution_label(&self) -> &'static str;
}

impl ResolutionLabel for crate::api::rigs::HistoryView {
    fn resolution_label(&self) -> &'static str {
        match self.resolution.as_str() {
            "minute" => "minute",
            "hour" => "hour",
            _ => "sample",
        }
    }
}

/// How long the rig page waits for a command's result before showing it as pending.
const COMMAND_WAIT: Duration = Duration::from_secs(8);

/// `POST /rigs/{rig}/command`.
pub async fn rig_command(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    Path(uid): Path<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_write()?;
            let f = Fields::parse(&body);
            let command =
                command_of(f.get("cmd")).ok_or_else(|| WebError::bad_request("unknown command"))?;
            let row = find_rig(&state, &uid).await?;
            // A reboot takes the password again, as a wallet change does.
            if crate::api::auth::command_needs_reauth(&command) {
                super::account::confirm_password(&state, &shared, &user, f.get("confirm_password"))
                    .await?;
            }
            let (_, rx) = state
                .hub
                .send_command(
                    row.id,
                    &RigId(row.rig_uid.clone()),
                    command,
                    Some(&user.actor()),
                )
                .await
                .map_err(|e| WebError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            audit(&state, &user, "rig.command", &uid, f.get("cmd")).await;
            let _ = tokio::time::timeout(COMMAND_WAIT, rx).await;
            Ok(Redirect::to(&format!("{}#commands", rig_href(&row.rig_uid))).into_response())
        }
        .await,
    )
}

fn check_label(field: &str, s: &str, max: usize) -> Result<(), WebError> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(WebError::bad_request(format!(
            "{field} must be 1 to {max} characters without control characters"
        )));
    }
    Ok(())
}

/// `POST /rigs/{rig}/edit`: name, group, tags.
pub async fn rig_edit(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_write()?;
            let f = Fields::parse(&body);
            let row = find_rig(&state, &uid).await?;
            let name = f.get("name").trim();
            check_label("name", name, 128)?;
            let group = f.get("group").trim();
            if !group.is_empty() {
                check_label("group", group, 64)?;
            }
            let tags: Vec<String> = f
                .get("tags")
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            if tags.len() > 32 {
                return Err(WebError::bad_request("at most 32 tags"));
            }
            for t in &tags {
                check_label("tag", t, 64)?;
            }
            let store = &state.hub.store;
            store.rename_rig(row.id, name).await?;
            store
                .set_rig_group(row.id, (!group.is_empty()).then_some(group))
                .await?;
            store.set_rig_tags(row.id, &tags).await?;
            let fresh = find_rig(&state, &uid).await?;
            state.hub.live.update(row.id, |l| {
                l.name = fresh.name.clone();
                l.group = fresh.group.clone();
                l.tags = fresh.tags.clone();
            });
            audit(
                &state,
                &user,
                "rig.update",
                &uid,
                &format!("name={name:?} group={group:?} tags={tags:?}"),
            )
            .await;
            Ok(Redirect::to(&rig_href(&row.rig_uid)).into_response())
        }
        .await,
    )
}

/// `POST /rigs/{rig}/remove` (admins).
pub async fn rig_remove(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            let row = find_rig(&state, &uid).await?;
            state.hub.store.remove_rig(row.id).await?;
            state.hub.disconnect_rig(row.id, "rig removed");
            state.hub.live.remove(row.id);
            audit(&state, &user, "rig.remove", &uid, &row.name).await;
            Ok(Redirect::to("/").into_response())
        }
        .await,
    )
}

/// `POST /rigs/{rig}/approve` (admins): lets a rig enrolled with an approval token connect.
pub async fn rig_approve(
    State(state): State<AppState>,
    user: WebUser,
    Path(uid): Path<String>,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            let row = find_rig(&state, &uid).await?;
            state.hub.store.approve_rig(row.id).await?;
            state
                .hub
                .live
                .update(row.id, |l| l.pending_approval = false);
            audit(&state, &user, "rig.approve", &uid, "").await;
            Ok(Redirect::to(&rig_href(&row.rig_uid)).into_response())
        }
        .await,
    )
}

struct TokenRowView {
    id: String,
    uses: String,
    expires: String,
    group: String,
    note: String,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "add_rigs.html")]
struct AddRigsPage {
    nav: Option<Nav>,
    csrf: String,
    server_url: String,
    server_key_fingerprint: String,
    tls_fingerprint: Option<String>,
    command: Option<String>,
    token: Option<String>,
    error: Option<String>,
    tokens: Vec<TokenRowView>,
}

async fn add_rigs_view(
    state: &AppState,
    user: &WebUser,
    command: Option<String>,
    token: Option<String>,
    error: Option<String>,
) -> Result<Response, WebError> {
    let now = crate::now_ms();
    let tokens = state
        .hub
        .store
        .list_enroll_tokens()
        .await?
        .into_iter()
        .map(|t| TokenRowView {
            uses: match t.max_uses {
                Some(m) => format!("{} of {m}", t.uses),
                None => format!("{} (no limit)", t.uses),
            },
            expires: t.expires_at_ms.map_or_else(|| "never".into(), fmt::utc),
            group: t.group.unwrap_or_default(),
            note: t.note,
            state: if t.revoked {
                "revoked"
            } else if t.expires_at_ms.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            },
            id: t.token_id,
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let page = AddRigsPage {
        nav: Some(Nav::new(user, "add")),
        csrf: user.csrf.clone(),
        server_url: state.public_url.clone(),
        server_key_fingerprint: state.hub.key.fingerprint(),
        tls_fingerprint: state.tls_fingerprint.clone(),
        command,
        token,
        error,
        tokens,
    };
    let mut res = render(&page)?;
    *res.status_mut() = status;
    Ok(res)
}

/// `GET /add-rigs` (admins).
pub async fn add_rigs_page(State(state): State<AppState>, user: WebUser) -> Response {
    respond(
        async {
            user.require_admin()?;
            add_rigs_view(&state, &user, None, None, None).await
        }
        .await,
    )
}

/// `POST /add-rigs`: a new enrollment token and the command to paste on rigs.
pub async fn add_rigs_create(
    State(state): State<AppState>,
    user: WebUser,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            let f = Fields::parse(&body);
            let parse_num = |name: &str| -> Result<Option<u64>, WebError> {
                let v = f.get(name).trim();
                if v.is_empty() {
                    return Ok(None);
                }
                v.parse::<u64>()
                    .map(Some)
                    .map_err(|_| WebError::bad_request(format!("{name} must be a whole number")))
            };
            let group = f.get("group").trim();
            let req = crate::api::tokens::TokenRequest {
                max_uses: parse_num("max_uses")?.map(|n| n.min(1_000_000) as i64),
                expires_in_hours: parse_num("expires_in_hours")?,
                group: (!group.is_empty()).then(|| group.to_string()),
                requires_approval: f.get("requires_approval") == "1",
                note: f.get("note").trim().to_string(),
            };
            let created = crate::api::tokens::create_token(
                &state.hub.store,
                &state.hub.key,
                &req,
                crate::now_ms(),
            )
            .await;
            let (row, text) = match created {
                Ok(x) => x,
                Err(crate::api::tokens::TokenError::Invalid(m)) => {
                    return add_rigs_view(&state, &user, None, None, Some(m)).await
                }
                Err(crate::api::tokens::TokenError::Store(e)) => return Err(e.into()),
            };
            audit(&state, &user, "token.create", &row.token_id, &req.note).await;
            let command = crate::api::tokens::enroll_command(
                &state.public_url,
                &text,
                state.tls_fingerprint.as_deref(),
            );
            add_rigs_view(&state, &user, Some(command), Some(text), None).await
        }
        .await,
    )
}
