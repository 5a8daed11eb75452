//! The appliance daemon (`voxgate run`): microphone → relay and relay →
//! speaker.
//!
//! Threads: the capture and playback device threads (cpal), the encoder
//! thread ([`uplink`]), the decoder thread ([`downlink`]), and a small tokio
//! runtime for QUIC and the metrics endpoint. Audio never waits on the
//! network: the encoder hands datagrams to quinn without awaiting, and the
//! decoder reads a bounded channel filled by the datagram task.

pub mod downlink;
pub mod metrics;
pub mod roots;
pub mod round_trip;
pub mod runtime;
pub mod session;
pub mod uplink;

use crate::audio::capture::{self, CaptureShared};
use crate::audio::device::{self, Dir};
use crate::audio::playback::{self, PlaybackShared};
use crate::audio::ring;
use crate::codec::{OPUS_PAYLOAD_TYPE, OpusEncoder};
use crate::config::{ConfigError, GatewayConfig};
use crate::media::sender::RtpSender;
use crate::privilege::realtime;
use crate::transport::link::ConnSlot;
use crate::transport::tls;
use anyhow::{Context, Result};
use metrics::GatewayMetrics;
use session::{ClientParams, UPLINK_FLOW};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use tracing::{error, info, warn};

/// Everything checked, loaded and bound before the privilege drop.
#[derive(Debug)]
pub struct Prepared {
    /// The validated config.
    pub cfg: GatewayConfig,
    client: quinn::ClientConfig,
    roots: Arc<roots::DeviceRoots>,
    udp: std::net::UdpSocket,
    metrics: Option<std::net::TcpListener>,
    status: Option<std::os::unix::net::UnixListener>,
    identity: crate::identity::backend::LoadedIdentity,
    bridge: Option<crate::bridge::PreparedBridge>,
    landlock: f64,
}

impl Prepared {
    /// Paths the sandbox must keep writable: the TPM named in
    /// `identity.tpm` (reopened after a TPM failure) and, where the backend
    /// renews, the directories of the certificate and the key file; the
    /// directory of the roots bundle (rewritten during a root rotation).
    pub fn sandbox_paths(&self) -> Vec<std::path::PathBuf> {
        let mut v = match (&self.identity.tpm, &self.cfg.identity.tpm) {
            (Some(_), crate::identity::tpm::TpmSpec::Device(p)) => vec![p.clone()],
            _ => Vec::new(),
        };
        // Renewal rewrites the certificate, the key file and the record.
        if self.identity.renewer.is_some() {
            for f in [&self.cfg.identity.cert, &self.cfg.identity.key] {
                if let Some(d) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
                    v.push(d.to_path_buf());
                }
            }
        }
        if let Some(d) = self.roots.dir()
            && !v.iter().any(|p| p == d)
        {
            v.push(d.to_path_buf());
        }
        v
    }

    /// Directories to read after the privilege drop (the phone store's).
    pub fn sandbox_read_paths(&self) -> Vec<std::path::PathBuf> {
        self.bridge
            .as_ref()
            .map(crate::bridge::PreparedBridge::sandbox_read_paths)
            .unwrap_or_default()
    }

    /// What the privilege drop enforced, for the metrics
    /// (`voxgate_sandbox_landlock`: 0 off, 1 partially, 2 fully), which
    /// `voxgate check` reads.
    pub fn record_sandbox(&mut self, report: &crate::privilege::Report) {
        use crate::privilege::sandbox::Enforced;
        self.landlock = match report.landlock {
            Some(Enforced::Fully) => 2.0,
            Some(Enforced::Partially) => 1.0,
            Some(Enforced::Not) | None => 0.0,
        };
    }

    /// After the privilege drop: check that the TPM still holds the key
    /// (nothing to do for other backends).
    pub fn verify_identity(&self) -> Result<()> {
        self.identity
            .verify()
            .with_context(|| format!("{}: [identity]", self.cfg.file.display()))?;
        if let Some(k) = &self.identity.tpm {
            info!(tpm = %k.tpm().spec(), "TPM holds the device key");
        }
        Ok(())
    }
}

/// Validate identity, CA and devices. Errors name the config key at fault.
pub fn prepare(cfg: GatewayConfig) -> Result<Prepared> {
    let identity = crate::identity::backend::load(&cfg.device_id, &cfg.identity)
        .with_context(|| format!("{}: [identity]", cfg.file.display()))?;
    let roots = roots::DeviceRoots::load(&cfg.relay.ca)
        .with_context(|| format!("{}: key `relay.ca`", cfg.file.display()))?;
    let client = tls::client_config_with(roots.verifier(), identity.identity.as_ref())?;
    device::find(cfg.capture.device.as_deref(), Dir::Capture)
        .map_err(|e| ConfigError::invalid(&cfg.file, "capture.device", e.to_string()))?;
    if cfg.playback.enabled {
        device::find(cfg.playback.device.as_deref(), Dir::Playback)
            .map_err(|e| ConfigError::invalid(&cfg.file, "playback.device", e.to_string()))?;
    }
    info!(
        device_id = identity.identity.device_id(),
        backend = %identity.backend,
        "identity loaded"
    );
    let udp = std::net::UdpSocket::bind("[::]:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .context("cannot open a UDP socket for QUIC")?;
    let metrics = match cfg.telemetry.metrics {
        Some(addr) => Some(
            crate::telemetry::http::bind(addr)
                .with_context(|| format!("cannot bind metrics endpoint {addr}"))?,
        ),
        None => None,
    };
    // The status socket `voxgate status` reads; diagnostics only, so a
    // failure is logged, not fatal.
    let status = cfg.telemetry.status_socket().and_then(|path| {
        match crate::telemetry::http::bind_unix(&path) {
            Ok(l) => {
                info!(path = %path.display(), "status socket bound");
                Some(l)
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "no status socket: `voxgate status` needs [telemetry] metrics then");
                None
            }
        }
    });
    // The phone bridge's SIP sockets and RTP pool are bound now, as root if
    // started so, before the privilege drop.
    let bridge = match &cfg.sip {
        Some(sip) => {
            let material = crate::pki::sealed::material(
                &cfg.identity.machine_id,
                cfg.identity.serial.as_deref(),
            )?;
            Some(
                crate::bridge::prepare(sip, material)
                    .with_context(|| format!("{}: [sip]", cfg.file.display()))?,
            )
        }
        None => None,
    };
    Ok(Prepared {
        cfg,
        client,
        roots,
        udp,
        metrics,
        status,
        identity,
        bridge,
        landlock: 0.0,
    })
}

/// The capture period asked of the device for Opus frames of `frame`:
/// one callback per frame up to 20 ms, so the capture thread and the
/// encoder each wake once per frame (a 10 ms period woke both twice per
/// 20 ms frame for no gain in latency: the frame is only whole at its end).
/// Longer frames keep 20 ms periods, which bound the device buffer (two
/// periods) and so the audio lost when the capture thread is held up.
fn capture_period_ms(frame: std::time::Duration) -> u32 {
    (frame.as_millis() as u32).clamp(10, 20)
}

/// Run the gateway until `shutdown` resolves.
pub async fn run(p: Prepared, shutdown: impl Future<Output = ()>) -> Result<()> {
    let cfg = p.cfg;
    let metrics = GatewayMetrics::new();
    metrics.sandbox_landlock.set(p.landlock);
    if let Some(l) = p.metrics {
        tokio::spawn(crate::telemetry::http::serve(l, metrics.registry.clone()));
    }
    // The phones' registrations, published by the bridge task and served
    // on the status socket only (`GET /phones`).
    let phones = crate::bridge::registrations::PhonesBoard::new(p.bridge.is_some());
    if let Some(l) = p.status {
        let board = phones.clone();
        let routes = crate::telemetry::http::Routes::metrics(metrics.registry.clone())
            .with_json("/phones", Arc::new(move || board.json()));
        tokio::spawn(crate::telemetry::http::serve_unix(l, routes));
    }
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        p.udp,
        Arc::new(runtime::GatewayRuntime),
    )
    .context("cannot start QUIC on the bound socket")?;
    let stop = Arc::new(AtomicBool::new(false));
    let slot = Arc::new(ConnSlot::default());
    let ssrc = fastrand::u32(..);

    // Uplink: capture → encoder thread.
    let (cap_tx, cap_rx) = ring::ring::<{ ring::CAPTURE_RING_SAMPLES }>();
    let (cap_rings_tx, cap_rings_rx) = std::sync::mpsc::channel();
    let cap_shared = Arc::new(CaptureShared::new(
        metrics.capture_overruns.clone(),
        metrics.capture_opens.clone(),
        metrics.capture_samples.clone(),
    ));
    let up = uplink::Uplink {
        rx: cap_rx,
        new_rings: cap_rings_rx,
        capture: cap_shared.clone(),
        encoder: OpusEncoder::new(&cfg.codec)?,
        rtp: RtpSender::new(
            UPLINK_FLOW,
            OPUS_PAYLOAD_TYPE,
            ssrc,
            fastrand::u16(..),
            fastrand::u32(..),
        ),
        conn: slot.clone(),
        metrics: metrics.clone(),
        stop: stop.clone(),
    };
    let encoder = std::thread::Builder::new()
        .name("encoder".into())
        .spawn(move || {
            realtime::promote_current_thread("encoder", realtime::AUDIO_PRIORITY);
            up.run()
        })?;
    let capture = capture::start(
        cfg.capture.device.clone(),
        capture_period_ms(cfg.codec.frame),
        cap_tx,
        encoder.thread().clone(),
        cap_rings_tx,
        cap_shared.clone(),
    )?;

    // Downlink: network → decoder thread → playback.
    let (down_tx, down_rx) = std::sync::mpsc::sync_channel(256);
    let mut playback_parts = None;
    if cfg.playback.enabled {
        let (pb_tx, pb_rx) = ring::ring::<{ ring::PLAYBACK_RING_SAMPLES }>();
        let (pb_rings_tx, pb_rings_rx) = std::sync::mpsc::channel();
        let pb_shared = Arc::new(PlaybackShared {
            rate: AtomicU32::new(0),
            played: AtomicU64::new(0),
            chunk: AtomicU32::new(0),
            underruns: metrics.playback_underruns.clone(),
            opens: metrics.playback_opens.clone(),
            samples: metrics.playback_samples.clone(),
            clockless: AtomicBool::new(false),
            source_idle: AtomicBool::new(true),
        });
        let dl = downlink::Downlink {
            events: down_rx,
            tx: pb_tx,
            new_rings: pb_rings_rx,
            playback: pb_shared.clone(),
            min_delay: cfg.jitter.min_delay,
            max_delay: cfg.jitter.max_delay,
            metrics: metrics.clone(),
            stop: stop.clone(),
        };
        let decoder = std::thread::Builder::new()
            .name("decoder".into())
            .spawn(move || {
                realtime::promote_current_thread("decoder", realtime::AUDIO_PRIORITY);
                dl.run()
            })?;
        let pb = playback::start(
            cfg.playback.device.clone(),
            pb_rx,
            decoder.thread().clone(),
            pb_rings_tx,
            pb_shared,
        )?;
        playback_parts = Some((decoder, pb));
    }

    let params = ClientParams {
        address: cfg.relay.address.clone(),
        server_name: cfg.relay.server_name.clone(),
        device_id: cfg.device_id.clone(),
        ssrc,
        frame_ms: cfg.codec.frame.as_millis() as u16,
        renewal: p.identity.renewer.clone(),
        roots: p.roots.clone(),
    };
    info!(relay = %params.address, frame_ms = params.frame_ms, bitrate = cfg.codec.bitrate,
          fec = cfg.codec.fec, dtx = cfg.codec.dtx, "gateway running");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (calls, bridge) = match p.bridge {
        Some(b) => {
            let (link, ends) = crate::bridge::link();
            let mut stop = stop_rx.clone();
            let run = crate::bridge::run(
                b,
                ends,
                slot.clone(),
                cfg.codec,
                metrics.bridge.clone(),
                phones,
                async move {
                    let _ = stop.changed().await;
                },
            );
            let task = tokio::spawn(async move {
                if let Err(e) = run.await {
                    error!(error = %format!("{e:#}"), "the phone bridge stopped; phones cannot call until voxgate restarts");
                }
            });
            (Some(link), Some(task))
        }
        None => (None, None),
    };
    crate::systemd::ready("streaming to the relay");
    let watchdog = crate::systemd::spawn_watchdog();
    session::run(
        endpoint,
        p.client,
        params,
        session::Wiring {
            slot,
            down: down_tx,
            metrics: metrics.clone(),
            calls,
        },
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
    )
    .await;
    if let Some(b) = bridge
        && tokio::time::timeout(std::time::Duration::from_secs(3), b)
            .await
            .is_err()
    {
        warn!("phone bridge did not stop within 3 s");
    }
    crate::systemd::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }

    stop.store(true, Relaxed);
    drop(capture);
    encoder.thread().unpark();
    let _ = encoder.join();
    if let Some((decoder, pb)) = playback_parts {
        drop(pb);
        decoder.thread().unpark();
        let _ = decoder.join();
    }
    info!(
        captured = metrics.frames_captured.get(),
        sent = metrics.frames_sent.get(),
        unsent = metrics.frames_unsent.get(),
        "gateway stopped"
    );
    Ok(())
}
