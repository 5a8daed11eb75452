//! The relay's QUIC server: admits handshakes ([`accept`]: Retry above the
//! handshake rate, caps per source and in all), authenticates devices by
//! certificate, keeps one live session per device (a new one closes the
//! old), records uplink flows to Ogg Opus when `[recording]` asks (within
//! the device's daily quota), sends audio down (echo or a file), and
//! carries calls between phones through the call plane
//! ([`super::call_plane`]), extensions checked against the registry's
//! owners ([`super::ext_owners`]). No registry lock and no commit runs on
//! an async worker: renewals and extension claims go to the blocking pool.
//!
//! Two tasks per device connection: the datagram path ([`media`]: read a
//! datagram, record, forward or echo it) and the control path (control
//! stream, call signals, once-a-second stats). Each waits on its own
//! sources only: a datagram wakes the media task alone, which polls nothing
//! but the connection's datagram queue (a task waiting on all of them in
//! one `select!` polled the control stream, the call inbox and the stats
//! timer again for every datagram). The flows they share sit behind a
//! mutex that neither holds across an `.await` (so on one thread it is
//! never contended). Bad datagrams and bad control messages are counted and
//! logged at debug level; a bad control message is answered with an error
//! and ends that session only.

mod accept;
mod echo;
mod media;

pub use accept::serve;
pub(crate) use media::play_once;

use super::metrics::RelayMetrics;
use crate::media::stats::ReceiveStats;
use crate::pki::name::CertFacts;
use crate::proto::control::{
    Direction, Enrolled, ErrorMsg, FlowOpen, Message, Ping, RenewNow, Stats, TrustRoot, Welcome,
};
use crate::proto::signal::CallSignal;
use crate::relay::registry::Claim;
use crate::transport::framed::{self, FrameReader, StreamError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use media::{Flows, UpFlow, close_flow, lock, media, open_recorder, play, recording_path};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{debug, info, warn};

/// Flow id the relay uses for the downlink.
pub const DOWNLINK_FLOW: u64 = 1;
/// Most uplink flows one device may open at once.
const MAX_FLOWS: usize = 8;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two certificate renewals of one session (each one
/// signs a certificate and writes the registry).
const RENEW_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// What the relay sends to each device.
#[derive(Debug, Clone)]
pub enum Downlink {
    /// Nothing.
    None,
    /// The device's uplink, back to it.
    Echo,
    /// Pre-encoded Opus packets (payload, 48 kHz samples), looped.
    Packets(Arc<Vec<(Vec<u8>, u32)>>),
}

/// Shared relay state.
#[derive(Debug)]
pub struct RelayCtx {
    /// Where recordings go.
    pub recordings: PathBuf,
    /// Downlink policy.
    pub downlink: Downlink,
    /// Counters.
    pub metrics: Arc<RelayMetrics>,
    /// Session numbers.
    pub next_session: AtomicU64,
    /// Which certificate each device may use (the TLS verifier's table).
    pub trust: Arc<super::trust::TrustTable>,
    /// The relay's certificate, for each handshake's TLS config.
    pub server_cert: Arc<dyn rustls::server::ResolvesServerCert>,
    /// The device verifier, made per handshake with its source address.
    pub verifier: Arc<crate::transport::tls::ClientVerifier>,
    /// Enrollment of new devices.
    pub enroller: Arc<super::enroll::Enroller>,
    /// The issuing CA that signs now.
    pub issuing: Arc<dyn super::signer::FleetSigner>,
    /// What devices are told of the fleet's roots.
    pub roots: super::rotation::Notices,
    /// Live sessions by number (for revocation and superseded
    /// certificates).
    pub live: std::sync::Mutex<HashMap<u64, LiveSession>>,
    /// Calls between phones.
    pub calls: Arc<super::call_plane::CallPlane>,
    /// Admission of new handshakes and enrollments.
    pub admission: Mutex<super::admission::Admission>,
    /// The clock admission counts from.
    pub origin: Instant,
    /// The accept loop's refusals, for the audit log (rate-limited).
    pub refusals: super::audit_limit::RefusalLog,
    /// Which device owns each extension.
    pub ext_owners: super::ext_owners::ExtOwners,
    /// Whether and how long uplinks are recorded.
    pub recording: crate::config::RecordingSettings,
    /// Bytes of recordings per device per day.
    pub rec_quota: Mutex<super::quota::DailyQuota>,
    /// Webhook events (`device.*`, `recording.ready`, `call.*`) into the
    /// outbox.
    pub webhooks: super::webhooks::Emitter,
    /// How long an old webhook secret still signs after a rotation.
    pub webhook_rotation_overlap: std::time::Duration,
}

/// A live device session: the certificate it is bound to (the one it
/// authenticated with, or the one it renewed to over this session) and its
/// connection.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// The session's certificate.
    pub cert: CertFacts,
    /// Its connection.
    pub conn: quinn::Connection,
}

/// A session after its handshake: authenticate the device by its
/// certificate, replace the device's earlier session, run it.
pub(super) async fn device_session(conn: quinn::Connection, ctx: Arc<RelayCtx>) {
    let remote = conn.remote_address();
    let Some(cert) = peer_cert(&conn) else {
        ctx.metrics.rejected.inc();
        conn.close(2u32.into(), b"certificate names no device");
        return;
    };
    let device = cert.device.clone();
    // The TLS verifier already asked the trust table; asked again here so
    // that no handshake path can skip it.
    if let Err(why) = ctx.trust.decide(&cert, super::registry::now()) {
        ctx.metrics.rejected.inc();
        info!(%device, %remote, reason = why.as_str(), "device refused");
        conn.close(3u32.into(), why.as_str().as_bytes());
        return;
    }
    let session = ctx.next_session.fetch_add(1, Relaxed);
    // One live session per device: the new one replaces the others (a box
    // that reconnected before the relay noticed the old connection die,
    // or a copy of its key that must not hold two sessions' resources).
    // A session on a certificate a renewal superseded (still in its grace:
    // a renewal in flight, or a copy of the old key) does not displace one
    // on the device's current certificate; the enforcer closes it when the
    // grace ends. So a device holds at most two sessions, briefly.
    let current = ctx.trust.is_current(&cert);
    let replaced: Vec<(u64, LiveSession)> = match ctx.live.lock() {
        Ok(mut live) => {
            let old: Vec<u64> = live
                .iter()
                .filter(|(_, s)| {
                    s.cert.device == device && (current || !ctx.trust.is_current(&s.cert))
                })
                .map(|(&k, _)| k)
                .collect();
            let old = old
                .into_iter()
                .filter_map(|k| live.remove(&k).map(|s| (k, s)))
                .collect();
            live.insert(
                session,
                LiveSession {
                    cert,
                    conn: conn.clone(),
                },
            );
            old
        }
        Err(_) => Vec::new(),
    };
    for (old, s) in replaced {
        ctx.metrics.sessions_replaced.inc();
        info!(%device, session = old, by = session, "session replaced by a newer one of the same device");
        s.conn
            .close(5u32.into(), b"replaced by a newer session of this device");
    }
    ctx.metrics.sessions.inc();
    ctx.metrics.active.set(ctx.metrics.active.get() + 1.0);
    let serial = ctx
        .live
        .lock()
        .ok()
        .and_then(|l| l.get(&session).map(|s| s.cert.serial.clone()))
        .unwrap_or_default();
    ctx.webhooks.emit(super::webhooks::Event::device_online(
        &device,
        &remote.to_string(),
        &serial,
    ));
    let reason = match run_session(&conn, &ctx, &device, session).await {
        Ok(()) => "closed".to_string(),
        Err(e) => {
            let reason = format!("protocol error: {e}");
            let end = reason.floor_char_boundary(120);
            conn.close(1u32.into(), &reason.as_bytes()[..end]);
            e.to_string()
        }
    };
    ctx.metrics.active.set(ctx.metrics.active.get() - 1.0);
    if let Ok(mut live) = ctx.live.lock() {
        live.remove(&session);
    }
    info!(%device, session, %remote, %reason, "session ended");
    // Offline only when no newer session of the device took over.
    let replaced = ctx
        .live
        .lock()
        .map(|l| l.values().any(|s| s.cert.device == device))
        .unwrap_or(false);
    if !replaced {
        ctx.webhooks
            .emit(super::webhooks::Event::device_offline(&device, &reason));
    }
}

fn peer_cert(conn: &quinn::Connection) -> Option<CertFacts> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    crate::pki::name::cert_facts(certs.first()?)
}

/// Why a device session ended with an error (logged, and the start of it
/// sent to the device as the connection's close reason).
#[derive(Debug, Error)]
pub enum SessionError {
    /// The device opened no control stream in time.
    #[error("no control stream")]
    NoControlStream,
    /// The device sent no hello in time.
    #[error("no hello")]
    NoHello,
    /// The first message was not a hello.
    #[error("expected hello, got {0}")]
    NotHello(String),
    /// The hello names another device than the certificate.
    #[error("hello claims `{claimed}`, certificate names `{device}`")]
    WrongDevice {
        /// The device the hello names.
        claimed: String,
        /// The device the certificate names.
        device: String,
    },
    /// The device sent an invalid control message.
    #[error("bad control message: {0}")]
    BadMessage(crate::proto::control::ControlError),
    /// The control stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
}

async fn run_session(
    conn: &quinn::Connection,
    ctx: &Arc<RelayCtx>,
    device: &str,
    session: u64,
) -> Result<(), SessionError> {
    let (mut send, recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| SessionError::NoControlStream)??;
    let mut reader = FrameReader::new(recv);
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        reader.next(|m| match m {
            Message::Hello(h) => Ok(h.device.to_string()),
            other => Err(SessionError::NotHello(format!("{other:?}"))),
        }),
    )
    .await
    .map_err(|_| SessionError::NoHello)??;
    let claimed = match hello {
        Ok(c) => c,
        Err(e) => {
            ctx.metrics.control_errors.inc();
            refuse_last(&mut send, "expected_hello", "first message must be hello").await;
            return Err(e);
        }
    };
    if claimed != device {
        ctx.metrics.rejected.inc();
        let _ = refuse(
            &mut send,
            "identity",
            "hello names another device than the certificate",
        )
        .await;
        return Err(SessionError::WrongDevice {
            claimed,
            device: device.into(),
        });
    }
    framed::send(
        &mut send,
        &Message::Welcome(Welcome {
            version: env!("CARGO_PKG_VERSION"),
            session,
        }),
    )
    .await?;
    info!(%device, session, remote = %conn.remote_address(), "device connected");
    let mut inbox = ctx.calls.join(session, device, conn.clone());
    let result = session_loop(
        conn,
        ctx,
        device,
        session,
        &mut send,
        &mut reader,
        &mut inbox,
    )
    .await;
    ctx.calls.leave(session);
    result
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    conn: &quinn::Connection,
    ctx: &Arc<RelayCtx>,
    device: &str,
    session: u64,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    inbox: &mut tokio::sync::mpsc::Receiver<super::switch::Signal>,
) -> Result<(), SessionError> {
    let flows = Arc::new(Mutex::new(Flows::default()));
    let down_ssrc = fastrand::u32(..);
    let mut player = None;
    if let Downlink::Packets(p) = &ctx.downlink {
        open_down(send, down_ssrc, 20).await?;
        lock(&flows).down_open = true;
        player = Some(tokio::spawn(play(
            conn.clone(),
            p.clone(),
            down_ssrc,
            ctx.metrics.clone(),
        )));
    }
    let mut datagrams = Some(tokio::spawn(media(
        conn.clone(),
        ctx.clone(),
        Arc::from(device),
        session,
        flows.clone(),
        down_ssrc,
    )));
    let result = control_loop(
        conn,
        ctx,
        device,
        session,
        send,
        reader,
        inbox,
        &flows,
        down_ssrc,
        &mut datagrams,
    )
    .await;
    if let Some(p) = player {
        p.abort();
    }
    // The media task ends with the connection; after a protocol error the
    // connection is still up, so it is stopped here (it holds the flows'
    // lock only between awaits, so they are whole).
    if let Some(d) = datagrams {
        d.abort();
        let _ = d.await;
    }
    let mut fl = lock(&flows);
    let fl = &mut *fl;
    for (_, f) in fl.up.0.drain(..).chain(fl.calls.drain()) {
        close_flow(device, f, ctx);
    }
    result
}

/// Closes the call recordings whose routes are gone.
fn close_unrouted_calls(ctx: &RelayCtx, device: &str, session: u64, flows: &Mutex<Flows>) {
    lock(flows).calls.retain(|&flow, f| {
        let keep = ctx.calls.routed(session, flow);
        if !keep {
            close_flow(device, std::mem::replace(f, UpFlow::closed()), ctx);
        }
        keep
    });
}

/// The control path: control messages, call signals and stats, until the
/// connection ends (`Ok`) or the device breaks the protocol (`Err`).
#[allow(clippy::too_many_arguments)]
async fn control_loop(
    conn: &quinn::Connection,
    ctx: &RelayCtx,
    device: &str,
    session: u64,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    inbox: &mut tokio::sync::mpsc::Receiver<super::switch::Signal>,
    flows: &Mutex<Flows>,
    down_ssrc: u32,
    datagrams: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<(), SessionError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_renewal: Option<Instant> = None;
    // The issuing CA this session was last checked against (none yet: the
    // first stats tick checks).
    let mut prompted: Option<String> = None;
    let mut told_roots: Option<Arc<super::roots::RootNotice>> = None;
    // The control stream's read lives across loop turns (re-created on
    // every turn, it would look into quinn's stream state again each time).
    let mut ctrl = std::pin::pin!(next_control(reader));
    loop {
        tokio::select! {
            // The media task ends when the connection does.
            _ = async { datagrams.as_mut().expect("guarded").await }, if datagrams.is_some() => {
                *datagrams = None;
                if conn.close_reason().is_some() {
                    return Ok(());
                }
            }
            (rd, r) = &mut ctrl => { ctrl.set(next_control(rd)); match r {
                Ok(Owned::FlowOpen { flow, ssrc, frame_ms }) => {
                    let full = {
                        let fl = lock(flows);
                        fl.up.0.len() >= MAX_FLOWS && !fl.up.contains(flow)
                    };
                    if full {
                        ctx.metrics.control_errors.inc();
                        let _ = refuse(send, "too_many_flows", "flow limit reached").await;
                        continue;
                    }
                    let path = recording_path(&ctx.recordings, device, session, flow);
                    let recorder = ctx.recording.enabled.then(|| open_recorder(&path, ssrc)).flatten();
                    let recorded = recorder.is_some();
                    let old = lock(flows).up.insert(flow, UpFlow { ssrc, stats: ReceiveStats::default(), recorder, path: path.clone() });
                    if let Some(old) = old {
                        close_flow(device, old, ctx);
                    }
                    if recorded {
                        info!(%device, flow, ssrc, recording = %path.display(), "uplink flow opened");
                    } else {
                        info!(%device, flow, ssrc, "uplink flow opened (not recorded)");
                    }
                    if matches!(ctx.downlink, Downlink::Echo) && !lock(flows).down_open {
                        open_down(send, down_ssrc, frame_ms).await?;
                        lock(flows).down_open = true;
                    }
                }
                Ok(Owned::Echo(e)) => echo::request(send, ctx, flows, e, down_ssrc).await?,
                Ok(Owned::FlowClose(flow)) => {
                    let f = lock(flows).up.remove(flow);
                    if let Some(f) = f { close_flow(device, f, ctx); }
                }
                // A box calls only as its own phones: not from an
                // extension another box owns, connected or not.
                Ok(Owned::Call(CallSignal::Setup { call, ref from, .. }))
                    if let Some(owner) = ctx.ext_owners.other_owner(device, from) =>
                {
                    info!(%device, session, call, %from, %owner, "call refused: its caller is another box's extension");
                    refuse(send, "bad_from", &format!("caller {from} is an extension of another box")).await?;
                    let mut digit = [0u8; 4];
                    let end = CallSignal::End { call, reason: crate::proto::signal::EndReason::Declined };
                    framed::send(send, &end.to_message(&mut digit)).await?;
                }
                Ok(Owned::Call(CallSignal::ExtUp(ext))) => {
                    // The registry's owner first: a box cannot take an
                    // extension another box owns, connected or not.
                    match ctx.ext_owners.claim(device, &ext).await {
                        Ok(Claim::Owned) => ctx.calls.handle(session, CallSignal::ExtUp(ext)),
                        Ok(Claim::Taken(owner)) => {
                            info!(%device, session, %ext, %owner, "extension claim refused: another box owns it");
                            refuse(send, "ext_conflict", &format!("extension {ext} belongs to another box")).await?;
                        }
                        Ok(Claim::Limit) => {
                            refuse(send, "ext_limit", &format!("at most {} extensions per box", super::switch::MAX_EXTS_PER_SESSION)).await?;
                        }
                        Err(e) => {
                            warn!(%device, session, %ext, error = %e, "cannot record the extension's owner");
                            refuse(send, "ext_unavailable", "the relay cannot record this extension now; retry later").await?;
                        }
                    }
                }
                Ok(Owned::Call(m)) => {
                    ctx.calls.handle(session, m);
                    close_unrouted_calls(ctx, device, session, flows);
                }
                Ok(Owned::Ping(id)) => {
                    framed::send(send, &Message::Pong(Ping { id })).await?;
                }
                Ok(Owned::Renew(csr)) => {
                    if last_renewal.is_some_and(|t: Instant| t.elapsed() < RENEW_MIN_INTERVAL) {
                        ctx.metrics.control_errors.inc();
                        refuse(send, "renew_refused", "renewal requested too soon after the last one").await?;
                        continue;
                    }
                    last_renewal = Some(Instant::now());
                    let source = conn.remote_address().ip().to_string();
                    let from = ctx.live.lock().ok().and_then(|l| l.get(&session).map(|s| s.cert.serial.clone())).unwrap_or_default();
                    match ctx.enroller.renew_off_workers(device, &from, &csr, &source).await {
                        Ok(signed) => {
                            // This session now stands for the new
                            // certificate: it proved the old key, and the
                            // box holds the new one.
                            if let Ok(mut l) = ctx.live.lock() && let Some(s) = l.get_mut(&session) {
                                s.cert.serial = signed.serial.clone();
                                s.cert.spki = signed.spki;
                            }
                            let cert = B64.encode(&signed.der);
                            framed::send(send, &Message::Renewed(Enrolled { cert: &cert, not_after: signed.not_after })).await?;
                        }
                        Err(why) => {
                            warn!(%device, session, reason = %why, "certificate renewal refused");
                            refuse(send, "renew_refused", "certificate renewal refused; see the relay's audit log").await?;
                        }
                    }
                }
                Ok(Owned::Ignore) => {}
                Ok(Owned::Unexpected) => {
                    ctx.metrics.control_errors.inc();
                    refuse(send, "unexpected", "message not valid from a device").await?;
                }
                Err(StreamError::Control(e)) => {
                    ctx.metrics.control_errors.inc();
                    refuse_last(send, "bad_message", &e.to_string()).await;
                    return Err(SessionError::BadMessage(e));
                }
                // The connection ended (the device left, timed out or was
                // revoked): a normal end of the session.
                Err(_) if conn.close_reason().is_some() => return Ok(()),
                Err(e) => return Err(e.into()),
            }},
            Some(sig) = inbox.recv() => {
                let mut digit = [0u8; 4];
                framed::send(send, &sig.to_message(&mut digit)).await?;
                // A call that ended elsewhere closes its recording here.
                if matches!(sig, super::switch::Signal::End { .. }) {
                    close_unrouted_calls(ctx, device, session, flows);
                }
            }
            _ = tick.tick() => {
                let stats: Vec<Stats> = lock(flows).up.0.iter().map(|&(flow, ref f)| {
                    let late = f.recorder.as_ref().map_or(0, |r| r.stats().too_late);
                    Stats { flow, received: f.stats.received(), lost: f.stats.lost(), late, jitter_us: f.stats.jitter_us() }
                }).collect();
                for s in stats {
                    if let Err(e) = framed::send(send, &Message::Stats(s)).await {
                        debug!(error = %e, "stats not sent");
                    }
                }
                // Once per issuing CA: a session on a certificate of
                // another one is asked to renew onto it.
                let current = ctx.issuing.issuing().fingerprint;
                if prompted.as_deref() != Some(current.as_str()) {
                    prompted = Some(current.clone());
                    let serial = ctx.live.lock().ok().and_then(|l| l.get(&session).map(|s| s.cert.serial.clone()));
                    let issuer = serial.and_then(|s| ctx.trust.issuer_of(device, &s));
                    if issuer.as_deref() != Some(current.as_str()) {
                        info!(%device, session, "asking the device to renew onto the new issuing CA");
                        framed::send(send, &Message::RenewNow(RenewNow { reason: "the relay's issuing CA was rotated" })).await?;
                    }
                }
                // After a root rotation: the new root, at the start and
                // whenever it changes (the overlap's end).
                let roots = ctx.roots.borrow().clone();
                if let Some(n) = roots && !told_roots.as_ref().is_some_and(|t| Arc::ptr_eq(t, &n)) {
                    framed::send(send, &Message::TrustRoot(TrustRoot { root: &n.root, cross: &n.cross, only: n.only })).await?;
                    debug!(%device, session, only = n.only, "told the device of the fleet root");
                    told_roots = Some(n);
                }
            }
        }
    }
}

/// The next control message, and the reader back for the one after.
async fn next_control(reader: &mut FrameReader) -> (&mut FrameReader, Result<Owned, StreamError>) {
    let r = reader.next(own).await;
    (reader, r)
}

/// A control message reduced to what the relay keeps (no borrows).
enum Owned {
    FlowOpen { flow: u64, ssrc: u32, frame_ms: u16 },
    Call(CallSignal),
    FlowClose(u64),
    Ping(u64),
    Renew(String),
    Echo(crate::proto::control::Echo),
    Ignore,
    Unexpected,
}

fn own(m: Message<'_>) -> Owned {
    if let Some(c) = CallSignal::from_message(&m) {
        return Owned::Call(c);
    }
    match m {
        Message::FlowOpen(FlowOpen {
            flow,
            dir: Direction::Up,
            ssrc,
            frame_ms,
            ..
        }) => Owned::FlowOpen {
            flow,
            ssrc,
            frame_ms,
        },
        Message::FlowClose(f) => Owned::FlowClose(f.flow),
        Message::Ping(p) => Owned::Ping(p.id),
        Message::Renew(r) => Owned::Renew(r.csr.to_string()),
        Message::Echo(e) => Owned::Echo(e),
        Message::Pong(_) | Message::Stats(_) => Owned::Ignore,
        _ => Owned::Unexpected,
    }
}

async fn refuse(
    send: &mut quinn::SendStream,
    code: &str,
    message: &str,
) -> Result<(), StreamError> {
    framed::send(send, &Message::Error(ErrorMsg { code, message })).await
}

/// Send a final error and let it reach the device before the connection
/// close discards the stream (bounded: a hostile device may never read).
async fn refuse_last(send: &mut quinn::SendStream, code: &str, message: &str) {
    if refuse(send, code, message).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    }
}

async fn open_down(
    send: &mut quinn::SendStream,
    ssrc: u32,
    frame_ms: u16,
) -> Result<(), SessionError> {
    framed::send(
        send,
        &Message::FlowOpen(FlowOpen {
            flow: DOWNLINK_FLOW,
            dir: Direction::Down,
            ssrc,
            codec: "opus",
            frame_ms,
        }),
    )
    .await?;
    Ok(())
}
