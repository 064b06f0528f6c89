//! `/api/v1/enrollment-tokens…`: thin handlers over [`crate::fleet::enrollment`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use crate::app::AppState;
use crate::fleet::enrollment;

// Kept at their old paths for the CLI and the demo, which import them from here.
pub use crate::fleet::enrollment::{
    create_token, enroll_command, NewTokenView, TokenError, TokenRequest, TokenView,
};

/// Enrollment tokens.
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", responses((status = 200, body = Vec<TokenView>)), tag = "enrollment")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenView>>, ApiFailure> {
    Ok(Json(enrollment::list(&state, &caller.who).await?))
}

/// Make an enrollment token.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", request_body = TokenRequest, responses((status = 200, body = NewTokenView)), tag = "enrollment")]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<NewTokenView>, ApiFailure> {
    Ok(Json(enrollment::create(&state, &caller.who, &req).await?))
}

/// Revoke an enrollment token (rigs already enrolled keep working).
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", params(("id" = String, Path, description = "token id")), responses((status = 204), (status = 404)), tag = "enrollment")]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    enrollment::revoke(&state, &caller.who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
