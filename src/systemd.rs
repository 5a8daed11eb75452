//! systemd integration: `sd_notify(3)` readiness and watchdog pings over the
//! `$NOTIFY_SOCKET` datagram socket. Written by hand: it is one datagram.
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(msg: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    // A full receiver queue must drop the message, not stall the runtime.
    sock.set_nonblocking(true)?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(true)
}

/// Tell systemd the service is ready. Returns whether anyone was told.
pub fn ready(status: &str) -> bool {
    send(&format!("READY=1\nSTATUS={status}\n")).unwrap_or(false)
}

/// Update the status line shown by `systemctl status`.
pub fn status(status: &str) {
    let _ = send(&format!("STATUS={status}\n"));
}

/// Tell systemd the service is stopping.
pub fn stopping() {
    let _ = send("STOPPING=1\n");
}

/// One watchdog ping.
pub fn watchdog_ping() {
    let _ = send("WATCHDOG=1\n");
}

/// Ping interval: half of `$WATCHDOG_USEC`, when the watchdog is on for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Ping the watchdog from the runtime at half of `$WATCHDOG_USEC`, if
/// systemd asked for it. Must be called inside the tokio runtime: a stalled
/// runtime stops the pings, and systemd restarts the service.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = watchdog_interval()?;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            watchdog_ping();
        }
    }))
}
