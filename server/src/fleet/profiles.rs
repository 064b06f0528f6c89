//! Profiles (what a set of rigs mines). The default profile is what a freshly enrolled rig gets.
//! A profile holds pools and wallets, so reading one takes [`Permission::SeeWallets`] and
//! writing one [`Permission::ChangePools`] with the password again (or an API token).

use rigfleet_proto::config::DesiredConfig;

use super::actor::{Actor, Permission};
use super::error::FleetError;
use crate::app::AppState;
use crate::db::ProfileRow;

/// A profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Name.
    pub name: String,
    /// Whether new rigs get it.
    pub is_default: bool,
    /// Algorithm, pools, device settings (its version is not used).
    pub config: DesiredConfig,
}

impl From<ProfileRow> for Profile {
    fn from(p: ProfileRow) -> Self {
        Profile {
            name: p.name,
            is_default: p.is_default,
            config: p.config,
        }
    }
}

fn require_wallets(actor: &Actor) -> Result<(), FleetError> {
    if actor.can(Permission::SeeWallets) {
        Ok(())
    } else {
        Err(FleetError::Forbidden(
            "profiles hold wallets and pool passwords: this needs the write scope".into(),
        ))
    }
}

/// Every profile, by name.
pub async fn list(state: &AppState, actor: &Actor) -> Result<Vec<Profile>, FleetError> {
    require_wallets(actor)?;
    let rows = state.hub.store.list_profiles().await?;
    Ok(rows.into_iter().map(Profile::from).collect())
}

/// Creates or replaces a profile (`is_default`: new rigs get it; the previous default stops
/// being one). The config's problems come under `config.`, the profile's field.
pub async fn put(
    state: &AppState,
    actor: &Actor,
    name: &str,
    config: &DesiredConfig,
    is_default: bool,
) -> Result<Profile, FleetError> {
    actor.require(Permission::ChangePools)?;
    actor.require_fresh("changing a profile's pools")?;
    if name.trim().is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(FleetError::BadRequest(
            "name must be 1 to 64 characters".into(),
        ));
    }
    super::configs::check(config, "config.")?;
    let before = state.hub.store.profile_by_name(name).await?;
    let row = state
        .hub
        .store
        .upsert_profile(name, config, is_default)
        .await?;
    // The same before/after as a rig's config change (pools' URLs and wallets, never their
    // passwords).
    super::audit::record(
        state,
        actor,
        "profile.put",
        name,
        &format!(
            "default={is_default}: {}",
            super::audit::config_diff(before.as_ref().map(|p| &p.config), &row.config)
        ),
    )
    .await;
    Ok(row.into())
}

/// Deletes a profile ([`Permission::ManageRigs`]).
pub async fn remove(state: &AppState, actor: &Actor, name: &str) -> Result<(), FleetError> {
    actor.require(Permission::ManageRigs)?;
    if !state.hub.store.delete_profile(name).await? {
        return Err(FleetError::not_found("profile"));
    }
    super::audit::record(state, actor, "profile.delete", name, "").await;
    Ok(())
}
