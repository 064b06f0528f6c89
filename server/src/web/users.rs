//! The admins' users page: list, create, role, password, removal, over
//! [`crate::fleet::users`].

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::session::WebUser;
use super::{render, respond, Fields, Nav, WebError};
use crate::app::AppState;
use crate::fleet::{users, FleetError};

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
    let list = users::list(state, &user.as_actor()).await?;
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

/// Answers a change: the page with `done` on success; the page with the reason when the input
/// was wrong (400) or clashed (409); the error page otherwise (refused, not found, outage).
async fn answer<T>(
    state: &AppState,
    user: &WebUser,
    result: Result<T, FleetError>,
    done: impl FnOnce(T) -> String,
) -> Result<Response, WebError> {
    let (error, status) = match result {
        Ok(v) => return users_view(state, user, Some(done(v)), None, StatusCode::OK).await,
        Err(FleetError::Invalid { fields, .. }) => (
            fields.into_values().collect::<Vec<_>>().join(" "),
            StatusCode::BAD_REQUEST,
        ),
        Err(FleetError::BadRequest(m)) => (m, StatusCode::BAD_REQUEST),
        Err(FleetError::Conflict(m)) => (m, StatusCode::CONFLICT),
        Err(other) => return Err(other.into()),
    };
    users_view(state, user, None, Some(error), status).await
}

/// `GET /users` (admins).
pub async fn users_page(State(state): State<AppState>, user: WebUser) -> Response {
    respond(users_view(&state, &user, None, None, StatusCode::OK).await)
}

/// `POST /users`: a new user.
pub async fn user_create(State(state): State<AppState>, user: WebUser, body: Bytes) -> Response {
    let f = Fields::parse(&body);
    let name = f.get("username").trim();
    let created = users::create(
        &state,
        &user.as_actor(),
        name,
        f.get("password"),
        f.get("role"),
    )
    .await;
    respond(answer(&state, &user, created, |_| format!("User {name} created.")).await)
}

/// `POST /users/{id}/role`.
pub async fn user_role(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let f = Fields::parse(&body);
    match users::set_role(&state, &user.as_actor(), id, f.get("role")).await {
        // Their own sessions ended with the role: this one too.
        Ok(changed) if changed.own => Redirect::to("/login").into_response(),
        result => respond(
            answer(&state, &user, result, |c| {
                format!("{} is now {}.", c.username, c.role.as_str())
            })
            .await,
        ),
    }
}

/// `POST /users/{id}/password`: an admin sets a new password (the user's sessions end).
pub async fn user_password(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    let f = Fields::parse(&body);
    let set = users::set_password(
        &state,
        &user.as_actor(),
        id,
        f.get("password"),
        Some(&user.session_hash),
    )
    .await;
    respond(
        answer(&state, &user, set, |name| {
            format!("Password of {name} set.")
        })
        .await,
    )
}

/// `POST /users/{id}/delete`.
pub async fn user_delete(
    State(state): State<AppState>,
    user: WebUser,
    Path(id): Path<i64>,
) -> Response {
    let removed = users::delete(&state, &user.as_actor(), id).await;
    respond(
        answer(&state, &user, removed, |name| {
            format!("User {name} removed.")
        })
        .await,
    )
}
