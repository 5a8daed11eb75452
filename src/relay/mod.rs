//! The cloud side: the fleet CA, the QUIC server, recordings and downlink
//! audio. `voxgate relay run` is [`run`].

pub mod admission;
#[cfg(feature = "api")]
pub mod api;
pub mod api_key;
pub mod audio_file;
pub mod audit_key;
pub mod audit_limit;
pub mod authority;
pub mod backup;
pub mod ca;
pub mod ca_key;
pub mod call_plane;
pub mod calls;
pub mod commit;
pub mod enroll;
pub mod ext_owners;
pub mod limiter;
pub mod metrics;
pub mod quota;
pub mod recorder;
pub mod registry;
pub mod retention;
pub mod roots;
pub mod rotation;
pub mod server;
pub mod server_cert;
pub mod signer;
pub mod switch;
pub mod trust;
pub mod webhooks;

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
/// The call plane's `[calls]` options: the switch's fallback, and the
/// fallback message encoded once at start (its length ends the call).
pub fn call_options(c: &crate::config::CallsSettings) -> Result<call_plane::CallOptions> {
    use crate::config::FallbackTarget;
    let mut o = call_plane::CallOptions {
        settings: switch::CallSettings {
            fallback: None,
            no_answer: c.no_answer,
        },
        message: None,
    };
    match &c.fallback {
        None => {}
        Some(FallbackTarget::Extension(e)) => {
            o.settings.fallback = Some(switch::Fallback::Extension(e.clone()));
        }
        Some(FallbackTarget::Message(path)) => {
            let packets = load_packets(path)?;
            let samples: u64 = packets.iter().map(|p| u64::from(p.1)).sum();
            if samples == 0 {
                anyhow::bail!("{}: no audio in the file", path.display());
            }
            o.settings.fallback = Some(switch::Fallback::Message {
                duration: std::time::Duration::from_micros(samples * 1000 / 48),
            });
            o.message = Some(Arc::new(packets));
        }
    }
    Ok(o)
}

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

/// Keep the trust table and the live sessions in line with the registry,
/// twice a second: reload the table (and the extension owners) when
/// another process wrote the registry (`voxgate relay revoke`, `relay
/// token create`, `relay ext release`), write the refused handshakes and
/// the accept loop's refusals to the audit log (rate-limited), and
/// close every live session whose certificate is no longer accepted (a
/// revoked device, a certificate superseded past its grace or replaced by
/// a re-enrollment). New handshakes of such certificates already fail in
/// the TLS verifier.
async fn enforce_trust(
    registry: Arc<std::sync::Mutex<registry::Registry>>,
    trust: Arc<trust::TrustTable>,
    fleet: Arc<rotation::Fleet>,
    cert: Arc<server_cert::ServerCert>,
    ctx: Arc<RelayCtx>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut seen: Option<i64> = None;
    // Refused handshakes become one `security.auth_failures` event a
    // minute at most, counting those since the last.
    let mut burst = webhooks::Burst::default();
    loop {
        tick.tick().await;
        let registry = registry.clone();
        let trust2 = trust.clone();
        let fleet2 = fleet.clone();
        let refused = trust.take_refusals();
        let limited = ctx.refusals.take();
        let ctx2 = ctx.clone();
        let refused_n: u64 = refused.iter().map(|f| 1 + f.suppressed).sum();
        let hook = burst.add(refused_n, std::time::Instant::now());
        let reloaded = tokio::task::spawn_blocking(move || {
            let r = registry.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = hook
                && let Err(e) = webhooks::emit(
                    &r,
                    &webhooks::Event::auth_failures("", "device handshake", count),
                )
            {
                tracing::warn!(error = %e, "cannot write a webhook event to the outbox");
            }
            for l in &limited {
                r.audit(l.event, &l.source, &l.device, &l.detail)?;
            }
            for f in &refused {
                let mut detail = format!("serial {}: {}", f.serial, f.why.as_str());
                if f.suppressed > 0 {
                    detail.push_str(&format!(
                        " ({} more refusals not written: rate limit)",
                        f.suppressed
                    ));
                }
                r.audit("handshake_refused", &f.source, &f.device, &detail)?;
            }
            // The head, when another process moved it (a cut tail shows
            // in the log).
            if let Err(e) = r.log_audit_head() {
                tracing::warn!(error = %e, "cannot read the audit log's head");
            }
            let version = r.data_version()?;
            let mut rotated = None;
            if seen != Some(version) || fleet2.due(registry::now()) {
                trust2.reload(&r)?;
                ctx2.ext_owners.reload(&r)?;
                rotated = fleet2.follow(&r).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot take up the new issuing CA; the relay keeps signing with the one it has");
                    None
                });
            }
            Ok::<_, registry::RegistryError>((version, rotated))
        })
        .await;
        match reloaded {
            Ok(Ok((v, rotated))) => {
                seen = Some(v);
                if let Some(fp) = rotated {
                    tracing::warn!(issuing = %fp, "the issuing CA was rotated: signing with the new one, renewing the relay certificate from it, asking devices to renew");
                    let cert = cert.clone();
                    match tokio::task::spawn_blocking(move || cert.renew()).await {
                        Ok(Ok(r)) => {
                            tracing::info!(serial = %r.served.serial, "relay certificate renewed from the new issuing CA")
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "cannot renew the relay certificate from the new issuing CA; retried by its upkeep")
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "relay certificate renewal task failed")
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the registry's trust state");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "trust reload task failed");
                continue;
            }
        }
        let at = registry::now();
        let live = ctx.live.lock().map(|l| l.clone()).unwrap_or_default();
        for (session, s) in live {
            if let Err(why) = trust.decide(&s.cert, at) {
                let device = &s.cert.device;
                tracing::warn!(%device, session, reason = why.as_str(), "closing the session: its certificate is no longer accepted");
                s.conn.close(3u32.into(), why.as_str().as_bytes());
                if let Ok(mut l) = ctx.live.lock() {
                    l.remove(&session);
                }
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
    trust: Arc<trust::TrustTable>,
    enroller: Arc<enroll::Enroller>,
    cert: Arc<server_cert::ServerCert>,
    /// The device verifier (each handshake gets its own, with its source).
    verifier: Arc<crate::transport::tls::ClientVerifier>,
    fleet: Arc<rotation::Fleet>,
    downlink: Downlink,
    calls: call_plane::CallOptions,
    udp: std::net::UdpSocket,
    /// The UDP receive buffer the kernel granted (bytes).
    udp_recv_buffer: Option<usize>,
    metrics: Option<std::net::TcpListener>,
    ext_owners: ext_owners::ExtOwners,
    /// The operator API, bound (`[api]`).
    #[cfg(feature = "api")]
    api: Option<api::Prepared>,
    /// The signer process, ended when the relay closes its socket (none
    /// when the signer is its own unit).
    #[allow(dead_code)]
    signer: Option<std::process::Child>,
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
    let key = ca::load_relay_key(state, &cfg.ca_binding)
        .with_context(|| format!("{}: the relay TLS key", cfg.file.display()))?;
    let registry = audit_key::open_registry(state, &cfg.ca_binding)
        .with_context(|| format!("cannot open the device registry in {}", state.display()))?;
    // The head at start, so that the log holds it even before the first
    // append (a tail cut while the relay was down shows against it).
    registry.log_audit_head()?;
    let trust = Arc::new(trust::TrustTable::new(cfg.superseded_grace));
    trust
        .reload(&registry)
        .context("cannot read the device registry")?;
    // The issuing CA that signs (an existing single-tier fleet's CA
    // becomes the root of a new one here, once). Its certificate only: the
    // key stays with the signer process.
    let signing = match authority::migrate_single_tier(state, &cfg.ca_binding, &registry)
        .with_context(|| format!("{}: the fleet CA", cfg.file.display()))?
    {
        Some(ca) => {
            tracing::warn!(
                issuing = ca.fingerprint(),
                "the single-tier fleet CA is now the root of a new issuing CA (devices keep their pinned fingerprint); its key is still on this machine: move it off with `voxgate relay ca export-root --out FILE`"
            );
            signer::IssuingRef {
                fingerprint: ca.fingerprint().to_string(),
                cert: ca.cert().clone(),
            }
        }
        None => {
            let row = registry
                .issuers()?
                .into_iter()
                .find(|i| i.current)
                .ok_or_else(|| anyhow::anyhow!("no issuing CA in {}", state.display()))?;
            signer::IssuingRef {
                fingerprint: row.fingerprint,
                cert: rustls::pki_types::CertificateDer::from(row.cert),
            }
        }
    };
    let (fleet_ca, signer_child) = match &cfg.signer.socket {
        Some(socket) => (signer::process::connect(socket.clone(), signing)?, None),
        None => {
            let (s, child) = signer::process::spawn(&cfg, signing)?;
            (s, Some(child))
        }
    };
    let fleet_ca: Arc<dyn signer::FleetSigner> = Arc::new(fleet_ca);
    let anchors = authority::client_anchors(state, &registry, registry::now())?;
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let material = cfg.ca_binding.material()?;
    let enroller = Arc::new(enroll::Enroller::new(
        registry.clone(),
        trust.clone(),
        fleet_ca.clone(),
        cfg.certificate_lifetime,
        enroll::EnrollLimits {
            ipv6_prefix: cfg.limits.ipv6_prefix,
            renewals_per_day: cfg.limits.renewals_per_device_day,
        },
    ));
    let ext_owners = ext_owners::ExtOwners::load(
        &registry.lock().unwrap_or_else(|p| p.into_inner()),
        enroller.commits(),
    )?;
    // The relay's certificate and its key (the sealing inputs kept for
    // the fresh keys of renewals, which run after the drop).
    let cert = server_cert::ServerCert::load(server_cert::Settings {
        state_dir: state,
        binding: &cfg.ca_binding,
        key,
        server_name: &cfg.server_name,
        lifetime: cfg.relay_cert_lifetime,
        signer: fleet_ca.clone(),
        registry: Some(registry.clone()),
    })
    .with_context(|| format!("{}: the relay certificate", cfg.file.display()))?;
    let verifier = crate::transport::tls::ClientVerifier::new(&anchors, trust.clone())?;
    let server = crate::transport::tls::server_config_with(cert.holder(), verifier.clone())?;
    let device_verifier = verifier.clone();
    // The chain and anchors as the fleet's roots and issuing CAs are now.
    let fleet = rotation::Fleet::new(
        fleet_ca,
        verifier,
        cert.clone(),
        material,
        state.clone(),
        &registry.lock().unwrap_or_else(|p| p.into_inner()),
    )
    .with_context(|| format!("{}: the fleet CA", cfg.file.display()))?;
    let downlink = load_downlink(&cfg.downlink)?;
    let calls = call_options(&cfg.calls)
        .with_context(|| format!("{}: [calls] fallback_message", cfg.file.display()))?;
    // The API's listener, certificate and registry handles, before the
    // drop (its port may be privileged, its key readable by root only).
    #[cfg(feature = "api")]
    let api = api::prepare(&cfg, cert.holder())?;
    #[cfg(not(feature = "api"))]
    if cfg.api.is_some() {
        anyhow::bail!(
            "{}: [api] is set but this voxgate was built without the operator API (cargo feature `api`); use the relay's build",
            cfg.file.display()
        );
    }
    recorder::private_dir_all(&cfg.recordings)
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
        trust,
        enroller,
        cert,
        verifier: device_verifier,
        fleet,
        downlink,
        calls,
        udp,
        udp_recv_buffer,
        metrics,
        ext_owners,
        #[cfg(feature = "api")]
        api,
        signer: signer_child,
    })
}

/// Run the relay until `shutdown` resolves.
pub async fn run(p: Prepared, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = p.cfg;
    let metrics = metrics::RelayMetrics::new();
    // A certificate past two thirds of its lifetime, or expired (a relay
    // down for months), is renewed before the first handshake.
    let mut upkeep = server_cert::Upkeep::default();
    p.cert.step(&mut upkeep, &metrics.cert_expiry).await;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(p.server),
        p.udp,
        Arc::new(quinn::TokioRuntime),
    )
    .context("cannot start QUIC on the bound socket")?;
    if let Some(l) = p.metrics {
        tokio::spawn(crate::telemetry::http::serve(l, metrics.registry.clone()));
    }
    info!(listen = %endpoint.local_addr()?, recordings = %cfg.recordings.display(),
          downlink = ?cfg.downlink, udp_recv_buffer = p.udp_recv_buffer.unwrap_or(0), "relay ready");
    crate::systemd::ready("serving devices");
    let watchdog = crate::systemd::spawn_watchdog();
    let limits = cfg.limits;
    let hooks = webhooks::Emitter::new(p.enroller.commits());
    #[cfg(feature = "api")]
    let deliveries = webhooks::worker::spawn(
        &cfg.webhooks,
        p.registry.clone(),
        p.enroller.commits(),
        hooks.wake(),
        webhooks::worker::Counts {
            delivered: metrics.webhooks_delivered.clone(),
            failed_attempts: metrics.webhooks_failed_attempts.clone(),
        },
    )?;
    let ctx = Arc::new(RelayCtx {
        webhooks: hooks,
        webhook_rotation_overlap: cfg.webhooks.rotation_overlap,
        recordings: cfg.recordings.clone(),
        downlink: p.downlink,
        calls: Arc::new(call_plane::CallPlane::new(
            metrics.clone(),
            cfg.recording.enabled,
            p.calls,
        )),
        admission: std::sync::Mutex::new(admission::Admission::new(admission::Limits {
            retry_above_per_s: limits.retry_above_per_s,
            max_handshakes: limits.max_handshakes,
            max_per_source: limits.max_per_source,
            max_enrollments: limits.max_enrollments,
            ipv6_prefix: limits.ipv6_prefix,
        })),
        origin: std::time::Instant::now(),
        refusals: Default::default(),
        ext_owners: p.ext_owners,
        recording: cfg.recording,
        rec_quota: std::sync::Mutex::new(quota::DailyQuota::new(
            cfg.recording.per_device_bytes_per_day,
        )),
        metrics,
        next_session: AtomicU64::new(1),
        trust: p.trust.clone(),
        server_cert: p.cert.holder(),
        verifier: p.verifier.clone(),
        issuing: p.fleet.issuing(),
        roots: p.fleet.notices(),
        enroller: p.enroller,
        live: Default::default(),
    });
    // Every call event to the webhooks' outbox (the sink misses none).
    {
        let hooks = ctx.webhooks.clone();
        ctx.calls.set_sink(Box::new(move |e| {
            let Some(kind) = webhooks::EventKind::parse(e.kind.name()) else {
                return;
            };
            let extra = serde_json::to_value(&e.kind).unwrap_or_default();
            hooks.emit(webhooks::Event::call(
                kind,
                &e.call.to_string(),
                &e.from,
                &e.to,
                extra,
            ));
        }));
    }
    let enforcer = tokio::spawn(enforce_trust(
        p.registry,
        p.trust,
        p.fleet,
        p.cert.clone(),
        ctx.clone(),
    ));
    let renewer = tokio::spawn(
        p.cert
            .clone()
            .maintain_from(upkeep, ctx.metrics.cert_expiry.clone()),
    );
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
    let sweeper = cfg
        .recording
        .enabled
        .then(|| tokio::spawn(sweep_recordings(ctx.clone())));
    #[cfg(feature = "api")]
    let api = p.api.map(|a| api::serve(a, ctx.clone())).transpose()?;
    server::serve(endpoint, ctx, shutdown).await;
    #[cfg(feature = "api")]
    if let Some(a) = api {
        a.stop().await;
    }
    if let Some(s) = sweeper {
        s.abort();
    }
    ticker.abort();
    enforcer.abort();
    #[cfg(feature = "api")]
    deliveries.abort();
    renewer.abort();
    crate::systemd::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    info!("relay stopped");
    Ok(())
}

/// Keep the recordings within `[recording]`'s age and size, at start and
/// every [`retention::SWEEP_EVERY`] (on the blocking pool: it lists and
/// deletes files).
async fn sweep_recordings(ctx: Arc<RelayCtx>) {
    let limits = retention::Retention {
        max_age: ctx.recording.max_age,
        max_total_bytes: ctx.recording.max_total_bytes,
    };
    let mut tick = tokio::time::interval(retention::SWEEP_EVERY);
    loop {
        tick.tick().await;
        let dir = ctx.recordings.clone();
        match tokio::task::spawn_blocking(move || retention::sweep(&dir, limits)).await {
            Ok(Ok(s)) => {
                ctx.metrics.recordings_deleted.add(s.deleted);
                ctx.metrics.recordings_bytes.set(s.kept as f64);
                if s.deleted > 0 {
                    info!(
                        deleted = s.deleted,
                        freed = s.bytes,
                        kept = s.kept,
                        "recordings past their retention deleted"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot sweep the recordings"),
            Err(e) => tracing::warn!(error = %e, "recordings sweep task failed"),
        }
    }
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
