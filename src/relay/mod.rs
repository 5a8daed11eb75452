//! The cloud side: the fleet CA, the QUIC server, recordings and downlink
//! audio. `voxgate relay run` is [`run`].

pub mod audio_file;
pub mod backup;
pub mod ca;
pub mod call_plane;
pub mod commit;
pub mod enroll;
pub mod limiter;
pub mod metrics;
pub mod recorder;
pub mod registry;
pub mod server;
pub mod switch;

use crate::codec::CodecConfig;
use crate::codec::OpusEncoder;
use crate::config::{DownlinkMode, RelayConfig};
use anyhow::{Context, Result};
use server::{Downlink, RelayCtx};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tracing::info;

/// Load the downlink file into Opus packets once, at start-up.
pub fn load_downlink(mode: &DownlinkMode) -> Result<Downlink> {
    Ok(match mode {
        DownlinkMode::None => Downlink::None,
        DownlinkMode::Echo => Downlink::Echo,
        DownlinkMode::File(path) => Downlink::Packets(Arc::new(load_packets(path)?)),
    })
}

fn load_packets(path: &Path) -> Result<Vec<(Vec<u8>, u32)>> {
    let is_wav = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
    if is_wav {
        let pcm = audio_file::read_wav_mono_48k(path)?;
        let cfg = CodecConfig::default();
        let mut enc = OpusEncoder::new(&cfg)?;
        return Ok(pcm
            .chunks_exact(960)
            .filter_map(|f| enc.encode(f).ok().map(|p| (p.to_vec(), 960)))
            .collect());
    }
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut reader = audio_file::OggOpusReader::open(std::io::BufReader::new(file))
        .with_context(|| format!("{}", path.display()))?;
    let mut packets = Vec::new();
    while let Some(p) = reader
        .next_packet()
        .with_context(|| format!("{}", path.display()))?
    {
        packets.push(p);
    }
    Ok(packets)
}

/// Load the revocation list from the registry.
fn refresh_revoked(
    registry: &registry::Registry,
    revoked: &crate::transport::tls::Revoked,
) -> Result<Vec<String>> {
    let now: std::collections::HashSet<String> = registry.revoked_devices()?.into_iter().collect();
    let mut set = revoked
        .write()
        .map_err(|_| anyhow::anyhow!("revocation list lock poisoned"))?;
    let added: Vec<String> = now.difference(&set).cloned().collect();
    *set = now;
    Ok(added)
}

/// Poll the registry (written by `voxgate relay revoke` from another
/// process) twice a second; close live sessions of newly revoked devices.
/// New handshakes of revoked devices already fail in the TLS verifier.
async fn enforce_revocations(
    registry: Arc<std::sync::Mutex<registry::Registry>>,
    revoked: crate::transport::tls::Revoked,
    ctx: Arc<RelayCtx>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let added = match registry
            .lock()
            .map_err(|_| anyhow::anyhow!("registry lock poisoned"))
            .and_then(|r| refresh_revoked(&r, &revoked))
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read revocations");
                continue;
            }
        };
        if added.is_empty() {
            continue;
        }
        let live = ctx.live.lock().map(|l| l.clone()).unwrap_or_default();
        for (session, (device, conn)) in live {
            if added.contains(&device) {
                tracing::warn!(%device, session, "device revoked; closing its connection");
                conn.close(3u32.into(), b"device revoked");
            }
        }
    }
}

/// Everything loaded and bound before the privilege drop.
#[derive(Debug)]
pub struct Prepared {
    /// The validated config.
    pub cfg: RelayConfig,
    server: quinn::ServerConfig,
    registry: Arc<std::sync::Mutex<registry::Registry>>,
    revoked: crate::transport::tls::Revoked,
    enroller: Arc<enroll::Enroller>,
    downlink: Downlink,
    udp: std::net::UdpSocket,
    /// The UDP receive buffer the kernel granted (bytes).
    udp_recv_buffer: Option<usize>,
    metrics: Option<std::net::TcpListener>,
}

/// The receive buffer the relay asks for on its QUIC socket. Thousands of
/// devices' datagrams queue there while the relay's thread is busy or
/// descheduled; the Linux default (`net.core.rmem_default`, often 208 KiB)
/// holds about 1,500 small datagrams (their kernel accounting is about
/// 1 KiB each), 10 ms of 3,000 streams, and the kernel drops the rest.
/// 8 MiB holds about 50 ms of them. Asked for before the privilege drop, so
/// that `SO_RCVBUFFORCE` may exceed `net.core.rmem_max`.
pub const UDP_RECV_BUFFER: usize = 8 << 20;

/// Load the CA, certificate and key, the downlink file, create the
/// recordings directory and bind the sockets.
pub fn prepare(cfg: RelayConfig) -> Result<Prepared> {
    let state = &cfg.state_dir;
    let ca_path = state.join(ca::CA_CERT);
    if !ca_path.exists() {
        anyhow::bail!(
            "no fleet CA in {}; run `voxgate relay init --config {}` first",
            state.display(),
            cfg.file.display()
        );
    }
    let ca = crate::pki::files::read_certs(&ca_path)?;
    let chain = crate::pki::files::read_certs(&state.join(ca::RELAY_CERT))?;
    let key = ca::load_relay_key(state, &cfg.ca_binding)
        .with_context(|| format!("{}: the relay TLS key", cfg.file.display()))?;
    let registry = registry::Registry::open(&state.join(ca::REGISTRY))
        .with_context(|| format!("cannot open the device registry in {}", state.display()))?;
    let revoked: crate::transport::tls::Revoked = Default::default();
    refresh_revoked(&registry, &revoked)?;
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let ca_pem = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("cannot read {}", ca_path.display()))?;
    let ca_key = ca::load_ca_key(state, &cfg.ca_binding)
        .with_context(|| format!("{}: the fleet CA key", cfg.file.display()))?;
    let enroller = Arc::new(
        enroll::Enroller::new(registry.clone(), &ca_pem, ca_key, cfg.certificate_lifetime)
            .context("the fleet CA certificate does not parse")?,
    );
    let server = crate::transport::tls::server_config(&ca, chain, key, revoked.clone())?;
    let downlink = load_downlink(&cfg.downlink)?;
    std::fs::create_dir_all(&cfg.recordings)
        .with_context(|| format!("cannot create recordings dir {}", cfg.recordings.display()))?;
    let udp = std::net::UdpSocket::bind(cfg.listen)
        .with_context(|| format!("cannot bind UDP {}", cfg.listen))?;
    let udp_recv_buffer = grow_recv_buffer(&udp, UDP_RECV_BUFFER).ok();
    let metrics = match cfg.telemetry.metrics {
        Some(addr) => Some(
            crate::telemetry::http::bind(addr)
                .with_context(|| format!("cannot bind metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    Ok(Prepared {
        cfg,
        server,
        registry,
        revoked,
        enroller,
        downlink,
        udp,
        udp_recv_buffer,
        metrics,
    })
}

/// Run the relay until `shutdown` resolves.
pub async fn run(p: Prepared, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = p.cfg;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(p.server),
        p.udp,
        Arc::new(quinn::TokioRuntime),
    )
    .context("cannot start QUIC on the bound socket")?;
    let metrics = metrics::RelayMetrics::new();
    if let Some(l) = p.metrics {
        tokio::spawn(crate::telemetry::http::serve(l, metrics.registry.clone()));
    }
    info!(listen = %endpoint.local_addr()?, recordings = %cfg.recordings.display(),
          downlink = ?cfg.downlink, udp_recv_buffer = p.udp_recv_buffer.unwrap_or(0), "relay ready");
    crate::systemd::ready("serving devices");
    let watchdog = crate::systemd::spawn_watchdog();
    let ctx = Arc::new(RelayCtx {
        recordings: cfg.recordings.clone(),
        downlink: p.downlink,
        calls: call_plane::CallPlane::new(metrics.clone()),
        metrics,
        next_session: AtomicU64::new(1),
        revoked: p.revoked.clone(),
        enroller: p.enroller,
        live: Default::default(),
    });
    let enforcer = tokio::spawn(enforce_revocations(p.registry, p.revoked, ctx.clone()));
    let ticker = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                t.tick().await;
                ctx.calls.tick();
            }
        })
    };
    server::serve(endpoint, ctx, shutdown).await;
    ticker.abort();
    enforcer.abort();
    crate::systemd::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("relay stopped");
    Ok(())
}

/// Asks for a receive buffer of `bytes` on `sock` and returns what the
/// kernel granted (its own accounting: about twice the request).
/// `SO_RCVBUFFORCE` (root, or `CAP_NET_ADMIN`) may exceed
/// `net.core.rmem_max`; without the privilege the request is capped there.
pub fn grow_recv_buffer(sock: &std::net::UdpSocket, bytes: usize) -> std::io::Result<usize> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &bytes).is_err() {
        setsockopt(sock, sockopt::RcvBuf, &bytes)?;
    }
    Ok(getsockopt(sock, sockopt::RcvBuf)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_buffer_grows() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::RcvBuf).unwrap();
        let got = grow_recv_buffer(&s, 4 << 20).unwrap();
        if nix::unistd::geteuid().is_root() {
            // SO_RCVBUFFORCE: the whole request, doubled by the kernel.
            assert!(got >= 8 << 20, "granted {got}");
        } else {
            assert!(got >= before, "granted {got}, had {before}");
        }
    }
}
