//! Profiles (what a set of rigs mines) through the REST API: thin handlers over
//! [`crate::fleet::profiles`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rigfleet_proto::config::DesiredConfig;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use crate::app::AppState;
use crate::fleet::profiles::{self, Profile};

/// A profile.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProfileView {
    /// Name.
    pub name: String,
    /// Whether new rigs get it.
    pub is_default: bool,
    /// Algorithm, pools, device settings (version is not used here).
    #[schema(value_type = Object)]
    pub config: DesiredConfig,
}

impl From<Profile> for ProfileView {
    fn from(p: Profile) -> Self {
        ProfileView {
            name: p.name,
            is_default: p.is_default,
            config: p.config,
        }
    }
}

/// Body of a profile write.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileRequest {
    /// Make it the default for new rigs (the previous default stops being one).
    #[serde(default)]
    pub is_default: bool,
    /// Algorithm, pools, device settings.
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

/// Profiles.
#[utoipa::path(get, path = "/api/v1/profiles", responses((status = 200, body = Vec<ProfileView>)), tag = "profiles")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ProfileView>>, ApiFailure> {
    let rows = profiles::list(&state, &caller.who).await?;
    Ok(Json(rows.into_iter().map(ProfileView::from).collect()))
}

/// Create or replace a profile.
#[utoipa::path(put, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "profile name")), request_body = ProfileRequest, responses((status = 200, body = ProfileView), (status = 400)), tag = "profiles")]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ProfileRequest>,
) -> Result<Json<ProfileView>, ApiFailure> {
    let config = super::orders::config_from_json(req.config, "config.")?;
    let row = profiles::put(&state, &caller.who, &name, &config, req.is_default).await?;
    Ok(Json(row.into()))
}

/// Delete a profile.
#[utoipa::path(delete, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "profile name")), responses((status = 204), (status = 404)), tag = "profiles")]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    profiles::remove(&state, &caller.who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
