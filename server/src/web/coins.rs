//! The coin-data page: what each algorithm's coin is worth, so the overview can estimate revenue
//! per day. Everyone sees it; operators and admins change it.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::pages::{audit, totals};
use super::session::WebUser;
use super::{render, respond, Fields, Nav, WebError};
use crate::app::AppState;
use crate::coins::{self, CoinData};

struct CoinRow {
    algorithm: String,
    coin: String,
    network_difficulty: String,
    block_reward: String,
    price: String,
    currency: String,
    pool_fee_percent: String,
    fleet_hashrate: String,
    revenue: String,
}

#[derive(Template)]
#[template(path = "coins.html")]
struct CoinsPage {
    nav: Option<Nav>,
    csrf: String,
    can_write: bool,
    rows: Vec<CoinRow>,
    /// Algorithms the fleet mines that have no coin data yet.
    missing: Vec<String>,
    error: Option<String>,
    /// The form's values after a refused save.
    form: Vec<(&'static str, String)>,
}

impl CoinsPage {
    fn value(&self, name: &str) -> &str {
        self.form
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

const FIELDS: [&str; 7] = [
    "algorithm",
    "coin",
    "network_difficulty",
    "block_reward",
    "price",
    "currency",
    "pool_fee_percent",
];

async fn view(
    state: &AppState,
    user: &WebUser,
    error: Option<String>,
    form: Vec<(&'static str, String)>,
) -> Result<Response, WebError> {
    let data = coins::load_all(&state.hub.store).await?;
    let (totals, _) = totals(state, &data);
    let rows = data
        .iter()
        .map(|(algorithm, c)| {
            let total = totals.iter().find(|t| t.algorithm == *algorithm);
            CoinRow {
                algorithm: algorithm.clone(),
                coin: c.coin.clone(),
                network_difficulty: format!("{}", c.network_difficulty),
                block_reward: format!("{}", c.block_reward),
                price: format!("{}", c.price),
                currency: c.currency.clone(),
                pool_fee_percent: format!("{}", c.pool_fee_percent),
                fleet_hashrate: total.map_or_else(super::fmt::dash, |t| t.hashrate.clone()),
                revenue: total
                    .and_then(|t| t.revenue.clone())
                    .unwrap_or_else(super::fmt::dash),
            }
        })
        .collect();
    let missing = totals
        .iter()
        .filter(|t| !t.algorithm.is_empty() && !data.iter().any(|(a, _)| *a == t.algorithm))
        .map(|t| t.algorithm.clone())
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let page = CoinsPage {
        nav: Some(Nav::new(user, "coins")),
        csrf: user.csrf.clone(),
        can_write: user.can_write(),
        rows,
        missing,
        error,
        form,
    };
    let mut res = render(&page)?;
    *res.status_mut() = status;
    Ok(res)
}

/// `GET /coins`.
pub async fn coins_page(State(state): State<AppState>, user: WebUser) -> Response {
    respond(view(&state, &user, None, Vec::new()).await)
}

fn parse(f: &Fields) -> Result<(String, CoinData), String> {
    let number = |name: &str| -> Result<f64, String> {
        let v = f.get(name).trim();
        if v.is_empty() && name == "pool_fee_percent" {
            return Ok(0.0);
        }
        v.parse::<f64>()
            .map_err(|_| format!("{} must be a number", name.replace('_', " ")))
    };
    let data = CoinData {
        coin: f.get("coin").trim().to_ascii_uppercase(),
        network_difficulty: number("network_difficulty")?,
        block_reward: number("block_reward")?,
        price: number("price")?,
        currency: f.get("currency").trim().to_ascii_uppercase(),
        pool_fee_percent: number("pool_fee_percent")?,
    };
    Ok((f.get("algorithm").trim().to_string(), data))
}

/// `POST /coins`: sets (replaces) one algorithm's coin data.
pub async fn coins_save(State(state): State<AppState>, user: WebUser, body: Bytes) -> Response {
    respond(
        async {
            user.require_write()?;
            let f = Fields::parse(&body);
            let saved = match parse(&f) {
                Ok((algorithm, data)) => coins::save(&state.hub.store, &algorithm, &data)
                    .await
                    .map(|()| (algorithm, data)),
                Err(e) => Err(e),
            };
            match saved {
                Ok((algorithm, data)) => {
                    let detail = format!(
                        "{} difficulty {} reward {} price {} {}",
                        data.coin,
                        data.network_difficulty,
                        data.block_reward,
                        data.price,
                        data.currency
                    );
                    audit(&state, &user, "coin.put", &algorithm, &detail).await;
                    Ok(Redirect::to("/coins").into_response())
                }
                Err(message) => {
                    let form = FIELDS
                        .iter()
                        .map(|k| (*k, f.get(k).chars().take(64).collect()))
                        .collect();
                    view(&state, &user, Some(message), form).await
                }
            }
        }
        .await,
    )
}

/// `POST /coins/{algorithm}/delete`.
pub async fn coins_delete(
    State(state): State<AppState>,
    user: WebUser,
    Path(algorithm): Path<String>,
) -> Response {
    respond(
        async {
            user.require_write()?;
            if !coins::remove(&state.hub.store, &algorithm).await? {
                return Err(WebError::new(
                    StatusCode::NOT_FOUND,
                    "no coin data for that algorithm",
                ));
            }
            audit(&state, &user, "coin.delete", &algorithm, "").await;
            Ok(Redirect::to("/coins").into_response())
        }
        .await,
    )
}
