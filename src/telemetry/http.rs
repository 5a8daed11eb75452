//! A minimal HTTP/1.1 endpoint serving `GET /metrics` as Prometheus text,
//! on a loopback TCP address and on the status socket (a Unix socket in the
//! runtime directory, mode 0660: the service's user and group; what
//! `voxgate status` and `voxgate check` read when no TCP endpoint is
//! configured). The metrics hold no secret.
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

/// Serve the status socket until the task is dropped. Must run inside the
/// tokio runtime.
pub async fn serve_unix(listener: std::os::unix::net::UnixListener, registry: Arc<Registry>) {
    let Ok(listener) = UnixListener::from_std(listener) else {
        tracing::error!("status socket could not join the runtime");
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
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

/// Serve until the task is dropped. Must run inside the tokio runtime.
pub async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        tracing::error!("metrics listener could not join the runtime");
        return;
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    registry: &Registry,
) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or_default();
    if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
        respond(&mut stream, "200 OK", &registry.render()).await
    } else {
        respond(&mut stream, "404 Not Found", "try GET /metrics\n").await
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
