//! `/v1/audit`: the relay's audit log (as `voxgate relay audit --json`
//! prints it), filtered by time, device and event, the newest `limit`
//! rows oldest first.

use super::{Api, Errors, Need, Problem, scope};
use crate::relay::registry::chain::iso8601;
use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Rows returned at most.
const MAX_LIMIT: usize = 1000;

/// An audit row.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Sequence number in the hash chain (none: not chained).
    pub seq: Option<u64>,
    /// Unix seconds.
    pub ts: i64,
    /// The same, ISO 8601 UTC.
    pub time: String,
    /// Event name.
    pub event: String,
    /// Source (an address, an API key), or empty.
    pub source: String,
    /// Device id, or empty.
    pub device: String,
    /// Free text.
    pub detail: String,
}

/// Filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only rows at or after this time (Unix seconds).
    pub since: Option<i64>,
    /// Only rows about this device.
    pub device: Option<String>,
    /// Only rows of this event.
    pub event: Option<String>,
    /// At most this many rows, the newest (1 ..= 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(read))
}

/// Read the audit log.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "Rows, oldest first", body = Vec<AuditEntry>), Errors))]
async fn read(
    _: Need<scope::AuditRead>,
    State(api): State<Api>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let (since, device) = (q.since, q.device.clone());
    let rows = api
        .db(move |r| Ok(r.audit_rows(since, device.as_deref())?))
        .await?;
    let mut rows: Vec<_> = rows
        .into_iter()
        .filter(|r| q.event.as_deref().is_none_or(|e| e == r.event))
        .collect();
    let skip = rows.len().saturating_sub(limit);
    Ok(Json(
        rows.drain(skip..)
            .map(|r| AuditEntry {
                seq: r.seq,
                time: iso8601(r.ts),
                ts: r.ts,
                event: r.event,
                source: r.source,
                device: r.device,
                detail: r.detail,
            })
            .collect(),
    ))
}
