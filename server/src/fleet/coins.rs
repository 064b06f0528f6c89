//! Coin data per algorithm (network difficulty, block reward, price, pool fee), from which the
//! fleet's revenue per day is estimated. Everyone may read it; changing it is part of
//! [`Permission::ManageRules`] (profit switching reads it). The model lives in [`crate::coins`].

use super::actor::{Actor, Permission};
use super::error::FleetError;
use crate::app::AppState;
use crate::coins::{self, CoinData};

/// Coin data of every algorithm that has some, by algorithm.
pub async fn list(state: &AppState, actor: &Actor) -> Result<Vec<(String, CoinData)>, FleetError> {
    actor.require(Permission::View)?;
    Ok(coins::load_all(&state.hub.store).await?)
}

/// Sets (replaces) one algorithm's coin data (audited as `coin.put` with the new figures).
pub async fn put(
    state: &AppState,
    actor: &Actor,
    algorithm: &str,
    data: &CoinData,
) -> Result<(), FleetError> {
    actor.require(Permission::ManageRules)?;
    coins::check(algorithm, data).map_err(FleetError::BadRequest)?;
    coins::write(&state.hub.store, algorithm, data).await?;
    super::audit::record(
        state,
        actor,
        "coin.put",
        algorithm,
        &format!(
            "{} difficulty {} reward {} price {} {} fee {}%",
            data.coin,
            data.network_difficulty,
            data.block_reward,
            data.price,
            data.currency,
            data.pool_fee_percent
        ),
    )
    .await;
    Ok(())
}

/// Removes one algorithm's coin data (audited as `coin.delete`).
pub async fn remove(state: &AppState, actor: &Actor, algorithm: &str) -> Result<(), FleetError> {
    actor.require(Permission::ManageRules)?;
    if !coins::remove(&state.hub.store, algorithm).await? {
        return Err(FleetError::not_found("coin data"));
    }
    super::audit::record(state, actor, "coin.delete", algorithm, "").await;
    Ok(())
}
