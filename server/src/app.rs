//! The application: shared state and the router (agent endpoints, REST API, metrics, health).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rigfleet_proto::enroll::{AGENT_WS_PATH, ENROLL_PATH};
use rigfleet_proto::limits::MAX_FRAME_BYTES;

use crate::auth::constant_time_eq;
use crate::fleet::StatusJudge;
use crate::hub::Hub;

/// Largest REST request body.
pub const MAX_API_BODY: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The hub (store, writer, key, live state, metrics).
    pub hub: Arc<Hub>,
    /// Decides every rig's status (the one truth pages, API and metrics share).
    pub status: Arc<StatusJudge>,
    /// Bearer token for /metrics.
    pub metrics_token: Option<Arc<str>>,
    /// URL agents and people use.
    pub public_url: String,
    /// `sha256:…` of the TLS certificate when serving TLS.
    pub tls_fingerprint: Option<String>,
    /// Attempts per address at `/api/agent/enroll`.
    pub enroll_limiter: Arc<crate::auth::limits::EnrollLimiter>,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(AGENT_WS_PATH, get(agent_ws))
        .route(
            ENROLL_PATH,
            post(crate::enroll::enroll).layer(DefaultBodyLimit::max(crate::enroll::MAX_BODY_BYTES)),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::api::router())
        .merge(crate::web::router(state.clone()))
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(state)
}

async fn agent_ws(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    // tungstenite's defaults accept 64 MiB messages and buffer writes without bound.
    // Small read and write chunks: a thousand idle links must not hold 128 KiB each.
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(4 * MAX_FRAME_BYTES)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| crate::hub::connection::run(socket, state.hub.clone(), peer))
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes()));
        if !ok {
            return (StatusCode::UNAUTHORIZED, "metrics need the bearer token\n").into_response();
        }
    }
    match state.hub.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "Could not encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.hub.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(error) => {
            tracing::warn!(%error, "Database not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
        }
    }
}
