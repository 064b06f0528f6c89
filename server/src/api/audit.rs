//! The audit log through the REST API: who changed what (configs, commands, tokens, users, coin
//! data), newest first. Admins only: it names people and what they did.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ApiFailure, ApiQuery};
use crate::app::AppState;
use crate::fleet::audit::{self, AuditEntry};

/// Audit log page.
#[derive(Clone, Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Rows (default 100, at most 1000).
    pub limit: Option<i64>,
    /// Only entries with a smaller id (the next page).
    pub before: Option<i64>,
}

/// One change.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// Id (pages go by it).
    pub id: i64,
    /// When (Unix ms).
    pub time_ms: i64,
    /// Who: `user:<name>` or `token:<name>`.
    pub actor: String,
    /// What (`config.put`, `command.send`, `coin.put`…).
    pub action: String,
    /// On what (a rig id, a user, an algorithm…).
    pub target: String,
    /// Details.
    pub detail: String,
}

impl From<AuditEntry> for AuditView {
    fn from(r: AuditEntry) -> Self {
        AuditView {
            id: r.id,
            time_ms: r.time_ms,
            actor: r.actor,
            action: r.action,
            target: r.target,
            detail: r.detail,
        }
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<AuditView>), (status = 403)), tag = "audit")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditView>>, ApiFailure> {
    let rows = audit::list(&state, &caller.who, q.limit, q.before).await?;
    Ok(Json(rows.into_iter().map(AuditView::from).collect()))
}
