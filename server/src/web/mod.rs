//! The browser dashboard: server-rendered pages (askama templates from `web/templates`, escaped
//! by default), static CSS/JS from `web/static`, cookie sessions with CSRF tokens and an Origin
//! check, TOTP, a live feed over Server-Sent Events and SVG charts drawn here.
//!
//! Every route is listed once in [`table`]; the router is built from it and the browser tests
//! walk it, so a state-changing route cannot be added without the CSRF/Origin test covering it.

pub mod account;
pub mod add_rigs;
pub mod audit;
pub mod chart;
pub mod coins;
pub mod common;
pub mod fmt;
pub mod live;
pub mod login;
pub mod overview;
pub mod rig;
pub mod rig_config;
pub mod session;
// Old path of `auth::totp`, kept while the browser tests still name it.
pub use crate::auth::totp;
pub mod users;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};

use crate::app::AppState;

/// The Content-Security-Policy of every page: only this origin's files, no inline script or
/// style, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form body the pages accept.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// One route of the dashboard: method, path (axum syntax), whether it changes state (then it
/// needs the CSRF token and a same-origin request), and its handler.
pub struct WebRoute {
    /// GET or POST.
    pub method: Method,
    /// The path, with `{param}` placeholders.
    pub path: &'static str,
    /// The handler.
    pub handler: MethodRouter<AppState>,
}

/// Every dashboard route.
pub fn table() -> Vec<WebRoute> {
    let r = |method: Method, path: &'static str, handler: MethodRouter<AppState>| WebRoute {
        method,
        path,
        handler,
    };
    vec![
        r(Method::GET, "/", get(overview::overview)),
        r(Method::GET, "/login", get(login::login_page)),
        r(Method::POST, "/login", post(login::login_submit)),
        r(Method::GET, "/login/totp", get(login::totp_page)),
        r(Method::POST, "/login/totp", post(login::totp_submit)),
        r(Method::POST, "/logout", post(login::logout)),
        r(Method::GET, "/account", get(account::account_page)),
        r(
            Method::POST,
            "/account/password",
            post(account::change_password),
        ),
        r(
            Method::POST,
            "/account/totp/start",
            post(account::totp_start),
        ),
        r(
            Method::POST,
            "/account/totp/confirm",
            post(account::totp_confirm),
        ),
        r(
            Method::POST,
            "/account/totp/disable",
            post(account::totp_disable),
        ),
        r(Method::GET, "/users", get(users::users_page)),
        r(Method::POST, "/users", post(users::user_create)),
        r(Method::POST, "/users/{id}/role", post(users::user_role)),
        r(
            Method::POST,
            "/users/{id}/password",
            post(users::user_password),
        ),
        r(Method::POST, "/users/{id}/delete", post(users::user_delete)),
        r(Method::GET, "/rigs/{rig}", get(rig::rig_page)),
        r(Method::POST, "/rigs/{rig}/command", post(rig::rig_command)),
        r(Method::POST, "/rigs/{rig}/edit", post(rig::rig_edit)),
        r(
            Method::POST,
            "/rigs/{rig}/config",
            post(rig_config::rig_config),
        ),
        r(Method::POST, "/rigs/{rig}/approve", post(rig::rig_approve)),
        r(Method::POST, "/rigs/{rig}/remove", post(rig::rig_remove)),
        r(Method::POST, "/bulk", post(overview::bulk)),
        r(Method::GET, "/audit", get(audit::audit_page)),
        r(Method::GET, "/coins", get(coins::coins_page)),
        r(Method::POST, "/coins", post(coins::coins_save)),
        r(
            Method::POST,
            "/coins/{algorithm}/delete",
            post(coins::coins_delete),
        ),
        r(Method::GET, "/add-rigs", get(add_rigs::add_rigs_page)),
        r(Method::POST, "/add-rigs", post(add_rigs::add_rigs_create)),
        r(Method::GET, "/live", get(live::events)),
        r(Method::GET, "/static/app.css", get(css)),
        r(Method::GET, "/static/app.js", get(js)),
    ]
}

/// `(method, path)` of every state-changing dashboard route (what the CSRF test walks).
pub fn state_changing_routes() -> Vec<(Method, &'static str)> {
    table()
        .into_iter()
        .filter(|r| r.method != Method::GET)
        .map(|r| (r.method, r.path))
        .collect()
}

/// The dashboard router. It needs the state up front for its guard (CSRF, Origin, sessions).
pub fn router(state: AppState) -> Router<AppState> {
    let mut router = Router::new();
    for route in table() {
        router = router.route(route.path, route.handler);
    }
    let shared = Arc::new(live::WebShared::default());
    router
        .layer(axum::middleware::from_fn_with_state(state, session::guard))
        .layer(Extension(shared))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

const APP_CSS: &str = include_str!("../../../web/static/app.css");
const APP_JS: &str = include_str!("../../../web/static/app.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        APP_CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        APP_JS,
    )
        .into_response()
}

/// A page's failure: status and a message for people (rendered as an escaped page).
#[derive(Debug)]
pub struct WebError {
    /// HTTP status.
    pub status: StatusCode,
    /// For people.
    pub message: String,
}

impl WebError {
    /// An error with status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError {
            status,
            message: message.into(),
        }
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<crate::db::StoreError> for WebError {
    fn from(e: crate::db::StoreError) -> Self {
        crate::fleet::FleetError::from(e).into()
    }
}

/// The dashboard's one mapping of a fleet operation's failure.
impl From<crate::fleet::FleetError> for WebError {
    fn from(e: crate::fleet::FleetError) -> Self {
        use crate::fleet::FleetError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Invalid { .. } | E::BadRequest(_) => StatusCode::BAD_REQUEST,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Forbidden(_) | E::ReauthRequired(_) => StatusCode::FORBIDDEN,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        WebError::new(status, e.to_string())
    }
}

impl From<askama::Error> for WebError {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "Template rendering failed");
        WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "page rendering failed")
    }
}

#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let page = ErrorPage {
            status: self.status.as_u16(),
            message: &self.message,
        };
        let body = askama::Template::render(&page).unwrap_or_else(|_| "error".to_string());
        (self.status, Html(body)).into_response()
    }
}

/// Renders a template into a response.
pub fn render(t: &impl askama::Template) -> Result<Response, WebError> {
    Ok(Html(t.render()?).into_response())
}

/// Answers a handler's result.
pub fn respond(r: Result<Response, WebError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// A posted form's fields.
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Parses a urlencoded body.
    pub fn parse(body: &[u8]) -> Fields {
        Fields(session::form_fields(body))
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the navigation bar shows.
#[derive(Clone, Debug)]
pub struct Nav {
    /// Logged-in user.
    pub username: String,
    /// Role name.
    pub role: &'static str,
    /// CSRF token for the logout form.
    pub csrf: String,
    /// Shows the admin links.
    pub admin: bool,
    /// Which page is current.
    pub page: &'static str,
}

impl Nav {
    /// The bar for `user` on `page`.
    pub fn new(user: &session::WebUser, page: &'static str) -> Nav {
        Nav {
            username: user.username.clone(),
            role: user.role.as_str(),
            csrf: user.csrf.clone(),
            admin: user.is_admin(),
            page,
        }
    }
}
