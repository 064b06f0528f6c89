//! The rig page's mining config form: the algorithm and the ordered pools with their wallets,
//! pushed as a signed `set_config` like `PUT /api/v1/rigs/{rig}/config`. Device settings and
//! the telemetry interval are kept from the current desired config. Changing where a rig's
//! hashes (and so the money) go takes the user's password again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use rigfleet_proto::config::{DesiredConfig, PoolSpec};
use rigfleet_proto::limits::MAX_POOLS;

use super::account::confirm_password;
use super::common::{rig_href, WebForm};
use super::live::WebShared;
use super::session::WebUser;
use super::{respond, WebError};
use crate::app::AppState;
use crate::fleet::configs::{self, MiningChange};

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

/// The form as posted: `algorithm`, then `pool_url`, `pool_user` and `pool_password` once per
/// row (repeated names, in order), and `confirm_password`.
pub struct ConfigForm {
    /// What to set.
    pub mining: MiningChange,
    /// The user's password, asked again.
    pub confirm_password: String,
}

impl ConfigForm {
    /// Reads the posted fields: rows left blank are the form's spare rows; a row with only
    /// its URL or only its user is refused with its number. The config's own rules are the
    /// operation's to check.
    pub fn from_fields(fields: &[(String, String)]) -> Result<ConfigForm, WebError> {
        let all = |name: &str| -> Vec<&str> {
            fields
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let first = |name: &str| {
            all(name)
                .first()
                .map_or_else(String::new, |v| v.to_string())
        };
        let (urls, users, passwords) = (all("pool_url"), all("pool_user"), all("pool_password"));
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
            pools.push(PoolSpec {
                url: url.to_string(),
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        Ok(ConfigForm {
            mining: MiningChange {
                algorithm: first("algorithm"),
                pools,
            },
            confirm_password: first("confirm_password"),
        })
    }
}

/// `POST /rigs/{rig}/config`: where the rig's hashes (and so the money) go, so the password
/// comes first.
pub async fn rig_config(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    Path(uid): Path<String>,
    WebForm(fields): WebForm<Vec<(String, String)>>,
) -> Response {
    respond(
        async {
            let form = ConfigForm::from_fields(&fields)?;
            confirm_password(&state, &shared, &user, &form.confirm_password).await?;
            let actor = user.as_actor().reauthenticated();
            configs::set_mining(&state, &actor, &uid, &form.mining).await?;
            Ok(Redirect::to(&rig_href(&uid)).into_response())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Result<ConfigForm, WebError> {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", super::super::common::urlencode(v)))
            .collect();
        let fields: Vec<(String, String)> = form_urlencoded::parse(body.join("&").as_bytes())
            .into_owned()
            .collect();
        ConfigForm::from_fields(&fields)
    }

    fn current() -> DesiredConfig {
        serde_json::from_str(
            r#"{"version":4,"algorithm":"sha256d","pools":[{"url":"stratum+tcp://a:3333","user":"w.1","password":"x"}],"devices":[{"device_id":"cpu","enabled":true,"threads":2}],"telemetry_interval_secs":5}"#,
        )
        .unwrap()
    }

    #[test]
    fn pools_come_in_order_and_spare_rows_are_skipped() {
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
            ("confirm_password", "pw&=1"),
        ])
        .unwrap();
        assert_eq!(f.confirm_password, "pw&=1");
        let c = configs::apply_mining(Some(&current()), &f.mining).unwrap();
        assert_eq!(c.algorithm, "scrypt");
        let urls: Vec<&str> = c.pools.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(urls, ["stratum+ssl://b:443", "stratum+tcp://c:3333"]);
        assert_eq!(c.pools[1].user, "wallet.backup");
        assert_eq!(c.devices, current().devices);
        assert_eq!(c.telemetry_interval_secs, Some(5));
    }

    #[test]
    fn bad_rows_are_refused_with_the_row_number() {
        let cases: [(&[(&str, &str)], &str); 2] = [
            (
                &[
                    ("algorithm", "sha256d"),
                    ("pool_url", "stratum+tcp://a:1"),
                    ("pool_user", ""),
                    ("pool_password", ""),
                ],
                "Pool 1: give both",
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
            let Err(err) = form(pairs) else {
                panic!("{needle}: accepted");
            };
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
        // No algorithm and no pools: idle.
        let idle = form(&[("algorithm", "")]).unwrap();
        assert!(idle.mining.algorithm.is_empty() && idle.mining.pools.is_empty());
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
