//! Errors as problem details (RFC 9457, `application/problem+json`), each
//! with a stable `code`. Client mistakes are 4xx: bad JSON (`bad_json`),
//! unknown or wrongly typed fields (`unknown_field`, `invalid_body`), a
//! body over the limit (`body_too_large`), the wrong content type
//! (`unsupported_media_type`), unknown ids (`not_found`), a method the
//! route does not have (`method_not_allowed`). [`Body`] is the JSON
//! extractor that answers them; [`problem_responses`] turns every other
//! error answer (axum's own rejections, the fallbacks) into one, so that
//! no error leaves the API in another shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The media type of problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem detail (RFC 9457).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:voxgate:api:<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this request, and what to do.
    pub detail: String,
    /// A stable machine-readable code.
    pub code: String,
    /// Seconds to wait before retrying (429 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem with `status`, `code` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:voxgate:api:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            retry_after: None,
        }
    }

    /// 404 for an unknown id.
    pub fn not_found(what: &str, id: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} `{}`", printable(id)),
        )
    }

    /// 400 for a bad value of a field or parameter.
    pub fn invalid(code: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 429 with the seconds to wait.
    pub fn too_many(detail: impl Into<String>, retry_after: u64) -> Problem {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        p.retry_after = Some(retry_after.max(1));
        p
    }

    /// 500: the server failed; the cause goes to the log, not the client.
    pub fn internal(what: &str, error: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %error, "api: {what}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; the relay's log has the cause"),
        )
    }
}

/// At most 64 characters of `s`, control characters escaped: what a
/// problem may quote back of the client's input.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<crate::relay::registry::RegistryError> for Problem {
    fn from(e: crate::relay::registry::RegistryError) -> Problem {
        use crate::relay::registry::RegistryError as E;
        match &e {
            E::UnknownDevice(d) => Problem::not_found("device", d),
            E::BadDeviceId(_) => Problem::invalid("invalid_device_id", e.to_string()),
            E::Enrolled(_) | E::TokenOutstanding { .. } => {
                Problem::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            _ => Problem::internal("the registry failed", &e),
        }
    }
}

/// A JSON request body (`application/json`, unknown fields refused by the
/// types' `deny_unknown_fields`) whose every rejection is a [`Problem`].
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(r) => Err(json_problem(&r)),
        }
    }
}

fn json_problem(r: &JsonRejection) -> Problem {
    let text = r.body_text();
    match r {
        JsonRejection::JsonSyntaxError(_) => {
            Problem::invalid("bad_json", format!("the body is not valid JSON: {text}"))
        }
        JsonRejection::JsonDataError(_) if text.contains("unknown field") => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_field", text)
        }
        JsonRejection::JsonDataError(_) => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", text)
        }
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as `Content-Type: application/json`",
        ),
        _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the body is larger than the API accepts ([api] max_body_bytes)",
        ),
        _ => Problem::invalid("bad_body", text),
    }
}

/// The code of an error status that no handler described.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Middleware: read the whole request body (up to `limit`) before the
/// request is routed. A request refused early (401, 403, 429) then leaves
/// no unread body on the connection, which would make the kernel reset it
/// under the client's feet instead of closing it.
pub async fn read_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(b)))
                .await
        }
        Err(_) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the body is larger than the API accepts ([api] max_body_bytes)",
        )
        .into_response(),
    }
}

/// Middleware: any error answer that is not a problem yet becomes one
/// (axum's path and query rejections, 404, 405), keeping its headers
/// (`Allow`) and its text as the detail.
pub async fn problem_responses(req: Request, next: axum::middleware::Next) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    let is_problem = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut detail = String::from_utf8_lossy(&text).trim().to_string();
    if detail.is_empty() {
        detail = match status {
            StatusCode::NOT_FOUND => {
                "no such route; the API's routes are in /v1/openapi.json".into()
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                "the route does not take this method (see the Allow header)".into()
            }
            s => s.canonical_reason().unwrap_or("error").into(),
        };
    }
    let mut out = Problem::new(status, code_of(status), printable_long(&detail)).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

fn printable_long(s: &str) -> String {
    s.chars().take(512).filter(|c| !c.is_control()).collect()
}

/// The error answers every authenticated route may give (for the OpenAPI
/// document).
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// The request is malformed (bad JSON, a bad parameter).
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// No key, or a key that is unknown, revoked or expired.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(Problem),
    /// The key lacks the route's scope.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The route does not take this method.
    #[response(status = 405, content_type = "application/problem+json")]
    MethodNotAllowed(Problem),
    /// The resource is in a state that refuses the request.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// The body is over the limit.
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not JSON.
    #[response(status = 415, content_type = "application/problem+json")]
    MediaType(Problem),
    /// The body has unknown or wrongly typed fields.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
    /// A rate limit: retry after `Retry-After` seconds.
    #[response(status = 429, content_type = "application/problem+json")]
    TooMany(Problem),
}
