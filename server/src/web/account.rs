//! The signed-in user's own account page (password, second factor), and re-entering one's
//! password before a change a stolen cookie must not be enough for. The operations are
//! [`crate::fleet::users`]'s; the password check is [`crate::auth::password::reconfirm`].

use std::sync::Arc;
use std::time::Instant;

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::live::WebShared;
use super::session::WebUser;
use super::{render, respond, Fields, Nav, WebError};
use crate::app::AppState;
use crate::auth::login::MFA_TIMEOUT;
use crate::auth::password::{reconfirm, Reconfirm};
use crate::fleet::{users, Actor, FleetError};

/// Re-enters the signed-in user's password: the actor, reauthenticated for this request, when
/// it is right; `None` when it is wrong (counted); 429 while this session waits after too many
/// wrong ones.
async fn reauthenticate(
    state: &AppState,
    user: &WebUser,
    password: &str,
) -> Result<Option<Actor>, WebError> {
    match reconfirm(
        state,
        user.user_id,
        &user.username,
        &user.session_hash,
        password,
    )
    .await?
    {
        Reconfirm::Confirmed => Ok(Some(user.as_actor().reauthenticated())),
        Reconfirm::Wrong => Ok(None),
        Reconfirm::Wait(wait) => Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many wrong passwords. Wait {wait} seconds before trying again."),
        )),
    }
}

/// Re-authentication before a change that moves money (pools and wallets), a shell command or
/// a reboot: the signed-in user types their password again, so a session left open on a
/// shared screen or a stolen cookie is not enough. Wrong passwords slow this session's next
/// tries.
pub(crate) async fn confirm_password(
    state: &AppState,
    _shared: &WebShared,
    user: &WebUser,
    password: &str,
) -> Result<(), WebError> {
    match reauthenticate(state, user, password).await? {
        Some(_) => Ok(()),
        // 401, not 403: the user may do this, once they prove again who they are.
        None => Err(WebError::new(
            StatusCode::UNAUTHORIZED,
            "Your password is wrong: nothing was changed.",
        )),
    }
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

async fn account_base(state: &AppState, user: &WebUser) -> Result<AccountPage, WebError> {
    let account = users::own_account(state, &user.as_actor()).await?;
    Ok(AccountPage {
        nav: Some(Nav::new(user, "account")),
        csrf: user.csrf.clone(),
        message: None,
        error: None,
        totp_enabled: account.totp_enabled,
        qr_svg: None,
        totp_secret: None,
        recovery: vec![],
    })
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

/// The page with `e`'s message when the input was wrong (400), the error page otherwise.
fn refused(mut page: AccountPage, e: FleetError) -> Result<Response, WebError> {
    match e {
        FleetError::Invalid { fields, .. } => {
            page.error = Some(fields.into_values().collect::<Vec<_>>().join(" "));
            Ok(page_with_status(&page, StatusCode::BAD_REQUEST))
        }
        other => Err(other.into()),
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
            let Some(actor) = reauthenticate(&state, &user, f.get("current_password")).await?
            else {
                page.error = Some("The current password is wrong.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            };
            let changed = users::change_own_password(
                &state,
                &actor,
                &user.session_hash,
                f.get("new_password"),
                f.get("confirm_password"),
            )
            .await;
            if let Err(e) = changed {
                return refused(page, e);
            }
            page.message = Some("Password changed. Your other sessions were logged out.".into());
            render(&page)
        }
        .await,
    )
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
            let setup = users::totp_start(&user.as_actor())?;
            page.qr_svg = setup.qr_svg;
            page.totp_secret = Some(setup.secret.clone());
            shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    user.user_id,
                    (setup.secret, Instant::now() + MFA_TIMEOUT * 2),
                );
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
            let codes = match users::totp_confirm(
                &state,
                &user.as_actor(),
                &user.session_hash,
                &secret,
                f.get("code"),
            )
            .await
            {
                Ok(codes) => codes,
                Err(e) => return refused(page, e),
            };
            shared
                .totp_enroll
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&user.user_id);
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
            let Some(actor) = reauthenticate(&state, &user, f.get("password")).await? else {
                page.error = Some("The password is wrong.".into());
                return Ok(page_with_status(&page, StatusCode::BAD_REQUEST));
            };
            users::totp_disable(&state, &actor, &user.session_hash).await?;
            page.totp_enabled = false;
            page.message = Some("Second factor off; your other sessions were logged out.".into());
            render(&page)
        }
        .await,
    )
}
