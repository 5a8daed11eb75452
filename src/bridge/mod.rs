//! The phone bridge: the IO shell around the sans-IO SIP core (`sip::*`),
//! connecting the LAN's desk phones to calls on the relay connection.
//!
//! One task owns every piece of SIP state (guard, registrar, transactions,
//! calls) and is the only one that touches it; sockets and timers feed it
//! through `select!`. The media of every answered call runs in one media
//! engine task ([`media`]).
//!
//! Call flow, phone → relay: an INVITE is admitted by the guard (allowlist,
//! bans), authenticated by digest against the sealed phone store, answered
//! with 100 Trying by its transaction, and becomes `call_setup` to the relay
//! with the dialled number; `call_ringing` becomes 180, `call_answer` a 200
//! with our SDP answer, and the call's media starts; `call_end` before answer
//! becomes the mapped error response (busy 486, not found 404, timeout 408,
//! ...), after answer a BYE. BYE or CANCEL from the phone becomes `call_end`.
//!
//! Relay → phone: `call_setup` for a registered extension becomes an INVITE
//! with our offer to the phone's registered contact (sent to the address the
//! REGISTER came from: NAT-safe); 180 becomes `call_ringing`, 2xx an ACK, the
//! call's media and `call_answer`, an error response the mapped `call_end`.
//!
//! Registrations: the first binding of an extension announces it to the
//! relay (`ext_up`), the last one gone withdraws it (`ext_down`); on every
//! new relay session all registered extensions are announced again.

mod calls;
pub mod media;
pub mod metrics;
pub mod phone_store;
mod requests;
pub mod tcp;

use crate::codec::CodecConfig;
use crate::codec::telephony::PhoneCodec;
use crate::media::ports::{PortPair, PortPool};
use crate::proto::signal::{CallSignal, EndReason};
use crate::sip::SipConfig;
use crate::sip::auth::DigestServer;
use crate::sip::dialog::Dialog;
use crate::sip::guard::{AuditEvent, Cidr, Guard, GuardConfig};
use crate::sip::offer::{Codec, LocalMedia, Negotiated};
use crate::sip::registrar::{Registrar, RegistrarConfig};
use crate::sip::transaction::{Timers, Transactions, Transmit, TxKey};
use crate::sip::{Message, SipUri, Via, new_branch, new_tag};
use crate::transport::link::{CallLink, ConnSlot, FlowRoutes, LinkEvent};
use anyhow::{Context, Result};
use media::{EngineCmd, MediaEvent};
use metrics::BridgeMetrics;
use phone_store::PhoneStore;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// First flow id the bridge uses for call audio towards the relay (0 is the
/// microphone's uplink).
pub const FIRST_FLOW: u64 = 16;
/// Most calls in progress at once.
pub const MAX_CALLS: usize = 512;

/// What `voxgate run` binds for the bridge before the privilege drop.
#[derive(Debug)]
pub struct PreparedBridge {
    cfg: SipConfig,
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    pool: PortPool,
    phones: PhoneStore,
    allow: Vec<ipnet::IpNet>,
    advertise: IpAddr,
}

/// The subnets of the interfaces that carry `listen` (all of them when it is
/// unspecified; loopback only when listening on loopback).
fn interface_subnets(listen: IpAddr) -> Vec<ipnet::IpNet> {
    let mut v = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return v;
    };
    for a in addrs {
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let pair = match (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (Some(ip), Some(m)) => Some((IpAddr::V4(ip.ip()), IpAddr::V4(m.ip()))),
            _ => match (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (Some(ip), Some(m)) => Some((IpAddr::V6(ip.ip()), IpAddr::V6(m.ip()))),
                _ => None,
            },
        };
        let Some((ip, m)) = pair else { continue };
        let wanted = if listen.is_unspecified() {
            !ip.is_loopback()
        } else {
            ip == listen
        };
        if wanted && let Ok(net) = ipnet::IpNet::with_netmask(ip, m) {
            v.push(net.trunc());
        }
    }
    v
}

/// The address phones should reach us at.
fn advertise_addr(cfg: &SipConfig) -> IpAddr {
    if let Some(a) = cfg.advertise {
        return a;
    }
    if !cfg.listen.ip().is_unspecified() {
        return cfg.listen.ip();
    }
    interface_subnets(cfg.listen.ip())
        .iter()
        .map(|n| n.addr())
        .find(|ip| ip.is_ipv4())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Bind the SIP sockets and the RTP pool and open the phone store (before
/// the privilege drop). `material` seals the store.
pub fn prepare(cfg: &SipConfig, material: &crate::pki::sealed::Material) -> Result<PreparedBridge> {
    let udp = std::net::UdpSocket::bind(cfg.listen)
        .with_context(|| format!("cannot bind SIP UDP {} ([sip] listen)", cfg.listen))?;
    udp.set_nonblocking(true)?;
    let tcp = if cfg.tcp {
        let l = std::net::TcpListener::bind(cfg.listen)
            .with_context(|| format!("cannot bind SIP TCP {} ([sip] listen)", cfg.listen))?;
        l.set_nonblocking(true)?;
        Some(l)
    } else {
        None
    };
    // RTP on the SIP address (all addresses when SIP listens on all).
    let pool = PortPool::bind(cfg.listen.ip(), cfg.rtp_ports.0, cfg.rtp_ports.1)?;
    let phones = PhoneStore::load(&cfg.phones, material, &cfg.realm)?;
    let allow = cfg
        .allow
        .clone()
        .unwrap_or_else(|| interface_subnets(cfg.listen.ip()));
    if allow.is_empty() {
        warn!(
            "[sip] allow is not set and the listening interface has no subnet: no phone can register"
        );
    }
    info!(listen = %cfg.listen, tcp = cfg.tcp, rtp_ports = ?cfg.rtp_ports, phones = phones.len(),
          allow = ?allow.iter().map(ToString::to_string).collect::<Vec<_>>(), "SIP bridge bound");
    Ok(PreparedBridge {
        advertise: advertise_addr(cfg),
        cfg: cfg.clone(),
        udp,
        tcp,
        pool,
        phones,
        allow,
    })
}

/// Which side started the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The phone dialled.
    Phone,
    /// The relay called the phone.
    Relay,
}

#[derive(Debug)]
struct Call {
    origin: Origin,
    /// Our call id towards the relay (ours for phone-originated calls, the
    /// relay's for calls to a phone).
    relay_call: u32,
    /// The INVITE's transaction (server for phone-originated, client otherwise).
    invite: TxKey,
    /// Our INVITE (relay-originated calls: for CANCEL and ACK).
    our_invite: Option<Message>,
    /// The phone's INVITE (phone-originated calls: to answer it).
    their_invite: Option<Message>,
    /// The phone's signalling address and transport.
    phone: SocketAddr,
    reliable: bool,
    /// Our To tag (phone-originated calls).
    local_tag: String,
    dialog: Option<Dialog>,
    negotiated: Option<Negotiated>,
    /// Our SDP answer (phone-originated calls).
    answer_sdp: Option<Vec<u8>>,
    pair: Option<PortPair>,
    /// What our SDP announced (port, session id and version), for re-INVITEs.
    local: LocalMedia,
    up_flow: u64,
    up_ssrc: u32,
    /// Flow the relay sends this call's audio on.
    relay_flow: Option<u64>,
    /// The media engine runs this call's media.
    media: bool,
    answered: bool,
}

struct Core {
    cfg: SipConfig,
    advertise: IpAddr,
    port: u16,
    guard: Guard,
    registrar: Registrar,
    txs: Transactions,
    phones: PhoneStore,
    pool: PortPool,
    calls: HashMap<u32, Call>,
    next_call: u32,
    next_flow: u64,
    /// Relay flow → the media engine's relay input (read by the relay
    /// connection's datagram reader).
    flows: Arc<FlowRoutes>,
    /// The media engine's relay input (every call's flow routes to it).
    relay_tx: mpsc::Sender<(Instant, bytes::Bytes)>,
    /// The media engine.
    engine: mpsc::UnboundedSender<EngineCmd>,
    signals: mpsc::Sender<CallSignal>,
    relay_up: bool,
    metrics: Arc<BridgeMetrics>,
    opus: CodecConfig,
    rng: fastrand::Rng,
    /// `txs.full_refusals()` already counted in the metrics.
    tx_full_seen: u64,
}

fn secure_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    // A failing system RNG leaves zeros; tags and branches then still
    // differ by the counter mixed in by the caller's use.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

fn to_phone_codec(c: Codec) -> PhoneCodec {
    match c {
        Codec::Opus => PhoneCodec::Opus,
        Codec::G722 => PhoneCodec::G722,
        Codec::Pcmu => PhoneCodec::Pcmu,
        Codec::Pcma => PhoneCodec::Pcma,
    }
}

fn to_sip_codec(c: PhoneCodec) -> Codec {
    match c {
        PhoneCodec::Opus => Codec::Opus,
        PhoneCodec::G722 => Codec::G722,
        PhoneCodec::Pcmu => Codec::Pcmu,
        PhoneCodec::Pcma => Codec::Pcma,
    }
}

impl Core {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn local_uri(&self, user: Option<&str>) -> SipUri {
        SipUri {
            secure: false,
            user: user.map(str::to_string),
            host: self.advertise.to_string(),
            port: Some(self.port),
            params: Default::default(),
            headers: None,
        }
    }

    fn via(&self, reliable: bool) -> Via {
        let text = format!(
            "SIP/2.0/{} {}:{};branch={};rport",
            if reliable { "TCP" } else { "UDP" },
            self.advertise,
            self.port,
            new_branch(secure_bytes())
        );
        Via::parse(&text).expect("our Via is well-formed")
    }

    fn respond(&mut self, key: &TxKey, req: &Message, code: u16) {
        let mut r = Message::response_to(req, code);
        if code > 100 {
            r.set_to_tag(&new_tag(secure_bytes()));
        }
        if code == 405 {
            r.headers
                .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER");
        }
        let now = self.now();
        if let Err(e) = self.txs.send_response(now, key, r) {
            debug!(error = %e, code, "response not sent");
        }
    }

    fn send_signal(&self, s: CallSignal) {
        if self.signals.try_send(s).is_err() {
            warn!("relay connection is not keeping up; call signal dropped");
        }
    }

    fn audit(&self, events: Vec<AuditEvent>) {
        for e in events {
            match e {
                AuditEvent::NotAllowed { src } => {
                    self.metrics.sip_dropped.inc();
                    debug!(target: "audit", %src, "SIP from outside the allowed subnets dropped");
                }
                AuditEvent::AuthFailed {
                    src,
                    user,
                    failures,
                    ..
                } => {
                    self.metrics.sip_auth_failures.inc();
                    warn!(target: "audit", %src, user = %user.escape_debug(), failures, "SIP authentication failed");
                }
                AuditEvent::Flood { src } => {
                    self.metrics.sip_dropped.inc();
                    warn!(target: "audit", %src, "SIP flood: excess packets dropped");
                }
                AuditEvent::Banned { src, ban } => {
                    self.metrics.sip_bans.inc();
                    warn!(target: "audit", %src, ban_s = ban.as_secs(), "SIP source banned after repeated authentication failures");
                }
                AuditEvent::Authenticated { src, user } => {
                    debug!(target: "audit", %src, %user, "SIP authenticated");
                }
            }
        }
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        self.txs.handle_timeout(now);
        let gone = self.registrar.expire(now);
        for ext in gone {
            info!(%ext, "phone registration expired");
            self.send_signal(CallSignal::ExtDown(ext));
            self.update_registered_gauge();
        }
    }

    /// Export the transaction table's size and its 503 refusals.
    fn note_transactions(&mut self) {
        let full = self.txs.full_refusals();
        if full > self.tx_full_seen {
            if self.tx_full_seen == 0 {
                warn!(
                    capacity = self.txs.capacity(),
                    "SIP transaction table full: new requests get 503 ([sip] max_transactions)"
                );
            }
            self.metrics
                .sip_transactions_full
                .add(full - self.tx_full_seen);
            self.tx_full_seen = full;
        }
        self.metrics.sip_transactions.set(self.txs.len() as f64);
    }

    fn next_deadline(&self) -> Instant {
        let later = Instant::now() + Duration::from_secs(1);
        [self.txs.poll_timeout(), self.registrar.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(std::iter::once(later))
            .min()
            .unwrap_or(later)
    }
}

/// Run the bridge until `shutdown` resolves.
pub async fn run(
    p: PreparedBridge,
    link: CallLinkEnds,
    slot: Arc<ConnSlot>,
    opus: CodecConfig,
    metrics: Arc<BridgeMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let udp = tokio::net::UdpSocket::from_std(p.udp)?;
    let port = udp.local_addr()?.port();
    let writers = tcp::Writers::default();
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<tcp::Inbound>(256);
    let tcp_task = match p.tcp {
        Some(l) => Some(tokio::spawn(tcp::serve(
            tokio::net::TcpListener::from_std(l)?,
            writers.clone(),
            tcp_tx.clone(),
        ))),
        None => None,
    };
    let allow: Vec<Cidr> = p
        .allow
        .iter()
        .filter_map(|n| Cidr::parse(&n.to_string()).ok())
        .collect();
    let secret = crate::sip::auth::random_secret()
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let digest = DigestServer::new(
        &p.cfg.realm,
        &secret,
        Instant::now(),
        Duration::from_secs(300),
    )
    .with_algorithms(&p.cfg.digest);
    let guard = Guard::new(
        GuardConfig {
            allow,
            max_failures: p.cfg.auth_failures,
            ban: p.cfg.ban,
            max_packets: p.cfg.packets_per_source,
            ..GuardConfig::default()
        },
        digest,
    );
    let registrar = Registrar::new(RegistrarConfig {
        min_expires: p.cfg.min_expires.as_secs() as u32,
        max_expires: p.cfg.max_expires.as_secs() as u32,
        default_expires: p.cfg.max_expires.as_secs() as u32,
        ..RegistrarConfig::default()
    });
    let (media_tx, mut media_rx) = mpsc::channel::<MediaEvent>(256);
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let (relay_tx, relay_rx) = mpsc::channel(media::RELAY_QUEUE);
    let engine = media::Engine {
        cmds: engine_rx,
        events: media_tx,
        slot,
        metrics: metrics.clone(),
    };
    tokio::spawn(engine.run(relay_rx));
    let CallLinkEnds {
        signals,
        mut events,
        media,
    } = link;
    let mut core = Core {
        advertise: p.advertise,
        port,
        guard,
        registrar,
        txs: Transactions::with_capacity(Timers::default(), p.cfg.max_transactions),
        phones: p.phones,
        pool: p.pool,
        calls: HashMap::new(),
        next_call: 0,
        next_flow: FIRST_FLOW,
        flows: media,
        relay_tx,
        engine: engine_tx,
        signals,
        relay_up: false,
        metrics,
        opus,
        rng: fastrand::Rng::new(),
        tx_full_seen: 0,
        cfg: p.cfg,
    };
    info!(port, advertise = %core.advertise, "SIP bridge ready");
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = tokio::time::Instant::from_std(core.next_deadline());
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((n, src)) = r {
                    match Message::parse(&buf[..n]) {
                        Ok(m) => core.on_message(m, src, false),
                        Err(e) => {
                            core.metrics.sip_dropped.inc();
                            debug!(%src, error = %e, "malformed SIP datagram dropped");
                        }
                    }
                }
            }
            Some((src, m)) = tcp_rx.recv() => match m {
                Some(m) => core.on_message(*m, src, true),
                None => core.metrics.sip_dropped.inc(),
            },
            Some(ev) = events.recv() => core.on_link(ev),
            Some(ev) = media_rx.recv() => match ev {
                MediaEvent::Key(c, k) => {
                    if let Some(call) = core.calls.get(&c) {
                        core.send_signal(CallSignal::Dtmf { call: call.relay_call, digit: k.digit.as_char(), duration_ms: 100 });
                    }
                }
                MediaEvent::Done(_, pair) => {
                    let now = core.now();
                    core.pool.release(pair, now);
                }
            },
            _ = tokio::time::sleep_until(deadline) => core.on_timeout(),
            () = &mut shutdown => break,
        }
        while let Some(ev) = core.txs.poll_event() {
            core.on_tx_event(ev);
        }
        core.note_transactions();
        while let Some(Transmit {
            dest,
            reliable,
            bytes,
        }) = core.txs.poll_transmit()
        {
            if reliable {
                if !writers.send(dest, bytes.clone()) {
                    tokio::spawn(tcp::connect_and_send(
                        dest,
                        bytes,
                        writers.clone(),
                        tcp_tx.clone(),
                    ));
                }
            } else if let Err(e) = udp.try_send_to(&bytes, dest) {
                debug!(%dest, error = %e, "SIP datagram not sent");
            }
        }
    }
    // Hang up every call so phones do not keep talking to nobody.
    let calls: Vec<u32> = core.calls.keys().copied().collect();
    for c in calls {
        core.end_call(c, EndReason::Unavailable, true, true);
    }
    while let Some(Transmit {
        dest,
        reliable,
        bytes,
    }) = core.txs.poll_transmit()
    {
        if reliable {
            writers.send(dest, bytes);
        } else {
            let _ = udp.try_send_to(&bytes, dest);
        }
    }
    if let Some(t) = tcp_task {
        t.abort();
    }
    Ok(())
}

/// The bridge's ends of the call link (the client holds the others).
#[derive(Debug)]
pub struct CallLinkEnds {
    /// Signals to the relay.
    pub signals: mpsc::Sender<CallSignal>,
    /// Events from the relay connection.
    pub events: mpsc::Receiver<LinkEvent>,
    /// Call media routes (shared with the relay connection's datagram reader).
    pub media: Arc<FlowRoutes>,
}

/// A connected pair of link ends.
pub fn link() -> (CallLink, CallLinkEnds) {
    let (sig_tx, sig_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let routes = Arc::new(FlowRoutes::default());
    (
        CallLink {
            events: ev_tx,
            signals: sig_rx,
            media: routes.clone(),
        },
        CallLinkEnds {
            signals: sig_tx,
            events: ev_rx,
            media: routes,
        },
    )
}
