//! JSON errors of the REST API and the agent endpoints: `{"code": "...", "message": "...",
//! "fields": {...}}` with a fitting status (`fields`, per-field problems, only when there are
//! some). Database details stay in the log, not in the answer.
//!
//! One rule for request bodies, applied by one extractor ([`ApiJson`]) on every endpoint that
//! takes JSON ([`check_json_body`]): a body with `Content-Type: application/json` (or
//! `application/*+json`) is read as JSON on every request. On requests with an `Authorization`
//! header (API tokens) a body without a `Content-Type`, or with
//! `application/x-www-form-urlencoded` (what `curl -d` sends unless told otherwise), is read as
//! JSON too: a bearer token is never sent by a browser on its own, so these requests need no
//! CSRF defence. Any other content type, and anything but JSON on cookie-authenticated
//! requests (which keep their CSRF-token and Origin checks in [`super::auth`]), is refused
//! with 415.
//!
//! Whatever else answers an error under `/api/v1` (axum's own rejections of paths and queries,
//! 405 for a wrong method, 404 for an unknown route, 413 for a body over the limit) is rewritten
//! to the same JSON shape by [`json_errors`].

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::StoreError;

/// Per-field problems: the field's path (`pools[1].url`, `devices[0].threads`) → what is wrong.
pub type FieldErrors = BTreeMap<String, String>;

/// The body of every error answer of the REST API.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code for programs (`bad_request`, `invalid_config`, `unauthorized`,
    /// `forbidden`, `not_found`, `unsupported_media_type`, `invalid_body`…).
    pub code: String,
    /// A message for people.
    pub message: String,
    /// Per-field problems, keyed by the field's path in the request (`pools[1].url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldErrors>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Per-field problems, if the request had some.
    pub fields: Option<FieldErrors>,
}

impl ApiFailure {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            code,
            message: message.into(),
            fields: None,
        }
    }

    /// The same error with per-field problems.
    pub fn with_fields(mut self, fields: FieldErrors) -> Self {
        self.fields = (!fields.is_empty()).then_some(fields);
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 with per-field problems (`code` names what was checked).
    pub fn invalid(code: &'static str, fields: FieldErrors) -> Self {
        let message = summary(&fields);
        Self::new(StatusCode::BAD_REQUEST, code, message).with_fields(fields)
    }

    /// 404.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API token (Authorization: Bearer …) or log in",
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The body as sent.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
            fields: self.fields.clone(),
        }
    }
}

/// `field: problem; field: problem` (for messages and for the dashboard's error page).
pub fn summary(fields: &FieldErrors) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        crate::fleet::FleetError::from(e).into()
    }
}

/// The REST API's one mapping of a fleet operation's failure.
impl From<crate::fleet::FleetError> for ApiFailure {
    fn from(e: crate::fleet::FleetError) -> Self {
        use crate::fleet::FleetError as E;
        let message = e.to_string();
        match e {
            E::NotFound(_) => ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message),
            E::Invalid { code, fields } => ApiFailure::invalid(code, fields),
            E::BadRequest(_) => ApiFailure::bad_request(message),
            E::Conflict(_) => ApiFailure::new(StatusCode::CONFLICT, "conflict", message),
            E::Forbidden(_) => ApiFailure::forbidden(message),
            E::ReauthRequired(_) => {
                ApiFailure::new(StatusCode::FORBIDDEN, "reauth_required", message)
            }
            E::Unavailable(_) => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            E::Internal(_) => {
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.body())).into_response()
    }
}

/// Whether `headers` name a JSON body (`application/json`, `application/*+json`, parameters
/// such as `charset` allowed).
fn is_json_content_type(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

/// The body rule (see the module's documentation): `Ok` when the body may be read as JSON.
pub fn check_json_body(headers: &HeaderMap) -> Result<(), ApiFailure> {
    let token = headers.contains_key(header::AUTHORIZATION);
    let refuse = |message: &str| {
        Err(ApiFailure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ))
    };
    match headers.get(header::CONTENT_TYPE) {
        Some(v) if is_json_content_type(v) => Ok(()),
        Some(v) if token && is_curl_default(v) => Ok(()),
        Some(_) => refuse("the body must be JSON (Content-Type: application/json)"),
        None if token => Ok(()),
        None => {
            refuse("send Content-Type: application/json (only API-token requests may leave it out)")
        }
    }
}

/// `application/x-www-form-urlencoded`, which `curl -d` sends when not told the type.
fn is_curl_default(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Reads `bytes` as `T`; syntax errors are 400 `invalid_json`, a body of the wrong shape is 422
/// `invalid_body` with the offending field's path in `fields`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let invalid_json = |e: serde_json::Error| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path.is_empty() || path == "." {
                    "body".to_string()
                } else {
                    path
                };
                let mut fields = FieldErrors::new();
                fields.insert(field.clone(), inner.to_string());
                ApiFailure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("{field}: {inner}"),
                )
                .with_fields(fields)
            }
            _ => invalid_json(inner),
        }
    })?;
    de.end().map_err(invalid_json)?;
    Ok(value)
}

/// The one JSON body extractor of the REST API: the content-type rule of this module, then
/// [`parse_json`]; every refusal is an [`ApiFailure`].
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_body(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| rejection_failure(e.status(), e.body_text()))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Query strings, with axum's refusal as JSON.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
    }
}

/// The code of an error status no handler chose.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

fn rejection_failure(status: StatusCode, text: String) -> ApiFailure {
    let message = if text.trim().is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text.chars().take(500).collect()
    };
    ApiFailure::new(status, code_of(status), message)
}

/// `/api/v1/…` routes that do not exist.
pub async fn unknown_route() -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API route (the routes are in /api/v1/openapi.json)",
    )
}

/// Rewrites any error answer of the REST API that is not JSON yet (axum's rejections, 405,
/// 413…) into `{code, message}`, keeping its status and headers such as `Allow`.
pub async fn json_errors(res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(is_json_content_type);
    if is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let failure = rejection_failure(status, text);
    let fresh = failure.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let (fresh_parts, fresh_body) = fresh.into_parts();
    for (k, v) in fresh_parts.headers.iter() {
        parts.headers.insert(k.clone(), v.clone());
    }
    Response::from_parts(parts, fresh_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn one_content_type_rule() {
        assert!(check_json_body(&headers(&[("content-type", "application/json")])).is_ok());
        assert!(check_json_body(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )]))
        .is_ok());
        assert!(check_json_body(&headers(&[(
            "content-type",
            "application/merge-patch+json"
        )]))
        .is_ok());
        // An API token without a content type, or with the one `curl -d` sends.
        assert!(check_json_body(&headers(&[("authorization", "Bearer rft_x")])).is_ok());
        assert!(check_json_body(&headers(&[
            ("authorization", "Bearer rft_x"),
            ("content-type", "application/x-www-form-urlencoded")
        ]))
        .is_ok());
        for h in [
            headers(&[]),
            headers(&[("content-type", "text/plain")]),
            headers(&[("content-type", "application/x-www-form-urlencoded")]),
            headers(&[
                ("content-type", "multipart/form-data; boundary=x"),
                ("authorization", "Bearer rft_x"),
            ]),
            headers(&[
                ("content-type", "text/plain"),
                ("authorization", "Bearer rft_x"),
            ]),
        ] {
            let e = check_json_body(&h).unwrap_err();
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert_eq!(e.code, "unsupported_media_type");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    #[test]
    fn shape_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"name":"a","inner":{"count":-1}}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let fields = e.fields.expect("fields");
        assert!(fields.contains_key("inner.count"), "{fields:?}");
        let e = parse_json::<Body>(b"{nope").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        let e = parse_json::<Body>(br#"{"name":"a","inner":{"count":1}} trailing"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(parse_json::<Body>(br#"{"name":"a","inner":{"count":1}}"#).is_ok());
    }

    #[tokio::test]
    async fn plain_text_errors_become_json() {
        let res = (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], "").into_response();
        let res = json_errors(res).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let e: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(e.code, "method_not_allowed");
        let ok = json_errors("fine".into_response()).await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
