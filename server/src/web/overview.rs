//! The overview: fleet totals, the filtered/sorted/paginated rig table and bulk actions on a
//! selection or on every rig matching the filter.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{Html, Redirect};
use axum::Extension;
use rigfleet_proto::command::Command;
use serde::Deserialize;

use super::common::{rig_href, totals, urlencode, AlgoTotal, WebForm};
use super::live::{status_name, WebShared};
use super::session::WebUser;
use super::{fmt, Nav, WebError};
use crate::app::AppState;
use crate::fleet::rigs::{self as fleet_rigs, RigQuery, RigSummary, SORT_COLUMNS};
use crate::fleet::{coins, commands};

/// Rows per overview page unless the query says otherwise.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Most rows per overview page.
pub const MAX_PAGE_SIZE: usize = 500;

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

    /// The fleet query this filter and sort stand for (all rows: the page cuts its own).
    fn fleet_query(&self) -> RigQuery {
        RigQuery {
            q: nonempty(&self.q),
            group: nonempty(&self.group),
            tag: nonempty(&self.tag),
            status: nonempty(&self.status),
            sort: nonempty(&self.sort),
            dir: nonempty(&self.dir),
            limit: None,
            offset: None,
        }
    }
}

/// Every rig matching the filter, sorted.
pub fn matching_rigs(
    state: &AppState,
    user: &WebUser,
    q: &OverviewQuery,
) -> Result<Vec<RigSummary>, WebError> {
    Ok(fleet_rigs::matching(
        state,
        &user.as_actor(),
        &q.fleet_query(),
    )?)
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

fn row_view(r: &RigSummary, now: i64) -> RowView {
    let u = super::live::rig_update(r, r.status, now);
    RowView {
        href: rig_href(&r.id),
        id: r.id.clone(),
        name: r.name.clone(),
        status: status_name(r.status),
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
        note: if r.pending_approval {
            Some("waiting for approval".to_string())
        } else {
            r.flagged.clone()
        },
    }
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
    let rigs = matching_rigs(state, user, q)?;
    let per = q.per.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    let pages = rigs.len().div_ceil(per).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let now = crate::now_ms();
    let rows = rigs
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|r| row_view(r, now))
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
    let actor = user.as_actor();
    // Coin data and the group list only help: the page shows without them.
    let coins = coins::list(state, &actor).await.unwrap_or_default();
    let (totals, fleet) = totals(state, &coins);
    let groups = fleet_rigs::groups(state, &actor).await.unwrap_or_default();
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
) -> Result<Html<String>, WebError> {
    render_overview(&state, &user, &q).await.map(Html)
}

/// The command a form's button names.
pub(super) fn command_of(name: &str) -> Option<Command> {
    match name {
        "restart_mining" => Some(Command::RestartMining),
        "reboot" => Some(Command::Reboot),
        "identify" => Some(Command::Identify { seconds: 30 }),
        _ => None,
    }
}

/// The first value of `name` in a posted form; empty when absent.
fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// `POST /bulk`: a command to the selected rigs (`ids`, repeated), or to every rig matching
/// the filter (`all=1`).
pub async fn bulk(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    WebForm(f): WebForm<Vec<(String, String)>>,
) -> Result<Redirect, WebError> {
    let command =
        command_of(field(&f, "action")).ok_or_else(|| WebError::bad_request("choose an action"))?;
    let mut actor = user.as_actor();
    // Refused before the password is asked for: a viewer learns nothing from typing one.
    actor.require(commands::permission(&command))?;
    if commands::needs_password(&command) {
        super::account::confirm_password(&state, &shared, &user, field(&f, "confirm_password"))
            .await?;
        actor = actor.reauthenticated();
    }
    let ids: Vec<String> = if field(&f, "all") == "1" {
        let q = OverviewQuery {
            q: Some(field(&f, "q").to_string()),
            group: Some(field(&f, "group").to_string()),
            tag: Some(field(&f, "tag").to_string()),
            status: Some(field(&f, "status").to_string()),
            ..Default::default()
        };
        matching_rigs(&state, &user, &q)?
            .into_iter()
            .map(|r| r.id)
            .collect()
    } else {
        f.iter()
            .filter(|(k, _)| k == "ids")
            .map(|(_, v)| v.clone())
            .collect()
    };
    let results = commands::send_many(&state, &actor, &ids, command).await?;
    let sent = results.iter().filter(|r| r.result.is_ok()).count();
    Ok(Redirect::to(&format!("/?sent={sent}")))
}
