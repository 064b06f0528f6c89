//! Profiles (what a set of rigs mines). The default profile is what a freshly enrolled rig gets;
//! the fleet-control issue builds groups, overrides and bulk pushes on top.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rigfleet_proto::config::DesiredConfig;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use super::rigs::audit;
use crate::app::AppState;
use crate::db::{ProfileRow, Scope};

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

impl From<ProfileRow> for ProfileView {
    fn from(p: ProfileRow) -> Self {
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
    // Profiles hold wallets and pool passwords.
    if !super::auth::may_see_wallets(caller.level) {
        return Err(ApiFailure::forbidden(
            "profiles hold wallets and pool passwords: this needs the write scope",
        ));
    }
    let rows = state.hub.store.list_profiles().await?;
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
    caller.require(Scope::Write)?;
    caller.require_token("changing a profile's pools")?;
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiFailure::bad_request("name must be 1 to 64 characters"));
    }
    let config = super::orders::config_from_json(req.config, "config.")?;
    let before = state.hub.store.profile_by_name(&name).await?;
    let row = state
        .hub
        .store
        .upsert_profile(&name, &config, req.is_default)
        .await?;
    // The same before/after as a rig's config change (pools' URLs and wallets, never their
    // passwords).
    audit(
        &state,
        &caller,
        "profile.put",
        &name,
        &format!(
            "default={}: {}",
            req.is_default,
            super::audit::config_diff(before.as_ref().map(|p| &p.config), &row.config)
        ),
    )
    .await;
    Ok(Json(row.into()))
}

/// Delete a profile.
#[utoipa::path(delete, path = "/api/v1/profiles/{name}", params(("name" = String, Path, description = "profile name")), responses((status = 204), (status = 404)), tag = "profiles")]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Scope::Write)?;
    if !state.hub.store.delete_profile(&name).await? {
        return Err(ApiFailure::not_found("profile"));
    }
    audit(&state, &caller, "profile.delete", &name, "").await;
    Ok(StatusCode::NO_CONTENT)
}
