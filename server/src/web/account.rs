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
    client_address, cookie, create_session, login_failed, login_name_key, login_succeeded,
    login_wait, set_cookie, sha256_hex, WebUser, LOGIN_CSRF_COOKIE, MFA_COOKIE, SESSION_COOKIE,
    SESSION_LIFETIME,
};
use super::users::{self, UserEntry};
use super::{render, respond, totp, Fields, Nav, WebError};
use crate::app::AppState;
use crate::db::{Role, Store, StoreError, TotpAttempt, User};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// How long a login may wait for its TOTP code.
const MFA_TIMEOUT: Duration = Duration::from_secs(300);
/// TOTP codes tried per pending login.
const MFA_ATTEMPTS: u32 = 5;
/// Wrong second-factor codes in a row (over any number of logins, on any replica) before the
/// second factor locks; a correct password does not reset the count, a right code does.
pub const TOTP_MAX_FAILURES: i64 = 5;
/// The first second-factor lock; each further wrong code doubles it, up to [`TOTP_MAX_LOCK_MS`].
pub const TOTP_FIRST_LOCK_MS: i64 = 15 * 60_000;
/// The longest second-factor lock.
pub const TOTP_MAX_LOCK_MS: i64 = 24 * 3_600_000;

/// How long the second factor locks after `failures` wrong codes in a row (0: not yet).
pub fn totp_lock_ms(failures: i64) -> i64 {
    if failures < TOTP_MAX_FAILURES {
        return 0;
    }
    let doublings = u32::try_from((failures - TOTP_MAX_FAILURES).min(16)).unwrap_or(16);
    TOTP_FIRST_LOCK_MS
        .saturating_mul(1_i64 << doublings)
        .min(TOTP_MAX_LOCK_MS)
}

/// argon2 verifications done (tests read it: an unknown name must cost one too).
static PASSWORD_CHECKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An argon2id hash with the parameters of real ones ([`crate::startup::hash_password`]) that
/// no password matches in practice: unknown names are checked against it, so they cost what
/// known ones do and the answer's time does not tell which names exist.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        // A fixed salt: no randomness is needed for a hash nobody logs in with.
        SaltString::from_b64("cmlnZmxlZXQtZHVtbXktc2FsdA")
            .ok()
            .and_then(|salt| {
                argon2::Argon2::default()
                    .hash_password(b"rigfleet: no such user", &salt)
                    .ok()
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    })
}

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
        PASSWORD_CHECKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Looks a user up by name and checks the password. An unknown name is checked against a
/// dummy hash, so it costs one argon2 verification as a known one does.
async fn check_login(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<User>, StoreError> {
    let user = if username.is_empty() || username.len() > 64 || password.len() > 1024 {
        None
    } else {
        store.user_by_name(username).await?
    };
    let hash = match &user {
        Some(u) => u.password_hash.clone(),
        None => dummy_hash().to_string(),
    };
    let ok = password_ok(hash, password.to_string()).await;
    Ok(user.filter(|_| ok))
}

/// Checks the signed-in user's own password again (re-authentication, password change,
/// turning the second factor off). Wrong ones slow this session's next tries (refused with 429
/// while it waits), so a stolen cookie cannot guess the password at speed; the user's other
/// sessions and logins from elsewhere are not slowed.
async fn own_password_ok(
    state: &AppState,
    user: &WebUser,
    password: &str,
) -> Result<bool, WebError> {
    let store = &state.hub.store;
    let key = format!("reauth:{}", user.username);
    let address = format!("session:{}", user.session_hash.get(..16).unwrap_or(""));
    let now = crate::now_ms();
    if let Some(wait) = login_wait(store, &key, &address, now).await? {
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong passwords. Wait {wait} seconds before trying again."),
        ));
    }
    let row = store
        .user_by_id(user.user_id)
        .await?
        .ok_or_else(|| WebError::forbidden("user gone"))?;
    let ok = !password.is_empty()
        && password.len() <= 1024
        && password_ok(row.password_hash, password.to_string()).await;
    if ok {
        login_succeeded(store, &key, &address).await?;
    } else {
        login_failed(store, &key, &address, now).await?;
        state.hub.metrics.error("web_reauth_failed");
    }
    Ok(ok)
}

/// Re-authentication before a change that moves money (pools and wallets): the signed-in
/// user types their password again, so a session left open on a shared screen or a stolen
/// cookie is not enough. Wrong passwords slow this session's next tries.
pub(crate) async fn confirm_password(
    state: &AppState,
    _shared: &WebShared,
    user: &WebUser,
    password: &str,
) -> Result<(), WebError> {
    if !own_password_ok(state, user, password).await? {
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
    let store = &state.hub.store;
    let name_key = login_name_key(&username);
    let address = client_address(peer.ip());
    let now = crate::now_ms();
    match login_wait(store, &name_key, &address, now).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            return login_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(format!(
                    "Too many failed logins. Wait {wait} seconds before trying again."
                )),
                username,
            )
        }
        Err(e) => return WebError::from(e).into_response(),
    }
    let user = match check_login(store, &username, &password).await {
        Ok(u) => u,
        Err(e) => return WebError::from(e).into_response(),
    };
    let Some(user) = user else {
        if let Err(e) = login_failed(store, &name_key, &address, now).await {
            return WebError::from(e).into_response();
        }
        state.hub.metrics.error("web_login_failed");
        return login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user name or password.".into()),
            username,
        );
    };
    if let Err(e) = login_succeeded(store, &name_key, &address).await {
        return WebError::from(e).into_response();
    }
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

/// `POST /login/totp`: a TOTP code or a recovery code. Every code tried counts against the
/// user's second factor in the database (not against this pending login, which a correct
/// password renews): after [`TOTP_MAX_FAILURES`] wrong ones in a row it locks. A TOTP code is
/// good once: one of a step already used is refused.
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
    match check_second_factor(&state.hub.store, p.user_id, &code).await {
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

/// What a second-factor code did.
#[derive(Debug)]
enum SecondFactor {
    /// Right: the login may finish.
    Passed(User),
    /// Wrong (or a TOTP code whose step was used already).
    Wrong { replay: bool },
    /// The second factor is locked for about that many minutes.
    Locked { minutes: i64 },
    /// The user is gone, or has no second factor any more.
    NoUser,
}

/// Checks a TOTP or recovery code of `user_id`, counting the attempt in the database first.
async fn check_second_factor(
    store: &Store,
    user_id: i64,
    code: &str,
) -> Result<SecondFactor, StoreError> {
    let Some(user) = store.user_by_id(user_id).await? else {
        return Ok(SecondFactor::NoUser);
    };
    let Some(secret) = user.totp_secret.clone() else {
        return Ok(SecondFactor::NoUser);
    };
    let now = crate::now_ms();
    let failures = match store
        .totp_begin_attempt(user.id, now, TOTP_MAX_FAILURES, now + TOTP_FIRST_LOCK_MS)
        .await?
    {
        TotpAttempt::Open { failures } => failures,
        TotpAttempt::Locked { until_ms } => {
            let minutes = ((until_ms - now).max(1) + 59_999) / 60_000;
            return Ok(SecondFactor::Locked { minutes });
        }
    };
    let now_secs = u64::try_from(now / 1000).unwrap_or(0);
    let mut replay = false;
    let ok = match totp::verify_step(&secret, code, now_secs) {
        Some(step) => {
            let fresh = store.totp_use_step(user.id, step).await?;
            replay = !fresh;
            fresh
        }
        None if totp::looks_like_recovery(code) => {
            users::use_recovery(store, user.id, code).await?
        }
        None => false,
    };
    if ok {
        store.totp_attempt_succeeded(user.id).await?;
        return Ok(SecondFactor::Passed(user));
    }
    let lock = totp_lock_ms(failures);
    if lock > 0 {
        store.totp_lock_until(user.id, now + lock).await?;
        tracing::warn!(
            user = %user.username,
            failures,
            "Second factor locked after wrong codes"
        );
    }
    Ok(SecondFactor::Wrong { replay })
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
            let new = f.get("new_password");
            if !own_password_ok(&state, &user, f.get("current_password")).await? {
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
            // Whoever else holds a session of this user (a stolen cookie, a forgotten screen)
            // is out now; this one stays.
            let ended = state
                .hub
                .store
                .delete_other_sessions(user.user_id, &user.session_hash)
                .await?;
            audit(
                &state,
                &user.actor(),
                "user.password",
                &user.username,
                &format!("other sessions ended: {ended}"),
            )
            .await;
            page.message = Some("Password changed. Your other sessions were logged out.".into());
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
            let Some(step) = totp::verify_step(&secret, f.get("code"), now_secs) else {
                page.error = Some("That code is not right; the setup was not saved.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            };
            let (codes, hashes) = totp::recovery_codes(8)
                .ok_or_else(|| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"))?;
            let store = &state.hub.store;
            store
                .set_user_totp(user.user_id, Some(&secret), crate::now_ms())
                .await?;
            // The code that turned it on was seen on this screen: it does not log in again.
            store.totp_use_step(user.user_id, step).await?;
            users::set_recovery(store, user.user_id, &hashes).await?;
            store
                .delete_other_sessions(user.user_id, &user.session_hash)
                .await?;
            shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&user.user_id);
            audit(&state, &user.actor(), "user.totp_on", &user.username, "").await;
            page.totp_enabled = true;
            page.recovery = codes;
            page.message = Some(
                "Second factor on; your other sessions were logged out. Keep these recovery codes somewhere safe: each works once."
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
            if !own_password_ok(&state, &user, f.get("password")).await? {
                page.error = Some("The password is wrong.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            }
            state
                .hub
                .store
                .set_user_totp(user.user_id, None, crate::now_ms())
                .await?;
            users::set_recovery(&state.hub.store, user.user_id, &[]).await?;
            state
                .hub
                .store
                .delete_other_sessions(user.user_id, &user.session_hash)
                .await?;
            audit(&state, &user.actor(), "user.totp_off", &user.username, "").await;
            page.totp_enabled = false;
            page.message = Some("Second factor off; your other sessions were logged out.".into());
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
            } else {
                state
                    .hub
                    .store
                    .delete_other_sessions(id, &user.session_hash)
                    .await?;
            }
            // An admin's reset is also how a user whose second factor locked gets back in.
            state.hub.store.totp_attempt_succeeded(id).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Item 15 (timing): an unknown name is checked against a dummy hash with the parameters of
    /// real ones, so it costs one argon2 verification as a known name does (counted, not
    /// timed).
    #[tokio::test]
    async fn unknown_names_cost_one_argon2_check_like_known_ones() {
        let db = crate::db::test_db::TestDb::sqlite().await.unwrap();
        let s = &db.store;
        let hash = crate::startup::hash_password("right-password-1").unwrap();
        s.create_user("kim", &hash, Role::Viewer).await.unwrap();
        // The dummy has the cost of a real hash: same algorithm, version and parameters.
        let real = PasswordHash::new(&hash).unwrap();
        let dummy = PasswordHash::new(dummy_hash()).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        for (name, password, ok) in [
            ("kim", "right-password-1", true),
            ("kim", "wrong-password", false),
            ("nobody", "wrong-password", false),
            ("", "wrong-password", false),
            (&"x".repeat(65)[..], "wrong-password", false),
        ] {
            let before = PASSWORD_CHECKS.load(Ordering::SeqCst);
            let user = check_login(s, name, password).await.unwrap();
            assert_eq!(user.is_some(), ok, "{name}");
            assert!(
                PASSWORD_CHECKS.load(Ordering::SeqCst) > before,
                "{name:?} got an argon2 check"
            );
        }
        db.cleanup().await;
    }

    #[test]
    fn second_factor_locks_grow_and_are_capped() {
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES - 1), 0);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES), TOTP_FIRST_LOCK_MS);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES + 1), 2 * TOTP_FIRST_LOCK_MS);
        assert_eq!(totp_lock_ms(TOTP_MAX_FAILURES + 40), TOTP_MAX_LOCK_MS);
        assert_eq!(totp_lock_ms(i64::MAX), TOTP_MAX_LOCK_MS);
    }
}
