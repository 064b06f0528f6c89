//! Coin data per algorithm (network difficulty, block reward, price, pool fee) through the REST
//! API: thin handlers over [`crate::fleet::coins`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiFailure, ApiJson};
use crate::app::AppState;
use crate::coins::CoinData;
use crate::fleet::coins;

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
    let all = coins::list(&state, &caller.who).await?;
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
    coins::put(&state, &caller.who, &algorithm, &data).await?;
    Ok(Json(CoinView { algorithm, data }))
}

/// Remove the coin data of an algorithm.
#[utoipa::path(delete, path = "/api/v1/coins/{algorithm}", params(("algorithm" = String, Path, description = "algorithm id")), responses((status = 204), (status = 404)), tag = "coins")]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(algorithm): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    coins::remove(&state, &caller.who, &algorithm).await?;
    Ok(StatusCode::NO_CONTENT)
}
