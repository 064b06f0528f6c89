//! What several dashboard pages share: links, the fleet's totals as the pages show them, and
//! form parsing.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::{fmt, WebError};
use crate::app::AppState;
use crate::coins::CoinData;
use crate::fleet::rigs::FleetTotals;

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Path of a rig's page.
pub fn rig_href(uid: &str) -> String {
    format!("/rigs/{}", urlencode(uid))
}

/// A posted form (`application/x-www-form-urlencoded`), parsed by serde; a body that does not
/// parse answers the dashboard's error page rather than axum's plain text.
pub struct WebForm<T>(pub T);

impl<T, S> FromRequest<S> for WebForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = WebError;

    async fn from_request(req: Request, state: &S) -> Result<Self, WebError> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|axum::Form(v)| WebForm(v))
            .map_err(|e| WebError::bad_request(e.body_text()))
    }
}

/// Totals of one algorithm, formatted.
pub struct AlgoTotal {
    pub(super) algorithm: String,
    pub(super) hashrate: String,
    pub(super) rigs: usize,
    pub(super) online: usize,
    pub(super) warning: usize,
    pub(super) offline: usize,
    pub(super) power: String,
    pub(super) efficiency: String,
    /// Estimated revenue per day, when coin data is set for the algorithm.
    pub(super) revenue: Option<String>,
}

fn efficiency(algorithm: &str, watts: f64, hps: f64) -> String {
    if watts <= 0.0 || hps <= 0.0 {
        return fmt::dash();
    }
    if algorithm == "sha256d" {
        format!("{} J/TH", fmt::num3(watts / (hps / 1e12)))
    } else {
        format!("{} W per MH/s", fmt::num3(watts / (hps / 1e6)))
    }
}

/// Totals per algorithm (rigs by status, hash rate and power of the rigs not offline, revenue
/// where `coins` has the algorithm) and fleet counts `[all, online, warning, offline]`.
pub(super) fn totals(
    state: &AppState,
    coins: &[(String, CoinData)],
) -> (Vec<AlgoTotal>, [usize; 4]) {
    let FleetTotals { algorithms, rigs } = crate::fleet::rigs::totals(state);
    let totals = algorithms
        .into_iter()
        .map(|a| AlgoTotal {
            hashrate: fmt::hashrate(a.hashrate_hps),
            rigs: a.rigs.iter().sum(),
            online: a.rigs[0],
            warning: a.rigs[1],
            offline: a.rigs[2],
            power: fmt::watts(Some(a.power_watts as f32)),
            efficiency: efficiency(&a.algorithm, a.power_watts, a.hashrate_hps),
            revenue: coins
                .iter()
                .find(|(alg, _)| *alg == a.algorithm)
                .map(|(_, c)| fmt::revenue(c, c.revenue_per_day(a.hashrate_hps))),
            algorithm: a.algorithm,
        })
        .collect();
    (totals, rigs)
}
