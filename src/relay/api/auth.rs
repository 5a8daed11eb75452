//! Authentication and authorization of API requests.
//!
//! Every `/v1/` route but the OpenAPI document passes [`authenticate`]:
//! the client's address (the socket's, or a trusted proxy's
//! `X-Forwarded-For`), that address's budget of failed authentications
//! (429 once spent), the bearer key (its format and checksum, then its id
//! in the registry, then the SHA-256 of its secret compared in constant
//! time, then revocation and expiry: any failure is a 401, counted in
//! `voxgate_relay_api_auth_failures_total` and audited
//! `api_auth_failed` while within the budget), then the rate limits of the
//! route's class (429 with `Retry-After`). The handler's [`Need`]
//! extractor checks the route's scope (403 without it).
//!
//! The keys are cached and read again whenever the registry changed (its
//! `data_version`, checked on every request on a handle of the API's own),
//! so a revocation by `voxgate relay api-key revoke` in another process or
//! through the API takes effect on the next request.

use super::problem::Problem;
use super::{Api, Peer};
use crate::relay::api_key::{self, Scope, Scopes};
use crate::relay::registry::{ApiKeyRow, Registry, now};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id.
    pub key: String,
    /// The key's scopes.
    pub scopes: Scopes,
    /// The client's address.
    pub addr: IpAddr,
}

impl Caller {
    /// Who did it, for the audit log's source column.
    pub fn source(&self) -> String {
        format!("{} key {}", self.addr, self.key)
    }
}

/// The key cache: the registry's keys as of its `data_version`.
#[derive(Debug)]
pub struct Keys {
    watch: Registry,
    version: Option<i64>,
    by_id: HashMap<String, ApiKeyRow>,
}

impl Keys {
    /// The cache over `watch`, a registry handle used for nothing else.
    pub fn new(watch: Registry) -> Keys {
        Keys {
            watch,
            version: None,
            by_id: HashMap::new(),
        }
    }

    /// The key `id`, as the registry holds it now.
    fn get(&mut self, id: &str) -> Option<ApiKeyRow> {
        let v = self.watch.data_version().ok();
        if v.is_none() || v != self.version {
            match self.watch.api_keys() {
                Ok(rows) => {
                    self.by_id = rows.into_iter().map(|k| (k.id.clone(), k)).collect();
                    self.version = v;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "api: cannot read the API keys");
                    self.version = None;
                    return None;
                }
            }
        }
        self.by_id.get(id).cloned()
    }
}

/// Why a request was not authenticated (for the audit log; the client is
/// told only 401).
fn check(keys: &mut Keys, header: Option<&HeaderValue>, at: i64) -> Result<ApiKeyRow, String> {
    let Some(h) = header else {
        return Err("no Authorization header".into());
    };
    let token = h
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or("not a bearer token")?;
    let parsed = api_key::parse(token.trim()).map_err(|e| e.to_string())?;
    let Some(row) = keys.get(parsed.id) else {
        return Err(format!("unknown key {}", parsed.id));
    };
    let presented = api_key::secret_hash(parsed.secret);
    if !bool::from(presented.ct_eq(&row.hash)) {
        return Err(format!("wrong secret for key {}", row.id));
    }
    match row.state(at) {
        "active" => Ok(row),
        state => Err(format!("key {} is {state}", row.id)),
    }
}

fn unauthorized() -> Response {
    let mut r = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send a valid, unrevoked, unexpired API key as `Authorization: Bearer vgk_...`",
    )
    .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The client's address of a request.
pub fn client(api: &Api, req_headers: &axum::http::HeaderMap, peer: IpAddr) -> IpAddr {
    let xff = req_headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    super::limits::client_addr(peer, xff, &api.settings.trusted_proxies)
}

/// The middleware: see the module doc.
pub async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let addr = client(&api, req.headers(), peer);
    let at = now();
    api.metrics.api_requests.inc();
    if let Some(wait) = api.lock_limiter().auth_blocked(addr, at) {
        api.metrics.api_rate_limited.inc();
        return Problem::too_many("too many failed authentications from this address", wait)
            .into_response();
    }
    let checked = {
        let mut keys = api.keys.lock().unwrap_or_else(|p| p.into_inner());
        check(&mut keys, req.headers().get(header::AUTHORIZATION), at)
    };
    let key = match checked {
        Ok(k) => k,
        Err(why) => {
            api.metrics.api_auth_failures.inc();
            if api.lock_limiter().auth_failed(addr, at) {
                api.audit("api_auth_failed", addr.to_string(), why);
            }
            return unauthorized();
        }
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let class = super::limits::route_class(req.method(), &path);
    if let Err(wait) = api.lock_limiter().admit(&class, addr, &key.id, at) {
        api.metrics.api_rate_limited.inc();
        return Problem::too_many(
            format!("the rate limit of `{class}` is reached; retry after {wait} s"),
            wait,
        )
        .into_response();
    }
    api.used(&key.id, at);
    let caller = Caller {
        key: key.id,
        scopes: key.scopes,
        addr,
    };
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let method = req.method().clone();
    let uri_path = req.uri().path().to_string();
    req.extensions_mut().insert(caller.clone());
    let r = next.run(req).await;
    if write && r.status().is_success() {
        api.audit(
            "api_request",
            caller.source(),
            format!(
                "{method} {} -> {}",
                super::problem::printable(&uri_path),
                r.status().as_u16()
            ),
        );
    }
    r
}

/// A scope, as a type (see [`Need`]).
pub trait ScopeOf: Send + Sync + 'static {
    /// The scope.
    const SCOPE: Scope;
}

macro_rules! scopes {
    ($($name:ident),*) => {
        /// The scopes as types, for [`Need`].
        pub mod scope {
            $(
                #[doc = concat!("The `", stringify!($name), "` scope.")]
                #[derive(Debug)]
                pub struct $name;
                impl super::ScopeOf for $name {
                    const SCOPE: super::Scope = super::Scope::$name;
                }
            )*
        }
    };
}
scopes!(
    CallsCreate,
    CallsAdmin,
    DevicesRead,
    DevicesWrite,
    TokensWrite,
    RecordingsRead,
    WebhooksManage,
    AuditRead,
    KeysManage
);

/// An extractor: the caller, if its key has the scope `S` (else 403).
/// Put it before the body extractor, so that a key without the scope
/// learns nothing of the body's checks.
#[derive(Debug)]
pub struct Need<S: ScopeOf>(pub Caller, pub PhantomData<S>);

impl<S: ScopeOf, St: Send + Sync> FromRequestParts<St> for Need<S> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Problem> {
        let Some(c) = parts.extensions.get::<Caller>() else {
            return Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no authenticated caller",
            ));
        };
        if !c.scopes.has(S::SCOPE) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "missing_scope",
                format!("this key lacks the `{}` scope", S::SCOPE.as_str()),
            ));
        }
        Ok(Need(c.clone(), PhantomData))
    }
}
