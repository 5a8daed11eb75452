//! A minimal HTTP/1.1 endpoint serving `GET /metrics` as Prometheus text.
//!
//! Only loopback addresses are accepted (checked at config validation and
//! again here): the metrics describe the box and are not for the LAN. Each
//! request is bounded in size and time so a stuck client cannot pin a task.

use super::metrics::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
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

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
