//! `/v1/tokens`: enrollment tokens, each bound to one device id (the
//! registry's, as `voxgate relay token` makes them): create (the secret is
//! in this answer only), list (never a secret), revoke.

use super::{Api, Body, Errors, Need, Problem, scope};
use crate::relay::registry::TokenRow;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// The longest validity of a token: 30 days (as `relay token create`).
const MAX_TTL_S: u64 = 30 * 86_400;

/// A token to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// The device id it enrolls, and no other.
    pub device: String,
    /// A re-enrollment token for an enrolled id (replaces its certificates,
    /// undoes a revocation).
    #[serde(default)]
    pub reenroll: bool,
    /// Validity in seconds (1 ..= 2592000; default one day).
    #[serde(default = "default_ttl")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_s: u64,
    /// A note for the audit log.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub note: String,
}

fn default_ttl() -> u64 {
    86_400
}

/// A token just created: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// Public id.
    pub id: String,
    /// The token to give to `voxgate setup`.
    pub token: String,
    /// The device id it enrolls.
    pub device: String,
    /// A re-enrollment token.
    pub reenroll: bool,
    /// Expiry, Unix seconds.
    pub expires: i64,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    /// Public id.
    pub id: String,
    /// The device id it is bound to (none: a token of a release before
    /// binding).
    pub device: Option<String>,
    /// A re-enrollment token.
    pub reenroll: bool,
    /// `unused`, `used`, `expired` or `revoked`.
    pub state: String,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// The device that used it.
    pub used_by: Option<String>,
    /// The note.
    pub note: String,
}

impl Token {
    fn of(t: TokenRow, at: i64) -> Token {
        Token {
            state: t.state(at).to_string(),
            id: t.id,
            device: t.device,
            reenroll: t.reenroll,
            created: t.created,
            expires: t.expires,
            used_by: t.used.map(|(_, by)| by),
            note: t.note,
        }
    }
}

/// Filters of the token list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Also used, expired and revoked tokens.
    #[serde(default)]
    pub all: bool,
}

/// The ids of the tokens revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// Token ids.
    pub revoked: Vec<String>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
}

/// Create a single-use enrollment token bound to one device id.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, description = "The token (shown once)", body = CreatedToken), Errors))]
async fn create(
    _: Need<scope::TokensWrite>,
    State(api): State<Api>,
    Body(t): Body<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), Problem> {
    if !(1..=MAX_TTL_S).contains(&t.ttl_s) {
        return Err(Problem::invalid(
            "invalid_ttl",
            "ttl_s must be between 1 s and 30 days",
        ));
    }
    if t.note.chars().count() > 200 || t.note.chars().any(char::is_control) {
        return Err(Problem::invalid(
            "invalid_note",
            "note: at most 200 characters, no control characters",
        ));
    }
    let device = t.device.clone();
    let made = api
        .db(move |r| {
            let ttl = std::time::Duration::from_secs(t.ttl_s);
            Ok(r.create_token(&t.device, t.reenroll, ttl, &t.note)?)
        })
        .await?;
    let expires = crate::relay::registry::now() + t.ttl_s as i64;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: made.id,
            token: made.secret.expose().clone(),
            device,
            reenroll: t.reenroll,
            expires,
        }),
    ))
}

/// List tokens (never a secret: the relay keeps none).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(ListQuery),
    responses((status = 200, description = "Tokens, newest first", body = Vec<Token>), Errors))]
async fn list(
    _: Need<scope::TokensWrite>,
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Token>>, Problem> {
    let rows = api.db(|r| Ok(r.tokens()?)).await?;
    let at = crate::relay::registry::now();
    Ok(Json(
        rows.into_iter()
            .map(|t| Token::of(t, at))
            .filter(|t| q.all || t.state == "unused")
            .collect(),
    ))
}

/// Revoke an unused token by its id (or every unused token of a device id).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id or device id")),
    responses((status = 200, description = "The tokens revoked", body = Revoked), Errors))]
async fn revoke(
    _: Need<scope::TokensWrite>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, Problem> {
    let key = id.clone();
    let revoked = api.db(move |r| Ok(r.revoke_token(&key)?)).await?;
    if revoked.is_empty() {
        return Err(Problem::not_found("unused token", &id));
    }
    Ok(Json(Revoked { revoked }))
}
