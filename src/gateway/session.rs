//! The device's side of the relay connection: connect, say hello, open the
//! uplink flow, route downlink datagrams and control messages, and reconnect
//! with exponential backoff and jitter whenever the connection dies.
//!
//! A dead relay is noticed by QUIC's idle timeout (keep-alives every
//! 500 ms, timeout 3 s), not by a timer of our own.

use super::downlink::DownEvent;
use super::metrics::GatewayMetrics;
use crate::identity::renew::{Pending, Renewer};
use crate::media::flow;
use crate::proto::control::{Direction, FlowOpen, Hello, Message, Ping, Renew};
use crate::proto::signal::CallSignal;
use crate::transport::framed::{self, FrameReader, StreamError};
use crate::transport::link::{CallLink, ConnSlot, FlowRoutes, LinkEvent, describe};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, error, info, warn};

/// Uplink flow id chosen by the device.
pub const UPLINK_FLOW: u64 = 0;

/// Sentinel for "no downlink flow".
const NO_FLOW: u64 = u64::MAX;

/// What the client needs to know.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// `host:port` of the relay.
    pub address: String,
    /// TLS name of the relay.
    pub server_name: String,
    /// Our device id.
    pub device_id: String,
    /// SSRC of the uplink flow.
    pub ssrc: u32,
    /// Uplink frame duration.
    pub frame_ms: u16,
    /// Certificate renewal over the session, for backends that renew.
    pub renewal: Option<Arc<Renewer>>,
    /// The fleet roots the relay is checked against (root rotation).
    pub roots: Arc<super::roots::DeviceRoots>,
}

/// Where the connection delivers what it receives.
#[derive(Debug)]
pub struct Wiring {
    /// The current connection, for the encoder thread.
    pub slot: Arc<ConnSlot>,
    /// Downlink packets for the decoder thread.
    pub down: SyncSender<DownEvent>,
    /// Counters.
    pub metrics: Arc<GatewayMetrics>,
    /// The phone bridge, when SIP is on.
    pub calls: Option<CallLink>,
}

/// Why a connection attempt or a session failed (logged; the client
/// reconnects).
#[derive(Debug, Error)]
enum SessionError {
    #[error("cannot resolve {address}: {source}")]
    Resolve {
        address: String,
        source: std::io::Error,
    },
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("no answer from {0} within {CONNECT_TIMEOUT:?}")]
    NoAnswer(SocketAddr),
    #[error("handshake with {addr} failed: {}", describe(source))]
    Handshake {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(StreamError),
    #[error("bad control message from relay: {0}")]
    BadMessage(crate::proto::control::ControlError),
    #[error("relay refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("expected welcome, got {0}")]
    NotWelcome(String),
    #[error("no welcome from relay")]
    NoWelcome,
}

impl From<StreamError> for SessionError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Control(e) => SessionError::BadMessage(e),
            e => SessionError::Stream(e),
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the relay has to answer a renewal before it is retried later.
const RENEW_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Keep a connection to the relay until `shutdown` resolves.
pub async fn run(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    params: ClientParams,
    wiring: Wiring,
    shutdown: impl Future<Output = ()>,
) {
    let Wiring {
        slot,
        down,
        metrics,
        mut calls,
    } = wiring;
    tokio::pin!(shutdown);
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let attempt = async {
            let addr = resolve(&params.address).await?;
            let connecting = endpoint
                .connect_with(cfg.clone(), addr, &params.server_name)
                .map_err(|source| SessionError::Connect { addr, source })?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| SessionError::NoAnswer(addr))?
                .map_err(|source| SessionError::Handshake { addr, source })?;
            Ok::<_, SessionError>(
                session(conn, &params, &slot, &down, &metrics, calls.as_mut()).await,
            )
        };
        let outcome = tokio::select! {
            o = attempt => o,
            () = &mut shutdown => break,
        };
        slot.set(None);
        metrics.connected.set(0.0);
        if let Some(c) = calls.as_mut() {
            let _ = c.events.try_send(LinkEvent::Down);
        }
        match outcome {
            Ok(reason) => {
                warn!(relay = %params.address, reason = %reason, "relay connection lost; reconnecting")
            }
            Err(e) => {
                warn!(relay = %params.address, error = %e, retry_in_ms = backoff.as_millis() as u64, "relay unreachable")
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_MIN;
        }
        // Full jitter (AWS architecture blog): spreads a fleet's reconnects.
        let wait =
            BACKOFF_MIN / 2 + Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64));
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = &mut shutdown => break,
        }
    }
    if let Some(Some(c)) = slot.current_if_changed(&mut u64::MAX.clone()) {
        c.close(0u32.into(), b"shutdown");
    }
    endpoint.close(0u32.into(), b"shutdown");
}

async fn resolve(address: &str) -> Result<SocketAddr, SessionError> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|source| SessionError::Resolve {
            address: address.into(),
            source,
        })?
        .next()
        .ok_or_else(|| SessionError::NoAddress(address.into()))
}

/// One connected session; returns why it ended. The connection's own close
/// reason, when there is one, says more than the stream error it caused.
async fn session(
    conn: quinn::Connection,
    p: &ClientParams,
    slot: &ConnSlot,
    down: &SyncSender<DownEvent>,
    metrics: &GatewayMetrics,
    calls: Option<&mut CallLink>,
) -> String {
    let result = session_inner(&conn, p, slot, down, metrics, calls).await;
    if let Some(reason) = conn.close_reason() {
        return describe(&reason);
    }
    match result {
        Ok(()) => "closed".into(),
        Err(e) => {
            conn.close(1u32.into(), b"control error");
            e.to_string()
        }
    }
}

async fn session_inner(
    conn: &quinn::Connection,
    p: &ClientParams,
    slot: &ConnSlot,
    down: &SyncSender<DownEvent>,
    metrics: &GatewayMetrics,
    mut calls: Option<&mut CallLink>,
) -> Result<(), SessionError> {
    let (mut send, recv) = conn.open_bi().await?;
    let mut reader = FrameReader::new(recv);
    let mut caps = serde_json_core::heapless::Vec::new();
    let _ = caps.push("opus");
    let _ = caps.push("fec");
    framed::send(
        &mut send,
        &Message::Hello(Hello {
            device: &p.device_id,
            version: env!("CARGO_PKG_VERSION"),
            caps,
        }),
    )
    .await?;
    let welcome = tokio::time::timeout(
        CONNECT_TIMEOUT,
        reader.next(|m| match m {
            Message::Welcome(w) => Ok(w.session),
            Message::Error(e) => Err(SessionError::Refused {
                code: e.code.into(),
                message: e.message.into(),
            }),
            other => Err(SessionError::NotWelcome(format!("{other:?}"))),
        }),
    )
    .await
    .map_err(|_| SessionError::NoWelcome)???;
    framed::send(
        &mut send,
        &Message::FlowOpen(FlowOpen {
            flow: UPLINK_FLOW,
            dir: Direction::Up,
            ssrc: p.ssrc,
            codec: "opus",
            frame_ms: p.frame_ms,
        }),
    )
    .await?;
    slot.set(Some(conn.clone()));
    metrics.connected.set(1.0);
    metrics.connects.inc();
    info!(relay = %conn.remote_address(), session = welcome, "connected to relay; streaming");

    let down_flow = Arc::new(AtomicU64::new(NO_FLOW));
    let datagrams = tokio::spawn(read_datagrams(
        conn.clone(),
        down_flow.clone(),
        down.clone(),
        calls.as_ref().map(|c| c.media.clone()),
    ));
    let events = calls.as_ref().map(|c| c.events.clone());
    if let Some(c) = calls.as_mut() {
        // Signals queued for the last session belong to calls that are over.
        while c.signals.try_recv().is_ok() {}
        let _ = c.events.try_send(LinkEvent::Up);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ping_id = 0u64;
    let mut renewing: Option<(Pending, Instant)> = None;
    let result = loop {
        tokio::select! {
            Some(sig) = async {
                match calls.as_mut() {
                    Some(c) => c.signals.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut digit = [0u8; 4];
                framed::send(&mut send, &sig.to_message(&mut digit)).await?;
            }
            r = reader.next(|m| handle(m, &down_flow, down, metrics, events.as_ref())) => match r {
                Ok(Action::Pong(id)) => {
                    framed::send(&mut send, &Message::Pong(Ping { id })).await?;
                }
                Ok(Action::Renewed(cert)) => {
                    if let (Some(r), Some((pending, _))) = (&p.renewal, renewing.take()) {
                        commit_renewal(r.clone(), pending, cert).await;
                    }
                }
                Ok(Action::RenewRefused(why)) => {
                    if let (Some(r), Some(_)) = (&p.renewal, renewing.take()) {
                        let wait = r.postpone();
                        warn!(reason = %why, retry_in_s = wait.as_secs(), "the relay refused the certificate renewal; retrying later");
                    }
                }
                Ok(Action::RenewNow(why)) => match &p.renewal {
                    Some(r) => {
                        info!(reason = %why, "the relay asked for a certificate renewal now");
                        r.renew_now();
                    }
                    None => warn!(reason = %why, "the relay asked for a certificate renewal, but this backend does not renew over the session; re-enroll with `voxgate setup` and a re-enrollment token before the relay stops accepting this certificate"),
                },
                Ok(Action::TrustRoot { root, cross, only }) => {
                    tokio::task::spawn_blocking({
                        let roots = p.roots.clone();
                        move || take_root(&roots, &root, &cross, only)
                    });
                }
                Ok(Action::None) => {}
                Err(e) => break Err(e.into()),
            },
            _ = tick.tick() => {
                metrics.rtt.set(conn.rtt().as_secs_f64());
                ping_id += 1;
                if let Err(e) = framed::send(&mut send, &Message::Ping(Ping { id: ping_id })).await {
                    break Err(e.into());
                }
                if let Some(r) = &p.renewal {
                    if renewing.as_ref().is_some_and(|(_, t)| t.elapsed() > RENEW_ANSWER_TIMEOUT) {
                        renewing = None;
                        let wait = r.postpone();
                        warn!(retry_in_s = wait.as_secs(), "the relay did not answer the certificate renewal; retrying later");
                    } else if renewing.is_none()
                        && r.is_due()
                        && let Some(pending) = prepare_renewal(r.clone()).await
                    {
                        if let Err(e) = framed::send(&mut send, &Message::Renew(Renew { csr: &pending.csr })).await {
                            break Err(e.into());
                        }
                        info!(backend = %r.backend(), "certificate renewal requested");
                        renewing = Some((pending, Instant::now()));
                    }
                }
            }
            e = conn.closed() => break Err(e.into()),
        }
    };
    datagrams.abort();
    result
}

/// Make the next key and CSR off the async workers (a TPM creates keys
/// slowly). `None` after a failure, which is logged and retried later.
async fn prepare_renewal(r: Arc<Renewer>) -> Option<Pending> {
    let rr = r.clone();
    let result = tokio::task::spawn_blocking(move || rr.prepare())
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match result {
        Ok(p) => Some(p),
        Err(e) => {
            let wait = r.postpone();
            warn!(error = %e, retry_in_s = wait.as_secs(),
                "cannot prepare the certificate renewal; retrying later (if it keeps failing, re-enroll before the certificate expires: `voxgate setup`)");
            None
        }
    }
}

/// Store the renewed certificate and key (blocking IO off the workers).
async fn commit_renewal(r: Arc<Renewer>, pending: Pending, cert: String) {
    let rr = r.clone();
    let result = tokio::task::spawn_blocking(move || rr.commit(pending, &cert))
        .await
        .unwrap_or_else(|e| Err(e.into()));
    match result {
        Ok(serial) => info!(%serial, backend = %r.backend(),
            "certificate renewed; stored, and used from the next connection on"),
        Err(e) => {
            let wait = r.postpone();
            warn!(error = %e, retry_in_s = wait.as_secs(), "renewed certificate not stored; retrying later");
        }
    }
}

/// Apply a `trust_root` announcement and log what it did (blocking).
fn take_root(roots: &super::roots::DeviceRoots, root: &str, cross: &str, only: bool) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match roots.apply(root, cross, only, now) {
        Ok(None) => debug!(only, "the relay's fleet root is already trusted"),
        Ok(Some(a)) => {
            if only {
                info!(
                    roots = a.roots,
                    "the root rotation's overlap is over: trusting only the new fleet root"
                );
            } else {
                info!(
                    roots = a.roots,
                    "root rotation: the new fleet root is trusted beside the old one (its cross certificate verified)"
                );
            }
            if let Some(why) = a.unsaved {
                error!(error = %why, "the new fleet roots could not be stored: this device will not reach the relay after a restart once the old root is retired; make the `relay.ca` file's directory writable by the service");
            }
        }
        Err(e) => {
            warn!(error = %e, "the relay announced a fleet root that this device does not take")
        }
    }
}

/// What the session loop does after a control message.
enum Action {
    None,
    Pong(u64),
    /// A renewed certificate, base64 DER.
    Renewed(String),
    RenewRefused(String),
    /// The relay asked for a renewal now.
    RenewNow(String),
    /// The relay announced the fleet's root (root rotation).
    TrustRoot {
        root: String,
        cross: String,
        only: bool,
    },
}

/// Apply one control message.
fn handle(
    m: Message<'_>,
    down_flow: &AtomicU64,
    down: &SyncSender<DownEvent>,
    metrics: &GatewayMetrics,
    calls: Option<&tokio::sync::mpsc::Sender<LinkEvent>>,
) -> Action {
    if let Some(sig) = CallSignal::from_message(&m) {
        match calls {
            Some(tx) => {
                if tx.try_send(LinkEvent::Signal(sig)).is_err() {
                    warn!("phone bridge is not keeping up; call signal dropped");
                }
            }
            None => debug!(?sig, "call signal ignored: the phone bridge is off"),
        }
        return Action::None;
    }
    match m {
        Message::FlowOpen(f) if f.dir == Direction::Down => {
            debug!(flow = f.flow, ssrc = f.ssrc, "relay opened downlink flow");
            down_flow.store(f.flow, Relaxed);
            let _ = down.try_send(DownEvent::Open {
                frame_samples: u32::from(f.frame_ms) * 48,
            });
            Action::None
        }
        Message::FlowClose(f) => {
            if down_flow.load(Relaxed) == f.flow {
                down_flow.store(NO_FLOW, Relaxed);
            }
            Action::None
        }
        Message::Stats(s) if s.flow == UPLINK_FLOW => {
            metrics.up_lost.set(s.lost as f64);
            metrics.up_jitter.set(f64::from(s.jitter_us) / 1e6);
            Action::None
        }
        Message::Ping(p) => Action::Pong(p.id),
        Message::Renewed(e) => Action::Renewed(e.cert.to_string()),
        Message::RenewNow(r) => Action::RenewNow(r.reason.to_string()),
        Message::TrustRoot(t) => Action::TrustRoot {
            root: t.root.to_string(),
            cross: t.cross.to_string(),
            only: t.only,
        },
        Message::Error(e) if e.code == "renew_refused" => {
            Action::RenewRefused(e.message.to_string())
        }
        Message::Error(e) => {
            warn!(
                code = e.code,
                message = e.message,
                "relay reported an error"
            );
            Action::None
        }
        other => {
            debug!(?other, "ignored control message");
            Action::None
        }
    }
}

async fn read_datagrams(
    conn: quinn::Connection,
    down_flow: Arc<AtomicU64>,
    down: SyncSender<DownEvent>,
    calls: Option<Arc<FlowRoutes>>,
) {
    while let Ok(d) = conn.read_datagram().await {
        let Ok((flow_id, pkt)) = flow::decode(&d) else {
            debug!("malformed downlink datagram dropped");
            continue;
        };
        if flow_id != down_flow.load(Relaxed) {
            // Call audio: the bridge's legs take it (dropped when it lags).
            if let Some(routes) = calls.as_ref() {
                routes.route(flow_id, d);
            }
            continue;
        }
        let offset = d.len() - pkt.payload().len();
        let event = DownEvent::Packet {
            at: std::time::Instant::now(),
            seq: pkt.sequence(),
            ts: pkt.timestamp(),
            payload: d.slice(offset..offset + pkt.payload().len()),
        };
        let _ = down.try_send(event);
    }
}
