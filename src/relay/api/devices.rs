//! `/v1/devices`: the fleet's devices (the registry's, as `voxgate relay
//! devices` lists them) with their online state, when each was last seen,
//! its certificate's expiry and the extensions it owns; revocation (the
//! registry's, as `voxgate relay revoke`: the live session closes within a
//! second).

use super::{Api, Errors, Need, Problem, scope};
use crate::relay::registry::DeviceRow;
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

/// A device.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    /// Device id.
    pub id: String,
    /// Enrollment, Unix seconds.
    pub enrolled: i64,
    /// Whether it has a live session now.
    pub online: bool,
    /// When it was last seen online, Unix seconds (now when online).
    pub last_seen: Option<i64>,
    /// Expiry of its newest certificate, Unix seconds.
    pub cert_expires: Option<i64>,
    /// Serial of its current certificate.
    pub cert_serial: Option<String>,
    /// Revocation, Unix seconds.
    pub revoked: Option<i64>,
    /// The extensions it owns.
    pub extensions: Vec<String>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get))
        .routes(routes!(revoke))
}

fn device(
    api: &Api,
    d: DeviceRow,
    online: &HashSet<String>,
    exts: &HashMap<String, Vec<String>>,
) -> Device {
    let on = online.contains(&d.id);
    Device {
        last_seen: api.last_seen(&d.id, on),
        online: on,
        extensions: exts.get(&d.id).cloned().unwrap_or_default(),
        enrolled: d.enrolled,
        cert_expires: d.cert_expires,
        cert_serial: d.serial,
        revoked: d.revoked,
        id: d.id,
    }
}

/// The devices (and their extensions), read on the blocking pool.
async fn rows(api: &Api) -> Result<(Vec<DeviceRow>, HashMap<String, Vec<String>>), Problem> {
    api.db(|r| {
        let mut exts: HashMap<String, Vec<String>> = HashMap::new();
        for (e, d) in r.extension_owners()? {
            exts.entry(d).or_default().push(e);
        }
        Ok((r.devices()?, exts))
    })
    .await
}

/// List the devices.
#[utoipa::path(get, path = "/v1/devices", tag = "devices",
    responses((status = 200, description = "Every device", body = Vec<Device>), Errors))]
async fn list(
    _: Need<scope::DevicesRead>,
    State(api): State<Api>,
) -> Result<Json<Vec<Device>>, Problem> {
    let (devices, exts) = rows(&api).await?;
    let online = api.online();
    Ok(Json(
        devices
            .into_iter()
            .map(|d| device(&api, d, &online, &exts))
            .collect(),
    ))
}

async fn one(api: &Api, id: &str) -> Result<Device, Problem> {
    let (devices, exts) = rows(api).await?;
    let online = api.online();
    devices
        .into_iter()
        .find(|d| d.id == id)
        .map(|d| device(api, d, &online, &exts))
        .ok_or_else(|| Problem::not_found("device", id))
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device", body = Device), Errors))]
async fn get(
    _: Need<scope::DevicesRead>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Device>, Problem> {
    Ok(Json(one(&api, &id).await?))
}

/// Revoke a device: its live session closes within a second and its next
/// handshake is refused (undone only by a re-enrollment token).
#[utoipa::path(post, path = "/v1/devices/{id}/revoke", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses((status = 200, description = "The device, revoked", body = Device), Errors))]
async fn revoke(
    _: Need<scope::DevicesWrite>,
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Device>, Problem> {
    let device = id.clone();
    api.db(move |r| Ok(r.revoke(&device)?)).await?;
    Ok(Json(one(&api, &id).await?))
}
