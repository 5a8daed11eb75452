//! `/v1/webhooks`: the receivers of the relay's signed webhooks (the
//! registry's, as `voxgate relay webhook` manages them), scope
//! `webhooks:manage`: create (the secret is in this answer only), list,
//! read, update, delete, send a test, rotate the secret, list deliveries,
//! replay. Writes that queue deliveries wake the delivery worker.

use super::{Api, Body, Errors, Need, Problem, scope};
use crate::relay::registry::webhooks::{DeliveryRow, EndpointRow};
use crate::relay::webhooks::{self, Event, EventKind, policy::Target};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// An endpoint to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// The receiver's URL (https:// only; private and loopback addresses
    /// only for hosts on `[webhooks] allow_hosts`).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types it takes (empty or absent: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// A note.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub description: String,
}

/// Changes to an endpoint (what is absent stays).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// A new URL.
    pub url: Option<String>,
    /// A new event filter (empty: all).
    pub events: Option<Vec<String>>,
    /// A new note.
    pub description: Option<String>,
    /// Enable or disable it.
    pub enabled: Option<bool>,
}

/// An endpoint (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct Endpoint {
    /// Its id (`ep_…`).
    pub id: String,
    /// The receiver's URL.
    pub url: String,
    /// Event types it takes (empty: all).
    pub events: Vec<String>,
    /// The note.
    pub description: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Secrets that sign now (two during a rotation).
    pub secrets: usize,
}

impl From<EndpointRow> for Endpoint {
    fn from(e: EndpointRow) -> Self {
        Endpoint {
            id: e.id,
            url: e.url,
            events: e.events,
            description: e.description,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created: e.created,
            secrets: e.secrets,
        }
    }
}

/// An endpoint just created, or a secret just rotated: the only time the
/// secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct WithSecret {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// `whsec_…`: the receiver verifies signatures with it.
    pub secret: String,
}

/// A secret rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds the old secret still signs beside the new one (default:
    /// `[webhooks] rotation_overlap`; at most 30 days).
    #[schema(minimum = 0, maximum = 2_592_000)]
    pub overlap_s: Option<u64>,
}

/// A replay: one delivery, or every failed one of the endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// The delivery's number; absent: every failed delivery.
    pub delivery: Option<i64>,
}

/// What was queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// The message id (`webhook-id`) of a test, if one was made.
    pub message: Option<String>,
    /// Deliveries queued.
    pub deliveries: usize,
}

/// A delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delivery {
    /// Its number.
    pub id: i64,
    /// The message id (`webhook-id`), the same on every attempt.
    pub message: String,
    /// The event type.
    pub event: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The next attempt while pending, Unix milliseconds.
    pub next_at_ms: i64,
    /// The last answer's HTTP status.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Last change, Unix seconds.
    pub updated: i64,
}

impl From<DeliveryRow> for Delivery {
    fn from(d: DeliveryRow) -> Self {
        Delivery {
            id: d.id,
            message: d.event,
            event: d.kind,
            state: d.state,
            attempts: d.attempts,
            next_at_ms: d.next_at_ms,
            last_status: d.last_status,
            last_error: d.last_error,
            updated: d.updated,
        }
    }
}

/// Paging of deliveries.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// How many, newest first (1 ..= 1000, default 100).
    pub limit: Option<usize>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, remove))
        .routes(routes!(test))
        .routes(routes!(rotate))
        .routes(routes!(deliveries))
        .routes(routes!(replay))
}

fn check_url(url: &str) -> Result<(), Problem> {
    Target::parse(url)
        .map(|_| ())
        .map_err(|e| Problem::invalid("invalid_url", e.to_string()))
}

fn check_events(events: &[String]) -> Result<Vec<String>, Problem> {
    webhooks::parse_filter(events).map_err(|e| Problem::invalid("invalid_events", e))
}

fn check_description(d: &str) -> Result<(), Problem> {
    if d.chars().count() > 200 || d.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "invalid_description",
            "description: at most 200 characters, no control characters",
        ));
    }
    Ok(())
}

async fn endpoint(api: &Api, id: &str) -> Result<Endpoint, Problem> {
    let key = id.to_string();
    api.db(move |r| Ok(r.webhook_endpoint(&key)?))
        .await?
        .map(Endpoint::from)
        .ok_or_else(|| Problem::not_found("webhook endpoint", id))
}

/// Add an endpoint; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", request_body = NewEndpoint,
    responses((status = 201, description = "The endpoint and its secret (shown once)", body = WithSecret), Errors))]
async fn create(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Body(e): Body<NewEndpoint>,
) -> Result<(StatusCode, Json<WithSecret>), Problem> {
    check_url(&e.url)?;
    check_description(&e.description)?;
    let events = check_events(&e.events)?;
    let (row, secret) = api
        .db(move |r| Ok(r.webhook_endpoint_add(&e.url, &events, &e.description)?))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(WithSecret {
            endpoint: row.into(),
            secret: secret.reveal().to_string(),
        }),
    ))
}

/// List the endpoints (never a secret).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks",
    responses((status = 200, description = "Every endpoint", body = Vec<Endpoint>), Errors))]
async fn list(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
) -> Result<Json<Vec<Endpoint>>, Problem> {
    let rows = api.db(|r| Ok(r.webhook_endpoints()?)).await?;
    Ok(Json(rows.into_iter().map(Endpoint::from).collect()))
}

/// One endpoint.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint", body = Endpoint), Errors))]
async fn get(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    Ok(Json(endpoint(&api, &id).await?))
}

/// Change an endpoint: URL, event filter, note, enabled.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", request_body = EndpointPatch,
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint, changed", body = Endpoint), Errors))]
async fn update(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
    Body(p): Body<EndpointPatch>,
) -> Result<Json<Endpoint>, Problem> {
    if let Some(u) = &p.url {
        check_url(u)?;
    }
    if let Some(d) = &p.description {
        check_description(d)?;
    }
    let events = p.events.as_deref().map(check_events).transpose()?;
    let key = id.clone();
    let found = api
        .db(move |r| {
            Ok(r.webhook_endpoint_update(
                &key,
                p.url.as_deref(),
                events.as_deref(),
                p.description.as_deref(),
                p.enabled,
            )?)
        })
        .await?;
    if !found {
        return Err(Problem::not_found("webhook endpoint", &id));
    }
    Ok(Json(endpoint(&api, &id).await?))
}

/// Delete an endpoint, its secrets and its deliveries.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn remove(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let key = id.clone();
    if !api
        .db(move |r| Ok(r.webhook_endpoint_remove(&key)?))
        .await?
    {
        return Err(Problem::not_found("webhook endpoint", &id));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Send a `webhook.test` message to the endpoint (whatever its filter).
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 202, description = "The test message queued", body = Queued), Errors))]
async fn test(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    let key = id.clone();
    let message = api
        .db(move |r| {
            let test = Event::new(EventKind::Test, serde_json::json!({ "endpoint": key }));
            Ok(webhooks::emit_to(r, &test, Some(&key))?)
        })
        .await?;
    let Some(message) = message else {
        return Err(Problem::not_found("webhook endpoint", &id));
    };
    api.relay.webhooks.notify();
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            message: Some(message),
            deliveries: 1,
        }),
    ))
}

/// Make a new secret (in this answer only); the old one keeps signing
/// beside it for the overlap.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", request_body = Rotation,
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The endpoint and its new secret (shown once)", body = WithSecret), Errors))]
async fn rotate(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
    Body(rot): Body<Rotation>,
) -> Result<Json<WithSecret>, Problem> {
    let overlap = match rot.overlap_s {
        Some(s) if s > 30 * 86_400 => {
            return Err(Problem::invalid(
                "invalid_overlap",
                "overlap_s: at most 30 days",
            ));
        }
        Some(s) => s,
        None => api.relay.webhook_rotation_overlap.as_secs(),
    };
    let key = id.clone();
    let secret = api
        .db(move |r| Ok(r.webhook_rotate_secret(&key, overlap as i64)?))
        .await?
        .ok_or_else(|| Problem::not_found("webhook endpoint", &id))?;
    Ok(Json(WithSecret {
        endpoint: endpoint(&api, &id).await?,
        secret: secret.reveal().to_string(),
    }))
}

/// The endpoint's deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id"), DeliveriesQuery),
    responses((status = 200, description = "Deliveries", body = Vec<Delivery>), Errors))]
async fn deliveries(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<Delivery>>, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid("invalid_limit", "limit: 1 ..= 1000"));
    }
    endpoint(&api, &id).await?;
    let rows = api
        .db(move |r| Ok(r.webhook_deliveries(Some(&id), limit)?))
        .await?;
    Ok(Json(rows.into_iter().map(Delivery::from).collect()))
}

/// Send a delivery again (the same `webhook-id`), or every failed one.
#[utoipa::path(post, path = "/v1/webhooks/{id}/replay", tag = "webhooks", request_body = Replay,
    params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 202, description = "Deliveries queued", body = Queued), Errors))]
async fn replay(
    _: Need<scope::WebhooksManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
    Body(rep): Body<Replay>,
) -> Result<(StatusCode, Json<Queued>), Problem> {
    endpoint(&api, &id).await?;
    let key = id.clone();
    let n = api
        .db(move |r| match rep.delivery {
            Some(d) => Ok(usize::from(r.webhook_replay(d, Some(&key))?)),
            None => Ok(r.webhook_replay_failed(&key)?),
        })
        .await?;
    if rep.delivery.is_some() && n == 0 {
        return Err(Problem::not_found(
            "delivery of this endpoint",
            &rep.delivery.unwrap_or_default().to_string(),
        ));
    }
    api.relay.webhooks.notify();
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            message: None,
            deliveries: n,
        }),
    ))
}
