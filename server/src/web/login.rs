//! Logging in and out: the password form, then the second-factor form when the user has one.
//! The checks (backoff, argon2, TOTP and recovery codes, their lock) are [`crate::auth`]'s;
//! this keeps the pending logins and sets the cookies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;

use super::live::{PendingMfa, WebShared};
use super::session::WebUser;
use super::{render, Fields, Nav, WebError};
use crate::app::AppState;
use crate::auth::login::{
    password_step, second_factor, PasswordStep, SecondFactor, MFA_ATTEMPTS, MFA_TIMEOUT,
};
use crate::auth::session::{
    self, cookie, set_cookie, LOGIN_CSRF_COOKIE, MFA_COOKIE, SESSION_COOKIE, SESSION_LIFETIME,
};
use crate::auth::sha256_hex;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Option<Nav>,
    csrf: String,
    error: Option<String>,
    username: String,
}

#[derive(Template)]
#[template(path = "login_totp.html")]
struct TotpPage {
    nav: Option<Nav>,
    csrf: String,
    error: Option<String>,
}

pub(crate) fn with_cookie(mut res: Response, value: HeaderValue) -> Response {
    res.headers_mut().append(header::SET_COOKIE, value);
    res
}

fn login_form(
    state: &AppState,
    status: StatusCode,
    error: Option<String>,
    username: String,
) -> Response {
    let csrf = crate::hub::random_hex(16);
    let page = LoginPage {
        nav: None,
        csrf: csrf.clone(),
        error,
        username,
    };
    match render(&page) {
        Ok(mut res) => {
            *res.status_mut() = status;
            with_cookie(res, set_cookie(state, LOGIN_CSRF_COOKIE, &csrf, 3600))
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /login`.
pub async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if session::load(&state, &headers).await.is_some() {
        return Redirect::to("/").into_response();
    }
    login_form(&state, StatusCode::OK, None, String::new())
}

fn session_response(state: &AppState, value: &str) -> Response {
    let res = Redirect::to("/").into_response();
    let res = with_cookie(
        res,
        set_cookie(state, SESSION_COOKIE, value, SESSION_LIFETIME.as_secs()),
    );
    let res = with_cookie(res, set_cookie(state, MFA_COOKIE, "", 0));
    with_cookie(res, set_cookie(state, LOGIN_CSRF_COOKIE, "", 0))
}

/// `POST /login`.
pub async fn login_submit(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let f = Fields::parse(&body);
    let username = f.get("username").trim().to_string();
    let password = f.get("password").to_string();
    let user = match password_step(&state, &username, &password, peer.ip()).await {
        Ok(PasswordStep::Passed(user)) => user,
        Ok(PasswordStep::Wait(wait)) => {
            return login_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(format!(
                    "Too many failed logins. Wait {wait} seconds before trying again."
                )),
                username,
            )
        }
        Ok(PasswordStep::Wrong) => {
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password.".into()),
                username,
            )
        }
        Err(e) => return WebError::from(e).into_response(),
    };
    if user.totp_secret.is_some() {
        let token = crate::hub::random_hex(24);
        shared.mfa.lock().unwrap_or_else(|e| e.into_inner()).insert(
            sha256_hex(&token),
            PendingMfa {
                user_id: user.id,
                until: Instant::now() + MFA_TIMEOUT,
                attempts: 0,
            },
        );
        let res = Redirect::to("/login/totp").into_response();
        return with_cookie(
            res,
            set_cookie(&state, MFA_COOKIE, &token, MFA_TIMEOUT.as_secs()),
        );
    }
    finish_login(&state, user.id, &user.username).await
}

async fn finish_login(state: &AppState, user_id: i64, username: &str) -> Response {
    match session::start(state, user_id, username).await {
        Ok(value) => session_response(state, &value),
        Err(e) => WebError::from(e).into_response(),
    }
}

fn pending(shared: &WebShared, headers: &HeaderMap) -> Option<(String, PendingMfa)> {
    let token = cookie(headers, MFA_COOKIE)?;
    let key = sha256_hex(token);
    let mut map = shared.mfa.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    map.retain(|_, p| p.until > now);
    map.get(&key).cloned().map(|p| (key, p))
}

fn totp_form(state: &AppState, status: StatusCode, error: Option<String>) -> Response {
    let csrf = crate::hub::random_hex(16);
    match render(&TotpPage {
        nav: None,
        csrf: csrf.clone(),
        error,
    }) {
        Ok(mut res) => {
            *res.status_mut() = status;
            with_cookie(res, set_cookie(state, LOGIN_CSRF_COOKIE, &csrf, 600))
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /login/totp`.
pub async fn totp_page(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    headers: HeaderMap,
) -> Response {
    if pending(&shared, &headers).is_none() {
        return Redirect::to("/login").into_response();
    }
    totp_form(&state, StatusCode::OK, None)
}

/// `POST /login/totp`: a TOTP code or a recovery code. Every code tried counts against the
/// user's second factor in the database (not against this pending login, which a correct
/// password renews): after [`crate::auth::login::TOTP_MAX_FAILURES`] wrong ones in a row it
/// locks. A TOTP code is good once: one of a step already used is refused.
pub async fn totp_submit(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((key, p)) = pending(&shared, &headers) else {
        return Redirect::to("/login").into_response();
    };
    let f = Fields::parse(&body);
    let code = f.get("code").trim().to_string();
    let forget_pending = || {
        shared
            .mfa
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    };
    match second_factor(&state, p.user_id, &code).await {
        Ok(SecondFactor::Passed(user)) => {
            forget_pending();
            finish_login(&state, user.id, &user.username).await
        }
        Ok(SecondFactor::NoUser) => {
            forget_pending();
            Redirect::to("/login").into_response()
        }
        Ok(SecondFactor::Locked { minutes }) => {
            forget_pending();
            state.hub.metrics.error("web_totp_locked");
            totp_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(format!(
                    "Too many wrong codes: the second factor is locked for {minutes} more minutes."
                )),
            )
        }
        Ok(SecondFactor::Wrong { replay }) => {
            state.hub.metrics.error("web_totp_failed");
            let mut map = shared.mfa.lock().unwrap_or_else(|e| e.into_inner());
            let exhausted = match map.get_mut(&key) {
                Some(p) => {
                    p.attempts += 1;
                    p.attempts >= MFA_ATTEMPTS
                }
                None => true,
            };
            if exhausted {
                map.remove(&key);
                return Redirect::to("/login").into_response();
            }
            drop(map);
            let message = if replay {
                "That code was used already. Wait for the next one."
            } else {
                "That code is not right. Try the current one."
            };
            totp_form(&state, StatusCode::UNAUTHORIZED, Some(message.into()))
        }
        Err(e) => WebError::from(e).into_response(),
    }
}

/// `POST /logout`.
pub async fn logout(State(state): State<AppState>, user: WebUser) -> Response {
    session::end(&state, &user.session_hash).await;
    let res = Redirect::to("/login").into_response();
    with_cookie(res, set_cookie(&state, SESSION_COOKIE, "", 0))
}
