//! The REST API under `/api/v1` and its OpenAPI document, generated from the handlers'
//! annotations so that the document and the routes cannot drift apart unnoticed (a test walks
//! both).

pub mod audit;
pub mod auth;
pub mod coins;
pub mod error;
pub mod orders;
pub mod profiles;
pub mod rigs;
pub mod rollouts;
pub mod tokens;

use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::AppState;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "rigfleet server API", description = "Fleet, rigs, history, configs, commands, events and enrollment tokens. Authenticate with `Authorization: Bearer rft_…` (scopes read ⊂ write ⊂ admin). Request bodies are JSON: `Content-Type: application/json`, or with an API token no Content-Type or curl's default `application/x-www-form-urlencoded`; session-cookie requests must send `application/json`, the `X-CSRF-Token` header and this server's Origin. Every error is an `ErrorBody`: `{code, message, fields?}`, `fields` mapping a field's path (`devices[0].threads`) to its problem."),
    paths(
        rigs::list, rigs::detail, rigs::patch, rigs::remove, rigs::approve, rigs::history,
        orders::devices, orders::get_config, orders::put_config, orders::send_command,
        orders::list_commands, orders::events,
        tokens::list, tokens::create, tokens::revoke,
        profiles::list, profiles::put, profiles::remove,
        coins::list, coins::put, coins::remove,
        audit::list,
        rollouts::create, rollouts::list, rollouts::detail, rollouts::halt, rollouts::resume, rollouts::rollback,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth, &ErrorResponses),
    tags((name = "rigs"), (name = "config"), (name = "commands"), (name = "events"), (name = "enrollment"), (name = "profiles"), (name = "coins"), (name = "audit"), (name = "rollouts"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "api_token",
            Vec::<String>::new(),
        )]);
    }
}

/// Every operation documents its errors: any 4xx/5xx answer is an [`error::ErrorBody`].
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = || {
            ResponseBuilder::new()
                .description(
                    "An error: JSON `{code, message, fields?}`; `fields` maps a field's path \
                     (`pools[1].url`) to what is wrong with it.",
                )
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let existing: Vec<String> = op
                    .responses
                    .responses
                    .keys()
                    .filter(|k| k.starts_with('4') || k.starts_with('5'))
                    .cloned()
                    .collect();
                let common = ["400", "401", "403", "404", "415", "422"].map(String::from);
                for status in existing.into_iter().chain(common) {
                    op.responses.responses.insert(status, error().into());
                }
                op.responses
                    .responses
                    .entry("default".to_string())
                    .or_insert_with(|| error().into());
            }
        }
    }
}

/// Every `(method, path)` the router serves under `/api/v1`, in OpenAPI's path syntax. The
/// router below is built from the same calls; a test checks this list against the document and
/// against the live router.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/rigs"),
    ("get", "/api/v1/rigs/{rig}"),
    ("patch", "/api/v1/rigs/{rig}"),
    ("delete", "/api/v1/rigs/{rig}"),
    ("post", "/api/v1/rigs/{rig}/approve"),
    ("get", "/api/v1/rigs/{rig}/history"),
    ("get", "/api/v1/rigs/{rig}/devices"),
    ("get", "/api/v1/rigs/{rig}/config"),
    ("put", "/api/v1/rigs/{rig}/config"),
    ("post", "/api/v1/rigs/{rig}/commands"),
    ("get", "/api/v1/rigs/{rig}/commands"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/enrollment-tokens"),
    ("post", "/api/v1/enrollment-tokens"),
    ("delete", "/api/v1/enrollment-tokens/{id}"),
    ("get", "/api/v1/profiles"),
    ("put", "/api/v1/profiles/{name}"),
    ("delete", "/api/v1/profiles/{name}"),
    ("get", "/api/v1/coins"),
    ("put", "/api/v1/coins/{algorithm}"),
    ("delete", "/api/v1/coins/{algorithm}"),
    ("get", "/api/v1/audit"),
    ("post", "/api/v1/rollouts"),
    ("get", "/api/v1/rollouts"),
    ("get", "/api/v1/rollouts/{id}"),
    ("post", "/api/v1/rollouts/{id}/halt"),
    ("post", "/api/v1/rollouts/{id}/resume"),
    ("post", "/api/v1/rollouts/{id}/rollback"),
];

/// The `/api/v1` router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rigs", get(rigs::list))
        .route(
            "/api/v1/rigs/{rig}",
            get(rigs::detail).patch(rigs::patch).delete(rigs::remove),
        )
        .route(
            "/api/v1/rigs/{rig}/approve",
            axum::routing::post(rigs::approve),
        )
        .route("/api/v1/rigs/{rig}/history", get(rigs::history))
        .route("/api/v1/rigs/{rig}/devices", get(orders::devices))
        .route(
            "/api/v1/rigs/{rig}/config",
            get(orders::get_config).put(orders::put_config),
        )
        .route(
            "/api/v1/rigs/{rig}/commands",
            get(orders::list_commands).post(orders::send_command),
        )
        .route("/api/v1/events", get(orders::events))
        .route(
            "/api/v1/enrollment-tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/api/v1/enrollment-tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/api/v1/profiles", get(profiles::list))
        .route(
            "/api/v1/profiles/{name}",
            axum::routing::put(profiles::put).delete(profiles::remove),
        )
        .route("/api/v1/coins", get(coins::list))
        .route(
            "/api/v1/coins/{algorithm}",
            axum::routing::put(coins::put).delete(coins::remove),
        )
        .route("/api/v1/audit", get(audit::list))
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::create),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::detail))
        .route(
            "/api/v1/rollouts/{id}/halt",
            axum::routing::post(rollouts::halt),
        )
        .route(
            "/api/v1/rollouts/{id}/resume",
            axum::routing::post(rollouts::resume),
        )
        .route(
            "/api/v1/rollouts/{id}/rollback",
            axum::routing::post(rollouts::rollback),
        )
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1", axum::routing::any(error::unknown_route))
        .route("/api/v1/", axum::routing::any(error::unknown_route))
        .route("/api/v1/{*rest}", axum::routing::any(error::unknown_route))
        .layer(axum::middleware::map_response(error::json_errors))
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
