//! The audit-log page (admins): every change people and API tokens made, newest first.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::WebUser;
use super::{fmt, render, respond, Nav};
use crate::app::AppState;
use crate::fleet::audit;

/// Rows per page.
const PAGE: i64 = audit::DEFAULT_PAGE;

/// `?before=<id>`: the page after an entry.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditPageQuery {
    /// Only entries older than this id.
    pub before: Option<i64>,
}

struct AuditRowView {
    time: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    rows: Vec<AuditRowView>,
    older_href: Option<String>,
    first_page: bool,
}

/// `GET /audit`.
pub async fn audit_page(
    State(state): State<AppState>,
    user: WebUser,
    Query(q): Query<AuditPageQuery>,
) -> Response {
    respond(
        async {
            let rows = audit::list(&state, &user.as_actor(), Some(PAGE), q.before).await?;
            let older_href = (rows.len() as i64 == PAGE)
                .then(|| rows.last().map(|r| format!("/audit?before={}", r.id)))
                .flatten();
            let page = AuditPage {
                nav: Some(Nav::new(&user, "audit")),
                rows: rows
                    .into_iter()
                    .map(|r| AuditRowView {
                        time: fmt::utc(r.time_ms),
                        actor: r.actor,
                        action: r.action,
                        target: r.target,
                        detail: r.detail,
                    })
                    .collect(),
                older_href,
                first_page: q.before.is_none(),
            };
            render(&page)
        }
        .await,
    )
}
