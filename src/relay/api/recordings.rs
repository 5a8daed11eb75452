//! `/v1/recordings`: the relay's Ogg Opus recordings
//! (`RECORDINGS/DEVICE/FILE.ogg`, kept within `[recording]`'s retention by
//! `relay::retention`): list, download (streamed), delete. A device id
//! and a file name are checked against their patterns before any path is
//! built from them, so no request reaches outside the recordings
//! directory.

use super::{Api, Errors, Need, Problem, scope};
use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::task::{Context, Poll};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// A recording.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recording {
    /// The device it belongs to.
    pub device: String,
    /// Its file name.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Last written, Unix seconds.
    pub modified: i64,
}

/// Filters of the recordings list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this device's recordings.
    pub device: Option<String>,
}

pub(super) fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(download, delete))
}

/// Whether `f` may name a recording file: 1-128 of `A-Za-z0-9._-`, not
/// starting with a dot, ending in `.ogg`.
fn valid_file(f: &str) -> bool {
    (5..=128).contains(&f.len())
        && !f.starts_with('.')
        && f.ends_with(".ogg")
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn path_of(api: &Api, device: &str, file: &str) -> Result<std::path::PathBuf, Problem> {
    if !crate::pki::name::valid_device_id(device) || !valid_file(file) {
        return Err(Problem::not_found("recording", &format!("{device}/{file}")));
    }
    Ok(api.relay.recordings.join(device).join(file))
}

/// List the recordings, newest first.
#[utoipa::path(get, path = "/v1/recordings", tag = "recordings", params(ListQuery),
    responses((status = 200, description = "Recordings", body = Vec<Recording>), Errors))]
async fn list(
    _: Need<scope::RecordingsRead>,
    State(api): State<Api>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Recording>>, Problem> {
    let dir = api.relay.recordings.clone();
    let files = tokio::task::spawn_blocking(move || crate::relay::retention::list(&dir))
        .await
        .map_err(|e| Problem::internal("a recordings task failed", &e))?
        .map_err(|e| Problem::internal("cannot list the recordings", &e))?;
    let mut out: Vec<Recording> = files
        .into_iter()
        .filter_map(|f| {
            let file = f.path.file_name()?.to_str()?.to_string();
            let device = f.path.parent()?.file_name()?.to_str()?.to_string();
            let modified = f
                .modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            Some(Recording {
                device,
                file,
                bytes: f.bytes,
                modified,
            })
        })
        .filter(|r| q.device.as_deref().is_none_or(|d| d == r.device))
        .collect();
    out.sort_by(|a, b| b.modified.cmp(&a.modified).then(b.file.cmp(&a.file)));
    Ok(Json(out))
}

/// Download a recording (Ogg Opus).
#[utoipa::path(get, path = "/v1/recordings/{device}/{file}", tag = "recordings",
    params(("device" = String, Path, description = "Device id"),
           ("file" = String, Path, description = "File name")),
    responses((status = 200, description = "The recording", content_type = "audio/ogg", body = Vec<u8>), Errors))]
async fn download(
    _: Need<scope::RecordingsRead>,
    State(api): State<Api>,
    Path((device, file)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let path = path_of(&api, &device, &file)?;
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|_| Problem::not_found("recording", &format!("{device}/{file}")))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((
        [
            (header::CONTENT_TYPE, "audio/ogg".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        HttpBody::new(FileBody { file: f, left: len }),
    )
        .into_response())
}

/// Delete a recording (a write: `calls:admin`, never `recordings:read`).
#[utoipa::path(delete, path = "/v1/recordings/{device}/{file}", tag = "recordings",
    params(("device" = String, Path, description = "Device id"),
           ("file" = String, Path, description = "File name")),
    responses((status = 204, description = "Deleted"), Errors))]
async fn delete(
    _: Need<scope::CallsAdmin>,
    State(api): State<Api>,
    Path((device, file)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let path = path_of(&api, &device, &file)?;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(_) => Err(Problem::not_found("recording", &format!("{device}/{file}"))),
    }
}

/// A file as a response body, read in 64 KiB chunks, at most the length
/// announced.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
}

impl axum::body::HttpBody for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        use tokio::io::AsyncRead;
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = self.left.min(64 << 10) as usize;
        let mut buf = vec![0u8; want];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(None);
                }
                self.left -= n as u64;
                buf.truncate(n);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from(buf)))))
            }
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_cannot_leave_the_directory() {
        for good in ["1796083200-s1-f1.ogg", "a.ogg"] {
            assert!(super::valid_file(good), "{good}");
        }
        for bad in [
            "../x.ogg", ".ogg", "..ogg", "a/b.ogg", "a.wav", "a%2f.ogg", "",
        ] {
            assert!(!super::valid_file(bad), "{bad}");
        }
    }
}
