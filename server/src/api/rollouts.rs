//! `/api/v1/rollouts`: thin handlers over [`crate::fleet::rollouts`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use crate::app::AppState;
use crate::fleet::rollouts::{self, RolloutRequest, RolloutView};

/// Starts a rollout: a target and one action (profile, replace_pool, switch_algorithm or
/// config), optionally staged.
#[utoipa::path(post, path = "/api/v1/rollouts", request_body = RolloutRequest, responses((status = 201, body = RolloutView)), tag = "rollouts")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<RolloutRequest>,
) -> Result<(StatusCode, Json<RolloutView>), ApiFailure> {
    let view = rollouts::create(&state, &caller.who, &req).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Rollouts, newest first, with counts per state.
#[utoipa::path(get, path = "/api/v1/rollouts", responses((status = 200, body = Vec<RolloutView>)), tag = "rollouts")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RolloutView>>, ApiFailure> {
    Ok(Json(rollouts::list(&state, &caller.who).await?))
}

/// One rollout with its rigs' states.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", params(("id" = i64, Path, description = "rollout id")), responses((status = 200, body = RolloutView)), tag = "rollouts")]
pub async fn detail(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>, ApiFailure> {
    Ok(Json(rollouts::get(&state, &caller.who, id).await?))
}

/// Halts a running rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/halt", params(("id" = i64, Path, description = "rollout id")), responses((status = 200, body = RolloutView)), tag = "rollouts")]
pub async fn halt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>, ApiFailure> {
    Ok(Json(rollouts::halt(&state, &caller.who, id).await?))
}

/// Resumes a halted rollout.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/resume", params(("id" = i64, Path, description = "rollout id")), responses((status = 200, body = RolloutView)), tag = "rollouts")]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>, ApiFailure> {
    Ok(Json(rollouts::resume(&state, &caller.who, id).await?))
}

/// Rolls a rollout back: layers restored, every rig it reached back on its previous config.
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/rollback", params(("id" = i64, Path, description = "rollout id")), responses((status = 200, body = RolloutView)), tag = "rollouts")]
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RolloutView>, ApiFailure> {
    Ok(Json(rollouts::rollback(&state, &caller.who, id).await?))
}
