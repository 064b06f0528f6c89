//! Coin data per algorithm (network difficulty, block reward, price, pool fee), from which the
//! dashboard estimates revenue per day.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use super::rigs::audit;
use crate::app::AppState;
use crate::coins::{self, CoinData};
use crate::db::Scope;

/// Coin data of one algorithm.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CoinView {
    /// Algorithm id (`sha256d`, `scrypt`…).
    pub algorithm: String,
    /// What the operator entered.
    #[serde(flatten)]
    pub data: CoinData,
}

/// Coin data of every algorithm that has some.
#[utoipa::path(get, path = "/api/v1/coins", responses((status = 200, body = Vec<CoinView>)), tag = "coins")]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<CoinView>>, ApiFailure> {
    caller.require(Scope::Read)?;
    let all = coins::load_all(&state.hub.store).await?;
    Ok(Json(
        all.into_iter()
            .map(|(algorithm, data)| CoinView { algorithm, data })
            .collect(),
    ))
}

/// Set the coin data of an algorithm.
#[utoipa::path(put, path = "/api/v1/coins/{algorithm}", params(("algorithm" = String, Path, description = "algorithm id")), request_body = CoinData, responses((status = 200, body = CoinView), (status = 400)), tag = "coins")]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(algorithm): Path<String>,
    ApiJson(data): ApiJson<CoinData>,
) -> Result<Json<CoinView>, ApiFailure> {
    caller.require(Scope::Write)?;
    coins::save(&state.hub.store, &algorithm, &data)
        .await
        .map_err(ApiFailure::bad_request)?;
    audit(
        &state,
        &caller,
        "coin.put",
        &algorithm,
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
    Ok(Json(CoinView { algorithm, data }))
}

/// Remove the coin data of an algorithm.
#[utoipa::path(delete, path = "/api/v1/coins/{algorithm}", params(("algorithm" = String, Path, description = "algorithm id")), responses((status = 204), (status = 404)), tag = "coins")]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(algorithm): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    caller.require(Scope::Write)?;
    if !coins::remove(&state.hub.store, &algorithm).await? {
        return Err(ApiFailure::not_found("coin data"));
    }
    audit(&state, &caller, "coin.delete", &algorithm, "").await;
    Ok(StatusCode::NO_CONTENT)
}
