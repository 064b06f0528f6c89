//! The coin-data page: what each algorithm's coin is worth, so the overview can estimate revenue
//! per day. Everyone sees it; operators and admins change it.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::common::{totals, WebForm};
use super::session::WebUser;
use super::{render, respond, Nav, WebError};
use crate::app::AppState;
use crate::coins::CoinData;
use crate::fleet::{coins, FleetError};

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
    let data = coins::list(state, &user.as_actor()).await?;
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

/// The coin form as posted (every field text: the numbers are read below, so that a typo
/// comes back on the form with its field named).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CoinForm {
    algorithm: String,
    coin: String,
    network_difficulty: String,
    block_reward: String,
    price: String,
    currency: String,
    pool_fee_percent: String,
}

impl CoinForm {
    fn get(&self, name: &str) -> &str {
        match name {
            "algorithm" => &self.algorithm,
            "coin" => &self.coin,
            "network_difficulty" => &self.network_difficulty,
            "block_reward" => &self.block_reward,
            "price" => &self.price,
            "currency" => &self.currency,
            "pool_fee_percent" => &self.pool_fee_percent,
            _ => "",
        }
    }

    fn parse(&self) -> Result<(String, CoinData), String> {
        let number = |name: &str| -> Result<f64, String> {
            let v = self.get(name).trim();
            if v.is_empty() && name == "pool_fee_percent" {
                return Ok(0.0);
            }
            v.parse::<f64>()
                .map_err(|_| format!("{} must be a number", name.replace('_', " ")))
        };
        let data = CoinData {
            coin: self.coin.trim().to_ascii_uppercase(),
            network_difficulty: number("network_difficulty")?,
            block_reward: number("block_reward")?,
            price: number("price")?,
            currency: self.currency.trim().to_ascii_uppercase(),
            pool_fee_percent: number("pool_fee_percent")?,
        };
        Ok((self.algorithm.trim().to_string(), data))
    }
}

/// `POST /coins`: sets (replaces) one algorithm's coin data.
pub async fn coins_save(
    State(state): State<AppState>,
    user: WebUser,
    WebForm(f): WebForm<CoinForm>,
) -> Response {
    respond(
        async {
            let refused = match f.parse() {
                Ok((algorithm, data)) => {
                    match coins::put(&state, &user.as_actor(), &algorithm, &data).await {
                        Ok(()) => return Ok(Redirect::to("/coins").into_response()),
                        // Values the operator can fix come back on the form.
                        Err(e @ (FleetError::BadRequest(_) | FleetError::Invalid { .. })) => {
                            e.to_string()
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(message) => message,
            };
            let form = FIELDS
                .iter()
                .map(|k| (*k, f.get(k).chars().take(64).collect()))
                .collect();
            view(&state, &user, Some(refused), form).await
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
            coins::remove(&state, &user.as_actor(), &algorithm)
                .await
                .map_err(|e| match e {
                    FleetError::NotFound(_) => {
                        WebError::new(StatusCode::NOT_FOUND, "no coin data for that algorithm")
                    }
                    e => e.into(),
                })?;
            Ok(Redirect::to("/coins").into_response())
        }
        .await,
    )
}
