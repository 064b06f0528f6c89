//! Logging in and out (password, then TOTP when the user has it), the account page (password,
//! second factor) and user management for admins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordHash;
use argon2::PasswordVerifier;
use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;

use super::live::{PendingMfa, WebShared};
use super::session::{
    cookie, create_session, set_cookie, sha256_hex, WebUser, LOGIN_CSRF_COOKIE, MFA_COOKIE,
    SESSION_COOKIE, SESSION_LIFETIME,
};
use super::users::{self, UserEntry};
use super::{render, respond, totp, Fields, Nav, WebError};
use crate::app::AppState;
use crate::db::Role;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// How long a login may wait for its TOTP code.
const MFA_TIMEOUT: Duration = Duration::from_secs(300);
/// TOTP codes tried per pending login.
const MFA_ATTEMPTS: u32 = 5;

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

fn with_cookie(mut res: Response, value: axum::http::HeaderValue) -> Response {
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
    if super::session::load_session(&state, &headers)
        .await
        .is_some()
    {
        return Redirect::to("/").into_response();
    }
    login_form(&state, StatusCode::OK, None, String::new())
}

/// Checks a password against an argon2 PHC string off the async threads (argon2 is slow on
/// purpose).
async fn password_ok(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Re-authentication before a change that moves money (pools and wallets): the signed-in
/// user types their password again, so a session left open on a shared screen or a stolen
/// cookie is not enough. Wrong passwords count against the same limiter as logins.
pub(crate) async fn confirm_password(
    state: &AppState,
    shared: &WebShared,
    user: &WebUser,
    password: &str,
) -> Result<(), WebError> {
    let key = format!("user:{}", user.username);
    if let Some(wait) = shared.limiter.locked_for(&key) {
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong passwords. Wait {wait} seconds before trying again."),
        ));
    }
    let row = state
        .hub
        .store
        .user_by_id(user.user_id)
        .await?
        .ok_or_else(|| WebError::forbidden("user gone"))?;
    if password.is_empty()
        || password.len() > 1024
        || !password_ok(row.password_hash, password.to_string()).await
    {
        shared.limiter.fail(&key);
        state.hub.metrics.error("web_reauth_failed");
        // 401, not 403: the user may do this, once they prove again who they are.
        return Err(WebError::new(
            StatusCode::UNAUTHORIZED,
            "Your password is wrong: nothing was changed.",
        ));
    }
    Ok(())
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
    let keys = [format!("user:{username}"), format!("ip:{}", peer.ip())];
    if let Some(wait) = keys
        .iter()
        .filter_map(|k| shared.limiter.locked_for(k))
        .max()
    {
        return login_form(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            Some(format!(
                "Too many failed logins. Wait {wait} seconds before trying again."
            )),
            username,
        );
    }
    let user = if username.is_empty() || username.len() > 64 || password.len() > 1024 {
        None
    } else {
        match state.hub.store.user_by_name(&username).await {
            Ok(u) => u,
            Err(e) => return WebError::from(e).into_response(),
        }
    };
    let ok = match &user {
        Some(u) => password_ok(u.password_hash.clone(), password).await,
        None => false,
    };
    let Some(user) = user.filter(|_| ok) else {
        for k in &keys {
            shared.limiter.fail(k);
        }
        state.hub.metrics.error("web_login_failed");
        return login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user name or password.".into()),
            username,
        );
    };
    shared.limiter.clear(&keys[0]);
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
    match create_session(state, user_id).await {
        Ok(value) => {
            audit(
                state,
                &format!("user:{username}"),
                "user.login",
                username,
                "",
            )
            .await;
            session_response(state, &value)
        }
        Err(e) => e.into_response(),
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

/// `POST /login/totp`: a TOTP code or a recovery code.
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
    let user = match state.hub.store.user_by_id(p.user_id).await {
        Ok(Some(u)) => u,
        Ok(None) => return Redirect::to("/login").into_response(),
        Err(e) => return WebError::from(e).into_response(),
    };
    let now_secs = (crate::now_ms() / 1000).max(0) as u64;
    let mut ok = user
        .totp_secret
        .as_deref()
        .is_some_and(|s| totp::verify(s, &code, now_secs));
    if !ok && code.len() == 10 {
        ok = users::use_recovery(&state.hub.store, user.id, &code)
            .await
            .unwrap_or(false);
    }
    if !ok {
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
            drop(map);
            shared.limiter.fail(&format!("user:{}", user.username));
            return Redirect::to("/login").into_response();
        }
        drop(map);
        return totp_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That code is not right. Try the current one.".into()),
        );
    }
    shared
        .mfa
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
    finish_login(&state, user.id, &user.username).await
}

/// `POST /logout`.
pub async fn logout(State(state): State<AppState>, user: WebUser) -> Response {
    if let Err(error) = state.hub.store.delete_session(&user.session_hash).await {
        tracing::warn!(%error, "Could not delete a session");
    }
    let res = Redirect::to("/login").into_response();
    with_cookie(res, set_cookie(&state, SESSION_COOKIE, "", 0))
}

async fn audit(state: &AppState, actor: &str, action: &str, target: &str, detail: &str) {
    state.hub.store.audit(actor, action, target, detail).await;
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Option<Nav>,
    csrf: String,
    message: Option<String>,
    error: Option<String>,
    totp_enabled: bool,
    /// SVG of the QR code (drawn by the server from the otpauth URI: modules only).
    qr_svg: Option<String>,
    totp_secret: Option<String>,
    recovery: Vec<String>,
}

impl AccountPage {
    fn new(user: &WebUser, totp_enabled: bool) -> AccountPage {
        AccountPage {
            nav: Some(Nav::new(user, "account")),
            csrf: user.csrf.clone(),
            message: None,
            error: None,
            totp_enabled,
            qr_svg: None,
            totp_secret: None,
            recovery: vec![],
        }
    }
}

async fn account_base(state: &AppState, user: &WebUser) -> Result<AccountPage, WebError> {
    let row = state
        .hub
        .store
        .user_by_id(user.user_id)
        .await?
        .ok_or_else(|| WebError::forbidden("user gone"))?;
    Ok(AccountPage::new(user, row.totp_secret.is_some()))
}

fn page_with_status(page: &AccountPage, status: StatusCode) -> Response {
    match render(page) {
        Ok(mut r) => {
            *r.status_mut() = status;
            r
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /account`.
pub async fn account_page(State(state): State<AppState>, user: WebUser) -> Response {
    respond(
        async {
            let page = account_base(&state, &user).await?;
            render(&page)
        }
        .await,
    )
}

/// `POST /account/password`.
pub async fn change_password(
    State(state): State<AppState>,
    user: WebUser,
    body: Bytes,
) -> Response {
    respond(
        async {
            let f = Fields::parse(&body);
            let mut page = account_base(&state, &user).await?;
            let row = state
                .hub
                .store
                .user_by_id(user.user_id)
                .await?
                .ok_or_else(|| WebError::forbidden("user gone"))?;
            let new = f.get("new_password");
            if !password_ok(row.password_hash, f.get("current_password").to_string()).await {
                page.error = Some("The current password is wrong.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            }
            if let Err(m) = check_password(new, f.get("confirm_password")) {
                page.error = Some(m);
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            }
            let hash = hash(new).await?;
            state
                .hub
                .store
                .set_user_password(user.user_id, &hash)
                .await?;
            audit(&state, &user.actor(), "user.password", &user.username, "").await;
            page.message = Some("Password changed.".into());
            render(&page)
        }
        .await,
    )
}

fn check_password(new: &str, confirm: &str) -> Result<(), String> {
    if new.chars().count() < MIN_PASSWORD_LEN || new.len() > 1024 {
        return Err(format!(
            "The new password needs at least {MIN_PASSWORD_LEN} characters."
        ));
    }
    if new != confirm {
        return Err("The two new passwords differ.".into());
    }
    Ok(())
}

async fn hash(password: &str) -> Result<String, WebError> {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || crate::startup::hash_password(&p))
        .await
        .map_err(|_| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "hashing failed"))?
        .map_err(|_| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "hashing failed"))
}

/// `POST /account/totp/start`: a new secret, its QR code and a form for the first code.
pub async fn totp_start(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
) -> Response {
    respond(
        async {
            let mut page = account_base(&state, &user).await?;
            let secret = totp::new_secret()
                .ok_or_else(|| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"))?;
            let uri = totp::otpauth_uri("rigfleet", &user.username, &secret);
            page.qr_svg = totp::qr_svg(&uri);
            page.totp_secret = Some(secret.clone());
            shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user.user_id, (secret, Instant::now() + MFA_TIMEOUT * 2));
            render(&page)
        }
        .await,
    )
}

/// `POST /account/totp/confirm`: the first code turns the second factor on; recovery codes
/// are shown once.
pub async fn totp_confirm(
    State(state): State<AppState>,
    Extension(shared): Extension<Arc<WebShared>>,
    user: WebUser,
    body: Bytes,
) -> Response {
    respond(
        async {
            let f = Fields::parse(&body);
            let mut page = account_base(&state, &user).await?;
            let secret = shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&user.user_id)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(s, _)| s.clone());
            let Some(secret) = secret else {
                page.error = Some("Start the setup again.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            };
            let now_secs = (crate::now_ms() / 1000).max(0) as u64;
            if !totp::verify(&secret, f.get("code"), now_secs) {
                page.error = Some("That code is not right; the setup was not saved.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            }
            state
                .hub
                .store
                .set_user_totp(user.user_id, Some(&secret), crate::now_ms())
                .await?;
            let (codes, hashes) = totp::recovery_codes(8);
            users::set_recovery(&state.hub.store, user.user_id, &hashes).await?;
            shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&user.user_id);
            audit(&state, &user.actor(), "user.totp_on", &user.username, "").await;
            page.totp_enabled = true;
            page.recovery = codes;
            page.message = Some(
                "Second factor on. Keep these recovery codes somewhere safe: each works once."
                    .into(),
            );
            render(&page)
        }
        .await,
    )
}

/// `POST /account/totp/disable` (needs the password).
pub async fn totp_disable(State(state): State<AppState>, user: WebUser, body: Bytes) -> Response {
    respond(
        async {
            let f = Fields::parse(&body);
            let mut page = account_base(&state, &user).await?;
            let row = state
                .hub
                .store
                .user_by_id(user.user_id)
                .await?
                .ok_or_else(|| WebError::forbidden("user gone"))?;
            if !password_ok(row.password_hash, f.get("password").to_string()).await {
                page.error = Some("The password is wrong.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            }
            state
                .hub
                .store
                .set_user_totp(user.user_id, None, crate::now_ms())
                .await?;
            users::set_recovery(&state.hub.store, user.user_id, &[]).await?;
            audit(&state, &user.actor(), "user.totp_off", &user.username, "").await;
            page.totp_enabled = false;
            page.message = Some("Second factor off.".into());
            render(&page)
        }
        .await,
    )
}

struct UserRow {
    id: i64,
    username: String,
    role: &'static str,
    totp: bool,
    me: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Option<Nav>,
    csrf: String,
    users: Vec<UserRow>,
    message: Option<String>,
    error: Option<String>,
}

async fn users_view(
    state: &AppState,
    user: &WebUser,
    message: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Result<Response, WebError> {
    let list: Vec<UserEntry> = users::list_users(&state.hub.store).await?;
    let page = UsersPage {
        nav: Some(Nav::new(user, "users")),
        csrf: user.csrf.clone(),
        users: list
            .into_iter()
            .map(|u| UserRow {
                me: u.id == user.user_id,
                id: u.id,
                username: u.username,
                role: u.role.as_str(),
                totp: u.totp,
            })
            .collect(),
        message,
        error,
    };
    let mut res = render(&page)?;
    *res.status_mut() = status;
    Ok(res)
}

/// `GET /users` (admins).
pub async fn users_page(State(state): State<AppState>, user: WebUser) -> Response {
    respond(
        async {
            user.require_admin()?;
            users_view(&state, &user, None, None, StatusCode::OK).await
        }
        .await,
    )
}

fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// `POST /users`: a new user.
pub async fn user_create(State(state): State<AppState>, user: WebUser, body: Bytes) -> Response {
    respond(
        async {
            user.require_admin()?;
            let f = Fields::parse(&body);
            let name = f.get("username").trim();
            let Some(role) = Role::parse(f.get("role")) else {
                return Err(WebError::bad_request(
                    "role must be admin, operator or viewer",
                ));
            };
            if !valid_username(name) {
                let e = "User names are 1 to 64 letters, digits or . _ - @.".to_string();
                return users_view(&state, &user, None, Some(e), StatusCode::BAD_REQUEST).await;
            }
            let password = f.get("password");
            if let Err(e) = check_password(password, password) {
                return users_view(&state, &user, None, Some(e), StatusCode::BAD_REQUEST).await;
            }
            let hash = hash(password).await?;
            match state.hub.store.create_user(name, &hash, role).await {
                Ok(_) => {}
                Err(crate::db::StoreError::Conflict(_)) => {
                    let e = format!("The name {name} is taken.");
                    return users_view(&state, &user, None, Some(e), StatusCode::CONFLICT).await;
                }
                Err(e) => return Err(e.into()),
            }
            audit(&state, &user.actor(), "user.create", name, role.as_str()).await;
            users_view(
                &state,
                &user,
                Some(format!("User {name} created.")),
                None,
                StatusCode::OK,
            )
            .await
        }
        .await,
    )
}

/// `POST /users/{id}/role`.
pub async fn user_role(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            let f = Fields::parse(&body);
            let role = Role::parse(f.get("role"))
                .ok_or_else(|| WebError::bad_request("role must be admin, operator or viewer"))?;
            let target = state
                .hub
                .store
                .user_by_id(id)
                .await?
                .ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "no such user"))?;
            if target.role == Role::Admin
                && role != Role::Admin
                && users::admin_count(&state.hub.store).await? <= 1
            {
                let e = "The last admin keeps the admin role.".to_string();
                return users_view(&state, &user, None, Some(e), StatusCode::BAD_REQUEST).await;
            }
            users::set_role(&state.hub.store, id, role).await?;
            users::delete_sessions_of(&state.hub.store, id).await?;
            audit(
                &state,
                &user.actor(),
                "user.role",
                &target.username,
                role.as_str(),
            )
            .await;
            if id == user.user_id {
                return Ok(Redirect::to("/login").into_response());
            }
            users_view(
                &state,
                &user,
                Some(format!("{} is now {}.", target.username, role.as_str())),
                None,
                StatusCode::OK,
            )
            .await
        }
        .await,
    )
}

/// `POST /users/{id}/password`: an admin sets a new password (the user's sessions end).
pub async fn user_password(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            let f = Fields::parse(&body);
            let target = state
                .hub
                .store
                .user_by_id(id)
                .await?
                .ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "no such user"))?;
            let password = f.get("password");
            if let Err(e) = check_password(password, password) {
                return users_view(&state, &user, None, Some(e), StatusCode::BAD_REQUEST).await;
            }
            let hash = hash(password).await?;
            state.hub.store.set_user_password(id, &hash).await?;
            if id != user.user_id {
                users::delete_sessions_of(&state.hub.store, id).await?;
            }
            audit(
                &state,
                &user.actor(),
                "user.reset_password",
                &target.username,
                "",
            )
            .await;
            users_view(
                &state,
                &user,
                Some(format!("Password of {} set.", target.username)),
                None,
                StatusCode::OK,
            )
            .await
        }
        .await,
    )
}

/// `POST /users/{id}/delete`.
pub async fn user_delete(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
) -> Response {
    respond(
        async {
            user.require_admin()?;
            if id == user.user_id {
                let e = "You cannot remove yourself.".to_string();
                return users_view(&state, &user, None, Some(e), StatusCode::BAD_REQUEST).await;
            }
            let target = state
                .hub
                .store
                .user_by_id(id)
                .await?
                .ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "no such user"))?;
            users::delete_user(&state.hub.store, id).await?;
            audit(&state, &user.actor(), "user.delete", &target.username, "").await;
            users_view(
                &state,
                &user,
                Some(format!("User {} removed.", target.username)),
                None,
                StatusCode::OK,
            )
            .await
        }
        .await,
    )
}
