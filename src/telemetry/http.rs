//! A minimal HTTP/1.1 endpoint serving `GET /metrics` as Prometheus text,
//! on a loopback TCP address and on the status socket (a Unix socket in the
//! runtime directory, mode 0660: the service's user and group; what
//! `voxgate status` and `voxgate check` read when no TCP endpoint is
//! configured). The status socket also serves JSON views its owner adds
//! ([`Routes::with_json`]: the gateway's `GET /phones`, the registered
//! phones); the TCP endpoint only the metrics. Neither holds a secret.
//!
//! Only loopback addresses are accepted (checked at config validation and
//! again here): the metrics describe the box and are not for the LAN. Each
//! request is bounded in size and time so a stuck client cannot pin a task.

use super::metrics::Registry;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

/// Where the gateway serves its status socket unless `[telemetry]
/// status_socket` says otherwise (systemd's `RuntimeDirectory=voxgate`);
/// used only when that directory exists.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/voxgate/status.sock";

/// Bind the status socket at `path` (before the privilege drop, outside any
/// runtime), mode 0660. A socket file left by a process that is gone is
/// replaced; one that answers is not (another daemon serves it).
pub fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// What an endpoint answers besides `GET /metrics`: JSON views, each
/// rendered by its producer (the status socket's `GET /phones`).
#[derive(Clone)]
pub struct Routes {
    registry: Arc<Registry>,
    json: Vec<(&'static str, JsonView)>,
}

/// A producer of one JSON document, called for each request.
pub type JsonView = Arc<dyn Fn() -> Arc<str> + Send + Sync>;

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field(
                "json",
                &self.json.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Routes {
    /// `GET /metrics` from `registry`, nothing else.
    pub fn metrics(registry: Arc<Registry>) -> Routes {
        Routes {
            registry,
            json: Vec::new(),
        }
    }

    /// Also `GET path` (e.g. `/phones`), answered with what `view` gives.
    pub fn with_json(mut self, path: &'static str, view: JsonView) -> Routes {
        self.json.push((path, view));
        self
    }

    /// The answer to a request line: status, content type, body.
    fn answer(&self, line: &[u8]) -> (&'static str, &'static str, Arc<str>) {
        let target = line
            .strip_prefix(b"GET ")
            .and_then(|r| r.split(|&b| b == b' ').next())
            .unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        if path == b"/metrics" {
            return (
                "200 OK",
                "text/plain; version=0.0.4",
                self.registry.render().into(),
            );
        }
        if let Some((_, view)) = self.json.iter().find(|(p, _)| p.as_bytes() == path) {
            return ("200 OK", "application/json", view());
        }
        let mut known = String::from("try GET /metrics");
        for (p, _) in &self.json {
            known.push_str(&format!(" or GET {p}"));
        }
        known.push('\n');
        ("404 Not Found", "text/plain", known.into())
    }
}

/// Serve the status socket until the task is dropped: `GET /metrics` and
/// the JSON views of `routes`. Must run inside the tokio runtime.
pub async fn serve_unix(listener: std::os::unix::net::UnixListener, routes: Routes) {
    let Ok(listener) = UnixListener::from_std(listener) else {
        tracing::error!("status socket could not join the runtime");
        return;
    };
    let l = &listener;
    accept_loop(|| async move { l.accept().await.map(|(s, _)| s) }, routes).await;
}

/// Accept connections from `accept` and answer each in a task of its own,
/// bounded in time.
async fn accept_loop<S, F, Fut>(mut accept: F, routes: Routes)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let routes = Arc::new(routes);
    loop {
        let Ok(stream) = accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &routes)).await;
        });
    }
}

const MAX_REQUEST: usize = 2048;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Bind the metrics listener (before the privilege drop, outside any
/// runtime). Fails for non-loopback addresses.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("metrics endpoint {addr} is not a loopback address; use 127.0.0.1 or [::1]"),
        ));
    }
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve `GET /metrics` until the task is dropped (the loopback TCP
/// endpoint: the metrics only). Must run inside the tokio runtime.
pub async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        tracing::error!("metrics listener could not join the runtime");
        return;
    };
    let l = &listener;
    accept_loop(
        || async move { l.accept().await.map(|(s, _)| s) },
        Routes::metrics(registry),
    )
    .await;
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    routes: &Routes,
) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, kind, body) = routes.answer(line);
    respond(&mut stream, status, kind, &body).await
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_answer_metrics_json_views_and_404() {
        let mut reg = Registry::default();
        reg.counter("voxgate_test_total", "a test counter").add(3);
        let routes = Routes::metrics(Arc::new(reg))
            .with_json("/phones", Arc::new(|| Arc::from("{\"phones\":[]}\n")));
        let (status, kind, body) = routes.answer(b"GET /metrics HTTP/1.1");
        assert_eq!((status, kind), ("200 OK", "text/plain; version=0.0.4"));
        assert!(body.contains("voxgate_test_total 3"), "{body}");
        assert_eq!(routes.answer(b"GET /metrics?x=1 HTTP/1.1").0, "200 OK");
        let (status, kind, body) = routes.answer(b"GET /phones HTTP/1.1");
        assert_eq!((status, kind), ("200 OK", "application/json"));
        assert_eq!(&*body, "{\"phones\":[]}\n");
        for line in [
            &b"GET /phones/x HTTP/1.1"[..],
            b"POST /phones HTTP/1.1",
            b"GET /",
            b"",
        ] {
            let (status, _, body) = routes.answer(line);
            assert_eq!(status, "404 Not Found");
            assert!(body.contains("GET /metrics or GET /phones"), "{body}");
        }
        // The TCP endpoint's routes: the metrics only.
        let plain = Routes::metrics(Arc::new(Registry::default()));
        assert_eq!(plain.answer(b"GET /phones HTTP/1.1").0, "404 Not Found");
    }
}
