//! The rig page's mining config form: the algorithm and the ordered pools with their wallets,
//! pushed as a signed `set_config` like `PUT /api/v1/rigs/{rig}/config`. Device settings and
//! the telemetry interval are kept from the current desired config. Changing where a rig's
//! hashes (and so the money) go takes the user's password again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use rigfleet_proto::config::{DesiredConfig, PoolSpec};
use rigfleet_proto::limits::MAX_POOLS;
use rigfleet_proto::RigId;

use super::account::confirm_password;
use super::live::WebShared;
use super::pages::rig_href;
use super::session::WebUser;
use super::{respond, Fields, WebError};
use crate::api::orders::order_failure;
use crate::api::rigs::find_rig;
use crate::app::AppState;

/// Algorithms the form suggests (any id is accepted: other backends bring other algorithms).
pub const SUGGESTED_ALGORITHMS: &[&str] = &["sha256d", "scrypt"];

/// Blank pool rows the form always offers, so a backup pool can be added.
const MIN_POOL_ROWS: usize = 3;

/// One pool row of the form.
pub struct PoolRow {
    pub url: String,
    pub user: String,
    pub password: String,
}

/// The form's pool rows: the configured pools, then blanks.
pub fn pool_rows(config: Option<&DesiredConfig>) -> Vec<PoolRow> {
    let pools = config.map_or(&[][..], |c| c.pools.as_slice());
    let total = (pools.len() + 1).clamp(MIN_POOL_ROWS, MAX_POOLS);
    pools
        .iter()
        .map(|p| PoolRow {
            url: p.url.clone(),
            user: p.user.clone(),
            password: p.password.clone(),
        })
        .chain(std::iter::repeat_with(|| PoolRow {
            url: String::new(),
            user: String::new(),
            password: String::new(),
        }))
        .take(total)
        .collect()
}

/// The config the form asks for, on top of the current one; checked as the agent checks it.
pub fn config_from_form(
    current: Option<&DesiredConfig>,
    f: &Fields,
) -> Result<DesiredConfig, WebError> {
    let algorithm = f.get("algorithm").trim().to_ascii_lowercase();
    let id_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_');
    if algorithm.len() > 32 || !algorithm.chars().all(id_char) {
        return Err(WebError::bad_request(
            "The algorithm is an id such as sha256d or scrypt (letters, digits, - and _), or empty for idle.",
        ));
    }
    let (urls, users, passwords) = (
        f.all("pool_url"),
        f.all("pool_user"),
        f.all("pool_password"),
    );
    if urls.len() != users.len() || urls.len() != passwords.len() || urls.len() > MAX_POOLS {
        return Err(WebError::bad_request("The pool rows are incomplete."));
    }
    let mut pools = Vec::new();
    for (i, ((url, user), password)) in urls.iter().zip(&users).zip(&passwords).enumerate() {
        let (url, user) = (url.trim(), user.trim());
        match (url.is_empty(), user.is_empty()) {
            (true, true) => continue,
            (false, false) => {}
            _ => {
                return Err(WebError::bad_request(format!(
                    "Pool {}: give both the URL and the user (wallet.worker).",
                    i + 1
                )))
            }
        }
        if let Err(e) = url.parse::<rigfleet_proto::pool_url::PoolUrl>() {
            return Err(WebError::bad_request(format!("Pool {}: {e}", i + 1)));
        }
        pools.push(PoolSpec {
            url: url.to_string(),
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    let mut config = current.cloned().unwrap_or(DesiredConfig {
        version: 0,
        algorithm: String::new(),
        pools: Vec::new(),
        devices: Vec::new(),
        telemetry_interval_secs: None,
    });
    config.algorithm = algorithm;
    config.pools = pools;
    // The same checks, and the same field names, as the REST API's.
    crate::api::orders::check_config(&config, "")?;
    Ok(config)
}

/// `POST /rigs/{rig}/config`.
pub async fn rig_config(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    Path(uid): Path<String>,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_write()?;
            let f = Fields::parse(&body);
            let row = find_rig(&state, &uid).await?;
            let current = state.hub.store.desired_config(row.id).await?;
            let mut config = config_from_form(current.as_ref().map(|d| &d.config), &f)?;
            confirm_password(&state, &shared, &user, f.get("confirm_password")).await?;
            if current
                .as_ref()
                .is_some_and(|d| d.content_hash == config.content_hash())
            {
                return Ok(Redirect::to(&rig_href(&row.rig_uid)).into_response());
            }
            config.version = row.desired_version + 1;
            let (d, pushed) = state
                .hub
                .set_desired_config(
                    row.id,
                    &RigId(row.rig_uid.clone()),
                    &config,
                    Some(&user.actor()),
                )
                .await
                .map_err(|e| WebError::from(order_failure(e)))?;
            // Who pointed the rig where: the same audit entry as the REST API writes.
            crate::api::audit::record_config_change(
                &state,
                &user.actor(),
                &uid,
                current.as_ref().map(|d| &d.config),
                &d,
                pushed,
            )
            .await;
            Ok(Redirect::to(&rig_href(&row.rig_uid)).into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Fields {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", super::super::pages::urlencode(v)))
            .collect();
        Fields::parse(body.join("&").as_bytes())
    }

    fn current() -> DesiredConfig {
        serde_json::from_str(
            r#"{"version":4,"algorithm":"sha256d","pools":[{"url":"stratum+tcp://a:3333","user":"w.1","password":"x"}],"devices":[{"device_id":"cpu","enabled":true,"threads":2}],"telemetry_interval_secs":5}"#,
        )
        .unwrap()
    }

    #[test]
    fn pools_come_in_order_and_device_settings_are_kept() {
        let f = form(&[
            ("algorithm", " Scrypt "),
            ("pool_url", "stratum+ssl://b:443"),
            ("pool_user", "wallet.rig"),
            ("pool_password", "x"),
            ("pool_url", ""),
            ("pool_user", ""),
            ("pool_password", ""),
            ("pool_url", "stratum+tcp://c:3333"),
            ("pool_user", "wallet.backup"),
            ("pool_password", ""),
        ]);
        let c = config_from_form(Some(&current()), &f).unwrap();
        assert_eq!(c.algorithm, "scrypt");
        let urls: Vec<&str> = c.pools.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(urls, ["stratum+ssl://b:443", "stratum+tcp://c:3333"]);
        assert_eq!(c.pools[1].user, "wallet.backup");
        assert_eq!(c.devices, current().devices);
        assert_eq!(c.telemetry_interval_secs, Some(5));
    }

    #[test]
    fn bad_rows_are_refused_with_the_row_number() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[
                    ("algorithm", "sha256d"),
                    ("pool_url", "pool:3333"),
                    ("pool_user", "w"),
                    ("pool_password", ""),
                ],
                "Pool 1: \"pool:3333\" has no scheme",
            ),
            (
                &[
                    ("algorithm", "sha256d"),
                    ("pool_url", "stratum+tcp://a:1"),
                    ("pool_user", ""),
                    ("pool_password", ""),
                ],
                "Pool 1: give both",
            ),
            (&[("algorithm", "sha256d")], "at least one pool"),
            (
                &[
                    ("algorithm", "sha<256>"),
                    ("pool_url", "stratum+tcp://a:1"),
                    ("pool_user", "w"),
                    ("pool_password", ""),
                ],
                "algorithm is an id",
            ),
            (
                &[
                    ("algorithm", "sha256d"),
                    ("pool_url", "stratum+tcp://a:1"),
                    ("pool_user", "w"),
                ],
                "incomplete",
            ),
        ];
        for (pairs, needle) in cases {
            let err = config_from_form(Some(&current()), &form(pairs)).unwrap_err();
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        // No algorithm and no pools: idle.
        let idle = config_from_form(Some(&current()), &form(&[("algorithm", "")])).unwrap();
        assert!(idle.algorithm.is_empty() && idle.pools.is_empty());
    }

    #[test]
    fn the_form_offers_blank_rows_after_the_pools() {
        let rows = pool_rows(Some(&current()));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].user, "w.1");
        assert!(rows[1].url.is_empty() && rows[2].url.is_empty());
        assert_eq!(pool_rows(None).len(), 3);
    }
}
