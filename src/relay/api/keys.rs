//! `/v1/api-keys`: the API's own keys, for `keys:manage` keys only
//! (the registry's, as `voxgate relay api-key` manages them): list, create
//! and rotate (the key is in that answer only), revoke.

use super::{Api, Body, Errors, Need, Problem, scope};
use crate::relay::api_key::{Scope, Scopes};
use crate::relay::registry::{ApiKeyRow, now};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A key as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// Public id.
    pub id: String,
    /// The operator's name for it.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub expires: Option<i64>,
    /// Revocation, Unix seconds.
    pub revoked: Option<i64>,
    /// Last use, Unix seconds (recorded within a second or so).
    pub last_used: Option<i64>,
}

impl ApiKey {
    fn of(k: ApiKeyRow, at: i64) -> ApiKey {
        ApiKey {
            state: k.state(at).to_string(),
            scopes: k.scopes.iter().map(|s| s.as_str().to_string()).collect(),
            id: k.id,
            name: k.name,
            created: k.created,
            expires: k.expires,
            revoked: k.revoked,
            last_used: k.last_used,
        }
    }
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A name (what uses it).
    #[schema(max_length = 100)]
    pub name: String,
    /// Its scopes (`devices:read`, ...).
    pub scopes: Vec<String>,
    /// Lifetime in seconds (none: no expiry).
    #[schema(minimum = 1)]
    pub expires_in_s: Option<u64>,
}

/// A rotation.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// Seconds the old key stays good (default a day; 0: at once).
    #[serde(default = "default_overlap")]
    #[schema(maximum = 2_592_000)]
    pub overlap_s: u64,
}

fn default_overlap() -> u64 {
    86_400
}

/// A key just made: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// Public id.
    pub id: String,
    /// The key (`vgk_...`).
    pub key: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(rotate))
}

/// List the API keys.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "Keys, newest first", body = Vec<ApiKey>), Errors))]
async fn list(
    _: Need<scope::KeysManage>,
    State(api): State<Api>,
) -> Result<Json<Vec<ApiKey>>, Problem> {
    let rows = api.db(|r| Ok(r.api_keys()?)).await?;
    let at = now();
    Ok(Json(rows.into_iter().map(|k| ApiKey::of(k, at)).collect()))
}

/// Parse scope names into a set (400 on an unknown one).
pub fn scopes_of(names: &[String]) -> Result<Scopes, Problem> {
    let mut s = Scopes::default();
    for n in names {
        let sc = Scope::parse(n).ok_or_else(|| {
            Problem::invalid(
                "invalid_scope",
                format!("unknown scope `{}`", super::problem::printable(n)),
            )
        })?;
        s = s.with(sc);
    }
    if s.is_empty() {
        return Err(Problem::invalid("invalid_scope", "give at least one scope"));
    }
    Ok(s)
}

fn created(k: crate::relay::registry::NewApiKey, scopes: Scopes) -> Json<CreatedKey> {
    Json(CreatedKey {
        id: k.id,
        key: k.secret.expose().clone(),
        scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
    })
}

/// Create an API key.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = NewKey,
    responses((status = 201, description = "The key (shown once)", body = CreatedKey), Errors))]
async fn create(
    Need(caller, _): Need<scope::KeysManage>,
    State(api): State<Api>,
    Body(k): Body<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), Problem> {
    let scopes = scopes_of(&k.scopes)?;
    if k.name.chars().count() > 100 || k.name.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "invalid_name",
            "name: at most 100 characters, no control characters",
        ));
    }
    let expires = match k.expires_in_s {
        Some(0) => {
            return Err(Problem::invalid(
                "invalid_expiry",
                "expires_in_s must be at least 1",
            ));
        }
        Some(s) => Some(now().saturating_add(i64::try_from(s).unwrap_or(i64::MAX))),
        None => None,
    };
    let name = format!("{} (by {})", k.name, caller.key);
    let made = api
        .db(move |r| Ok(r.create_api_key(&name, scopes, expires)?))
        .await?;
    Ok((StatusCode::CREATED, created(made, scopes)))
}

/// Revoke an API key (effective on its next request).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"), Errors))]
async fn revoke(
    Need(caller, _): Need<scope::KeysManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let key = id.clone();
    let by = caller.source();
    match api.db(move |r| Ok(r.revoke_api_key(&key, &by)?)).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(Problem::not_found("API key", &id)),
    }
}

/// Rotate an API key: a new key with its name, scopes and expiry; the old
/// one stays good for `overlap_s`.
#[utoipa::path(post, path = "/v1/api-keys/{id}/rotate", tag = "api-keys", request_body = Rotate,
    params(("id" = String, Path, description = "Key id")),
    responses((status = 201, description = "The new key (shown once)", body = CreatedKey), Errors))]
async fn rotate(
    Need(caller, _): Need<scope::KeysManage>,
    State(api): State<Api>,
    Path(id): Path<String>,
    Body(r): Body<Rotate>,
) -> Result<(StatusCode, Json<CreatedKey>), Problem> {
    if r.overlap_s > 30 * 86_400 {
        return Err(Problem::invalid(
            "invalid_overlap",
            "overlap_s is at most 30 days",
        ));
    }
    let key = id.clone();
    let by = caller.source();
    let made = api
        .db(move |reg| {
            let scopes = reg.api_key(&key)?.map(|k| k.scopes).unwrap_or_default();
            Ok(reg
                .rotate_api_key(&key, r.overlap_s, &by)?
                .map(|m| (m, scopes)))
        })
        .await?;
    match made {
        Some((m, scopes)) => Ok((StatusCode::CREATED, created(m, scopes))),
        None => Err(Problem::not_found("active API key", &id)),
    }
}
