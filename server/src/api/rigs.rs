//! `/api/v1/rigs…`: the fleet list, rig detail, history, rename/group/tags, approval and
//! removal. Thin handlers over [`crate::fleet::rigs`], which holds the operations and types.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson, ApiQuery};
use crate::app::AppState;
use crate::fleet::rigs::{self as fleet_rigs, HistoryQuery, HistoryView, RigDetail, RigList};
use crate::fleet::rigs::{RigPatch, RigQuery};

/// List rigs.
#[utoipa::path(get, path = "/api/v1/rigs", params(RigQuery), responses((status = 200, body = RigList)), tag = "rigs")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<RigQuery>,
) -> Result<Json<RigList>, ApiFailure> {
    Ok(Json(fleet_rigs::list(&state, &caller.who, &q)?))
}

/// One rig.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}", params(("rig" = String, Path, description = "rig id")), responses((status = 200, body = RigDetail), (status = 404)), tag = "rigs")]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<Json<RigDetail>, ApiFailure> {
    Ok(Json(fleet_rigs::detail(&state, &caller.who, &uid).await?))
}

/// Rename, regroup, retag.
#[utoipa::path(patch, path = "/api/v1/rigs/{rig}", params(("rig" = String, Path, description = "rig id")), request_body = RigPatch, responses((status = 200, body = RigDetail)), tag = "rigs")]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiJson(p): ApiJson<RigPatch>,
) -> Result<Json<RigDetail>, ApiFailure> {
    Ok(Json(
        fleet_rigs::patch(&state, &caller.who, &uid, &p).await?,
    ))
}

/// Approve a rig enrolled with an approval-required token.
#[utoipa::path(post, path = "/api/v1/rigs/{rig}/approve", params(("rig" = String, Path, description = "rig id")), responses((status = 204)), tag = "rigs")]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    fleet_rigs::approve(&state, &caller.who, &uid).await?;
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
    fleet_rigs::remove(&state, &caller.who, &uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// History of a rig over a range, from the table that fits the range.
#[utoipa::path(get, path = "/api/v1/rigs/{rig}/history", params(("rig" = String, Path, description = "rig id"), HistoryQuery), responses((status = 200, body = HistoryView)), tag = "rigs")]
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(uid): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryView>, ApiFailure> {
    Ok(Json(
        fleet_rigs::history(&state, &caller.who, &uid, &q).await?,
    ))
}
