//! The API's router and its OpenAPI document, both from the handlers'
//! `#[utoipa::path]` annotations (utoipa-axum's `routes!`): a route is
//! documented by being served. Another resource joins by adding its
//! `routes()` to [`v1`].
//!
//! Layers, outside in: CORS (the configured origins, the methods the API
//! uses, `Authorization` and `Content-Type`, no credentials), problem
//! details for every error answer, the body read whole (up to the limit)
//! before routing; on `/v1/` routes
//! (not the document) authentication and rate limits.

use super::{Api, auth, problem};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::response::IntoResponse;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

/// The methods the API uses (what CORS allows).
pub const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PATCH, Method::DELETE];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "voxgate relay operator API",
        description = "Devices, enrollment tokens, calls, recordings, the audit log, webhook endpoints and API keys of a voxgate relay. Authenticate with `Authorization: Bearer vgk_...`; errors are RFC 9457 problem details.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(problem::Problem))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("vgk_<id>_<secret>_<crc>")
                    .build(),
            ),
        );
    }
}

/// Every `/v1/` resource's routes, documented.
pub fn v1() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::devices::routes())
        .merge(super::tokens::routes())
        .merge(super::recordings::routes())
        .merge(super::audit::routes())
        .merge(super::keys::routes())
        .merge(super::webhooks::routes())
        .merge(super::calls::routes())
}

/// The OpenAPI document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    v1().split_for_parts().1
}

/// The whole application: `/v1/` routes behind authentication, the
/// OpenAPI document, the fallbacks, CORS.
pub fn app(api: Api) -> Router {
    let (routes, doc) = v1().split_for_parts();
    let doc = Arc::new(doc.to_json().unwrap_or_default());
    let routes = routes.route_layer(axum::middleware::from_fn_with_state(
        api.clone(),
        auth::authenticate,
    ));
    let serve_doc = move || {
        let doc = doc.clone();
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                doc.as_ref().clone(),
            )
                .into_response()
        }
    };
    let mut app = routes
        .route("/v1/openapi.json", axum::routing::get(serve_doc))
        .with_state(api.clone())
        .layer(DefaultBodyLimit::max(api.settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            api.settings.max_body_bytes,
            problem::read_body,
        ))
        .layer(axum::middleware::from_fn(problem::problem_responses));
    let origins: Vec<HeaderValue> = api
        .settings
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if !origins.is_empty() {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        app = app.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods(METHODS.to_vec())
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .expose_headers([header::RETRY_AFTER])
                .allow_credentials(false)
                .max_age(std::time::Duration::from_secs(600)),
        );
    }
    app
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_route_and_its_errors() {
        let doc = super::document();
        let json = doc.to_json().unwrap();
        for p in [
            "/v1/devices",
            "/v1/devices/{id}",
            "/v1/devices/{id}/revoke",
            "/v1/tokens",
            "/v1/tokens/{id}",
            "/v1/recordings",
            "/v1/recordings/{device}/{file}",
            "/v1/audit",
            "/v1/api-keys",
            "/v1/api-keys/{id}",
            "/v1/api-keys/{id}/rotate",
        ] {
            assert!(doc.paths.paths.contains_key(p), "{p} missing");
        }
        assert!(json.contains("application/problem+json"));
        assert!(json.contains("\"bearer\""));
    }
}
