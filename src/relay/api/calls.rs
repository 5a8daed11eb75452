//! `/v1/calls`: calls started by applications, and the live calls.
//!
//! `POST /v1/calls` (scope `calls:create`) rings extension `from` and, once
//! it answers, connects it to `to`: another extension (on any box), `900`
//! (echo) or `901` (recording); the call's id comes back at once, while
//! `from` rings. `GET /v1/calls`, `GET /v1/calls/{id}` and
//! `DELETE /v1/calls/{id}` (scope `calls:admin`) list the live calls (those
//! phones dialled too), show one, and hang one up (each phone on it gets a
//! BYE, or a CANCEL while it rings). What happens next (ringing, answered,
//! fallback, ended, failed) is reported as call events.

use super::{Api, Body, Errors, Need, Problem, scope};
use crate::relay::calls::CallView;
use crate::relay::switch::{CallId, OriginateError};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A call to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    /// The extension rung first (2-8 digits, not starting with 9).
    #[schema(pattern = "^[0-8][0-9]{1,7}$", example = "201")]
    pub from: String,
    /// What it is connected to once it answers: an extension, `900` (echo)
    /// or `901` (recording).
    #[schema(pattern = "^([0-8][0-9]{1,7}|90[01])$", example = "301")]
    pub to: String,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, hangup))
}

fn refused(e: OriginateError) -> Problem {
    let (status, code) = match e {
        OriginateError::BadNumber(_) => (StatusCode::BAD_REQUEST, "invalid_number"),
        OriginateError::SameNumber(_) => (StatusCode::BAD_REQUEST, "same_number"),
        OriginateError::Offline(_) => (StatusCode::CONFLICT, "extension_offline"),
        OriginateError::RecordingOff => (StatusCode::CONFLICT, "recording_off"),
        OriginateError::Busy(_) => (StatusCode::CONFLICT, "busy"),
    };
    Problem::new(status, code, e.to_string())
}

/// The call `id` names (ids are decimal numbers; any other text names none).
fn call_id(id: &str) -> Result<CallId, Problem> {
    id.parse()
        .ok()
        .filter(|_| id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| Problem::not_found("call", id))
}

/// Start a call: ring extension `from`, then connect it to `to`.
#[utoipa::path(post, path = "/v1/calls", tag = "calls", request_body = NewCall,
    responses((status = 201, description = "The call, ringing `from`", body = CallView), Errors))]
async fn create(
    _: Need<scope::CallsCreate>,
    State(api): State<Api>,
    Body(c): Body<NewCall>,
) -> Result<(StatusCode, Json<CallView>), Problem> {
    let view = api.relay.calls.create(&c.from, &c.to).map_err(refused)?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The live calls, oldest first (applications' and phones').
#[utoipa::path(get, path = "/v1/calls", tag = "calls",
    responses((status = 200, description = "Live calls", body = Vec<CallView>), Errors))]
async fn list(_: Need<scope::CallsAdmin>, State(api): State<Api>) -> Json<Vec<CallView>> {
    Json(api.relay.calls.list())
}

/// One live call.
#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 200, description = "The call", body = CallView), Errors))]
async fn get(
    _: Need<scope::CallsAdmin>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<CallView>, Problem> {
    let k = call_id(&id)?;
    api.relay
        .calls
        .get(k)
        .map(Json)
        .ok_or_else(|| Problem::not_found("call", &id))
}

/// Hang up a live call: every phone on it gets a BYE (a CANCEL while it
/// rings).
#[utoipa::path(delete, path = "/v1/calls/{id}", tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    responses((status = 204, description = "Hung up"), Errors))]
async fn hangup(
    _: Need<scope::CallsAdmin>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let k = call_id(&id)?;
    if api.relay.calls.hangup(k) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("call", &id))
    }
}
