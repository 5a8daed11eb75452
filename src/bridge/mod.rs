//! The phone bridge: the IO shell around the sans-IO SIP core (`sip::*`),
//! connecting the LAN's desk phones to calls on the relay connection.
//!
//! One task owns every piece of SIP state (guard, registrar, transactions,
//! calls) and is the only one that touches it; sockets and timers feed it
//! through `select!`. Each answered call has a media task ([`media`]).
//!
//! Call flow, phone → relay: an INVITE is admitted by the guard (allowlist,
//! bans), authenticated by digest against the sealed phone store, answered
//! with 100 Trying by its transaction, and becomes `call_setup` to the relay
//! with the dialled number; `call_ringing` becomes 180, `call_answer` a 200
//! with our SDP answer, and the media task starts; `call_end` before answer
//! becomes the mapped error response (busy 486, not found 404, timeout 408,
//! ...), after answer a BYE. BYE or CANCEL from the phone becomes `call_end`.
//!
//! Relay → phone: `call_setup` for a registered extension becomes an INVITE
//! with our offer to the phone's registered contact (sent to the address the
//! REGISTER came from: NAT-safe); 180 becomes `call_ringing`, 2xx an ACK, the
//! media task and `call_answer`, an error response the mapped `call_end`.
//!
//! Registrations: the first binding of an extension announces it to the
//! relay (`ext_up`), the last one gone withdraws it (`ext_down`); on every
//! new relay session all registered extensions are announced again.

pub mod media;
pub mod tcp;

use crate::codec::phone::PhoneCodec;
use crate::config::{CodecConfig, SipConfig};
use crate::gateway::metrics::GatewayMetrics;
use crate::media::dtmf::Digit;
use crate::media::phone::{PhoneLeg, PhoneLegConfig};
use crate::media::ports::{PortPair, PortPool};
use crate::phones::PhoneStore;
use crate::sip::auth::{DigestServer, Ha1Pair};
use crate::sip::dialog::{Dialog, DialogId, DialogState};
use crate::sip::guard::{AuditEvent, Cidr, Decision, Guard, GuardConfig};
use crate::sip::offer::{self, Codec, Direction, LocalMedia, Negotiated};
use crate::sip::registrar::{Registrar, RegistrarConfig};
use crate::sip::sdp::Session;
use crate::sip::transaction::{Timers, Transactions, Transmit, TxEvent, TxKey, cancel_for};
use crate::sip::{Message, Method, SipUri, Via, new_branch, new_tag};
use crate::transport::calls::{CallSignal, EndReason};
use crate::transport::client::{CallLink, ConnSlot, LinkEvent};
use anyhow::{Context, Result};
use media::{MediaCmd, MediaEvent, MediaTask};
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
pub fn prepare(
    cfg: &SipConfig,
    material: &crate::identity::sealed::Material,
) -> Result<PreparedBridge> {
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
    up_flow: u64,
    up_ssrc: u32,
    /// Flow the relay sends this call's audio on.
    relay_flow: Option<u64>,
    media: Option<mpsc::Sender<MediaCmd>>,
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
    /// Relay flow → the media task's relay input.
    flows: HashMap<u64, mpsc::Sender<bytes::Bytes>>,
    signals: mpsc::Sender<CallSignal>,
    relay_up: bool,
    slot: Arc<ConnSlot>,
    media_events: mpsc::Sender<MediaEvent>,
    metrics: Arc<GatewayMetrics>,
    opus: CodecConfig,
    rng: fastrand::Rng,
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

    /// A datagram or stream message from `src`.
    fn on_message(&mut self, mut msg: Message, src: SocketAddr, reliable: bool) {
        let now = self.now();
        let (ok, ev) = self.guard.admit(now, src.ip());
        self.audit(ev.into_iter().collect());
        if !ok {
            self.metrics.sip_dropped.inc();
            return;
        }
        if msg.is_request() {
            // RFC 3261 18.2.1 / RFC 3581: record where it really came from.
            if let Ok(mut via) = msg.top_via() {
                via.stamp_source(src);
                msg.headers.replace_first("Via", via.to_string());
            }
        }
        self.txs.handle_message(now, msg, src, reliable);
    }

    /// Authenticate a request; `Some(user)` when it may proceed.
    fn authenticate(&mut self, key: &TxKey, msg: &Message, src: SocketAddr) -> Option<String> {
        let now = self.now();
        let phones = &self.phones;
        let (d, events) = self.guard.authenticate(now, src, msg, |u| {
            phones.get(u).map(|e| Ha1Pair {
                sha256: e.ha1_sha256.clone(),
                md5: e.ha1_md5.clone(),
            })
        });
        self.audit(events);
        match d {
            Decision::Drop => {
                self.metrics.sip_dropped.inc();
                None
            }
            Decision::Respond(r) => {
                let _ = self.txs.send_response(now, key, *r);
                None
            }
            Decision::Authenticated { user } => Some(user),
        }
    }

    fn on_tx_event(&mut self, ev: TxEvent) {
        match ev {
            TxEvent::Request {
                key,
                msg,
                src,
                reliable,
            } => self.on_request(key, *msg, src, reliable),
            TxEvent::Ack { msg, .. } => {
                if let Some(id) = Dialog::id_of_request(&msg)
                    && let Some(c) = self.call_by_dialog(&id)
                    && let Some(d) = self.calls.get_mut(&c).and_then(|c| c.dialog.as_mut())
                {
                    d.state = DialogState::Confirmed;
                }
            }
            TxEvent::Response { key, msg } => self.on_response(key, *msg),
            TxEvent::AckTimeout { key } => {
                if let Some(c) = self.call_by_invite(&key) {
                    info!(
                        call = c,
                        "the phone never acknowledged the answer; hanging up"
                    );
                    self.end_call(c, EndReason::Error, true, true);
                }
            }
        }
    }

    fn call_by_dialog(&self, id: &DialogId) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| c.dialog.as_ref().is_some_and(|d| &d.id == id))
            .map(|(&k, _)| k)
    }

    fn call_by_invite(&self, key: &TxKey) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| &c.invite == key)
            .map(|(&k, _)| k)
    }

    fn on_request(&mut self, key: TxKey, msg: Message, src: SocketAddr, reliable: bool) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let in_dialog = msg
            .to()
            .ok()
            .and_then(|t| t.tag().map(str::to_string))
            .is_some();
        match method {
            Method::Register => {
                let Some(user) = self.authenticate(&key, &msg, src) else {
                    return;
                };
                // A phone registers only its own extension.
                let to_user = msg.to().ok().and_then(|t| t.uri.user.clone());
                if to_user.as_deref() != Some(user.as_str()) {
                    self.respond(&key, &msg, 403);
                    return;
                }
                let before = !self.registrar.lookup(self.now(), &user).is_empty();
                let now = self.now();
                let (resp, _) = self.registrar.register(now, &user, &msg, src);
                let _ = self.txs.send_response(now, &key, resp);
                let after = !self.registrar.lookup(now, &user).is_empty();
                if before != after {
                    info!(ext = %user, %src, registered = after, "phone registration changed");
                    self.send_signal(if after {
                        CallSignal::ExtUp(user)
                    } else {
                        CallSignal::ExtDown(user)
                    });
                    self.update_registered_gauge();
                }
            }
            Method::Invite if in_dialog => self.on_reinvite(key, msg),
            Method::Invite => {
                let Some(user) = self.authenticate(&key, &msg, src) else {
                    return;
                };
                self.on_invite(key, msg, src, reliable, user);
            }
            Method::Bye => {
                match Dialog::id_of_request(&msg).and_then(|id| self.call_by_dialog(&id)) {
                    Some(c) => {
                        self.respond(&key, &msg, 200);
                        self.end_call(c, EndReason::Normal, true, false);
                    }
                    None => self.respond(&key, &msg, 481),
                }
            }
            Method::Cancel => {
                let invite = self.txs.invite_for_cancel(&key);
                match invite.and_then(|k| self.call_by_invite(&k).map(|c| (k, c))) {
                    Some((ik, c)) if !self.calls[&c].answered => {
                        self.respond(&key, &msg, 200);
                        if let Some(inv) = self.calls.get(&c).and_then(|c| c.their_invite.clone()) {
                            self.respond(&ik, &inv, 487);
                        }
                        self.end_call(c, EndReason::Normal, true, false);
                    }
                    _ => self.respond(&key, &msg, 481),
                }
            }
            Method::Options => {
                // A keep-alive to the box itself is answered; one addressed to
                // a user is challenged like REGISTER and INVITE, so a scanner
                // sees the same answer for every extension.
                let to_user = msg.request_uri().is_some_and(|u| u.user.is_some());
                if to_user && self.authenticate(&key, &msg, src).is_none() {
                    return;
                }
                let mut r = Message::response_to(&msg, 200);
                r.set_to_tag(&new_tag(secure_bytes()));
                r.headers
                    .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER");
                r.headers.push("Accept", "application/sdp");
                let now = self.now();
                let _ = self.txs.send_response(now, &key, r);
            }
            Method::Ack => {}
            _ => self.respond(&key, &msg, 405),
        }
    }

    fn update_registered_gauge(&self) {
        let now = self.now();
        let n = self
            .phones
            .iter()
            .filter(|(e, _)| !self.registrar.lookup(now, e).is_empty())
            .count();
        self.metrics.sip_registered.set(n as f64);
    }

    fn local_media(&mut self, pair: &PortPair) -> LocalMedia {
        let id = u64::from(self.rng.u32(..));
        LocalMedia {
            addr: self.advertise,
            port: pair.port(),
            session_id: id,
            session_version: id,
        }
    }

    fn prefs(&self) -> Vec<Codec> {
        self.cfg.codecs.iter().map(|&c| to_sip_codec(c)).collect()
    }

    fn on_invite(
        &mut self,
        key: TxKey,
        msg: Message,
        src: SocketAddr,
        reliable: bool,
        user: String,
    ) {
        let dialled = msg.request_uri().and_then(|u| u.user.clone()).filter(|d| {
            !d.is_empty()
                && d.len() <= 32
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        });
        let Some(dialled) = dialled else {
            self.respond(&key, &msg, 404);
            return;
        };
        if !self.relay_up {
            self.respond(&key, &msg, 480);
            return;
        }
        if self.calls.len() >= MAX_CALLS {
            self.respond(&key, &msg, 503);
            return;
        }
        let Ok(offer_sdp) = Session::parse(&msg.body) else {
            self.respond(&key, &msg, 488);
            return;
        };
        let now = self.now();
        let Some(pair) = self.pool.lease(now) else {
            warn!("no free RTP port pair; refusing the call ([sip] rtp_ports)");
            self.respond(&key, &msg, 503);
            return;
        };
        let local = self.local_media(&pair);
        let (answer, neg) = match offer::answer(&offer_sdp, &local, &self.prefs()) {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "offer refused");
                self.pool.release(pair, now);
                self.respond(&key, &msg, 488);
                return;
            }
        };
        let local_tag = new_tag(secure_bytes());
        let dialog = Dialog::uas(
            &msg,
            &local_tag,
            self.local_uri(Some(&user)),
            DialogState::Early,
        )
        .ok();
        self.next_call = self.next_call.wrapping_add(1) & 0x7fff_ffff;
        let call = self.next_call;
        let up_flow = self.next_flow;
        self.next_flow += 1;
        let up_ssrc = self.rng.u32(..);
        info!(call, from = %user, to = %dialled, %src, codec = ?neg.codec, "call from a phone");
        self.metrics.sip_calls.inc();
        self.send_signal(CallSignal::Setup {
            call,
            to: dialled,
            from: user,
            flow: up_flow,
            ssrc: up_ssrc,
        });
        self.calls.insert(
            call,
            Call {
                origin: Origin::Phone,
                relay_call: call,
                invite: key,
                our_invite: None,
                their_invite: Some(msg),
                phone: src,
                reliable,
                local_tag,
                dialog,
                negotiated: Some(neg),
                answer_sdp: Some(answer.encode()),
                pair: Some(pair),
                up_flow,
                up_ssrc,
                relay_flow: None,
                media: None,
                answered: false,
            },
        );
        self.metrics.sip_calls_active.set(self.calls.len() as f64);
    }

    fn on_reinvite(&mut self, key: TxKey, msg: Message) {
        let Some(c) = Dialog::id_of_request(&msg).and_then(|id| self.call_by_dialog(&id)) else {
            self.respond(&key, &msg, 481);
            return;
        };
        let prefs = self.prefs();
        let call = self.calls.get_mut(&c).expect("indexed");
        if let Some(d) = call.dialog.as_mut()
            && d.on_request(&msg).is_err()
        {
            self.respond(&key, &msg, 500);
            return;
        }
        let (Ok(offer_sdp), Some(pair)) = (Session::parse(&msg.body), call.pair.as_ref()) else {
            self.respond(&key, &msg, 488);
            return;
        };
        let local = LocalMedia {
            addr: self.advertise,
            port: pair.port(),
            session_id: 1,
            session_version: u64::from(self.rng.u32(..)),
        };
        match offer::answer(&offer_sdp, &local, &prefs) {
            Ok((answer, neg)) => {
                let hold = matches!(neg.direction, Direction::RecvOnly | Direction::Inactive);
                if let Some(m) = &call.media {
                    let _ = m.try_send(MediaCmd::Hold(hold));
                }
                info!(call = c, hold, "re-INVITE from the phone");
                let mut r = Message::response_to(&msg, 200);
                r.set_to_tag(&call.local_tag);
                r.headers
                    .push("Contact", format!("<{}>", self.local_uri(None)));
                r.headers.push("Content-Type", "application/sdp");
                r.body = answer.encode();
                let now = self.now();
                let _ = self.txs.send_response(now, &key, r);
            }
            Err(_) => self.respond(&key, &msg, 488),
        }
    }

    /// Responses to our INVITEs (calls to a phone) and BYEs.
    fn on_response(&mut self, key: TxKey, msg: Message) {
        let Some(c) = self.call_by_invite(&key) else {
            return;
        };
        let code = msg.code().unwrap_or(500);
        let Some(call) = self.calls.get(&c) else {
            return;
        };
        if call.origin != Origin::Relay || call.answered {
            return;
        }
        let (relay_call, reliable, phone) = (call.relay_call, call.reliable, call.phone);
        let our = call.our_invite.clone();
        match code {
            180 | 183 => self.send_signal(CallSignal::Ringing { call: relay_call }),
            100..=199 => {}
            200..=299 => {
                let Some(our) = our else { return };
                let dialog = Dialog::uac(&our, &msg, self.local_uri(None)).ok();
                let neg = Session::parse(&msg.body)
                    .ok()
                    .and_then(|s| offer::accept_answer(&s).ok());
                // ACK the 2xx (outside the transaction, RFC 3261 13.2.2.4).
                if let Some(d) = &dialog {
                    let seq = our.cseq().map(|c| c.seq).unwrap_or(1);
                    let ack = d.ack(seq, &self.via(reliable));
                    self.txs.send_stateless(&ack, phone, reliable);
                }
                let call = self.calls.get_mut(&c).expect("indexed");
                call.dialog = dialog;
                match neg {
                    Some(n) => {
                        call.negotiated = Some(n);
                        call.answered = true;
                        let (up_flow, up_ssrc) = (call.up_flow, call.up_ssrc);
                        self.start_media(c);
                        self.send_signal(CallSignal::Answer {
                            call: relay_call,
                            flow: up_flow,
                            ssrc: up_ssrc,
                        });
                        info!(call = c, "phone answered");
                    }
                    None => {
                        warn!(call = c, "phone answered with an unusable SDP; hanging up");
                        call.answered = true;
                        self.end_call(c, EndReason::Error, true, true);
                    }
                }
            }
            _ => {
                let reason = EndReason::from_sip_status(code);
                info!(call = c, code, ?reason, "phone refused the call");
                self.end_call(c, reason, true, false);
            }
        }
    }

    fn start_media(&mut self, c: u32) {
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        let (Some(neg), Some(pair)) = (call.negotiated.clone(), call.pair.take()) else {
            return;
        };
        let codec = to_phone_codec(neg.codec);
        let leg = PhoneLeg::new(&PhoneLegConfig {
            codec,
            phone_pt: neg.pt,
            dtmf_pt: neg.dtmf_pt,
            ptime: self.cfg.ptime,
            opus: CodecConfig {
                complexity: self.cfg.opus_complexity,
                ..self.opus
            },
            up_flow: call.up_flow,
            up_ssrc: call.up_ssrc,
            down_ssrc: self.rng.u32(..),
            initial: (
                self.rng.u16(..),
                self.rng.u32(..),
                self.rng.u16(..),
                self.rng.u32(..),
            ),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        });
        let leg = match leg {
            Ok(l) => l,
            Err(e) => {
                warn!(call = c, error = %e, "call media could not start");
                self.pool.release(pair, self.now());
                return;
            }
        };
        let (relay_tx, relay_rx) = mpsc::channel(64);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        if let Some(f) = call.relay_flow {
            self.flows.insert(f, relay_tx);
        }
        call.media = Some(cmd_tx);
        let task = MediaTask {
            call: c,
            leg,
            pair,
            remote: neg.remote,
            ptime: self.cfg.ptime,
            slot: self.slot.clone(),
            from_relay: relay_rx,
            cmds: cmd_rx,
            events: self.media_events.clone(),
        };
        tokio::spawn(task.run());
    }

    /// End call `c`: tell the relay unless it ended the call, and the phone
    /// unless the phone ended it.
    fn end_call(&mut self, c: u32, reason: EndReason, tell_relay: bool, tell_phone: bool) {
        let Some(mut call) = self.calls.remove(&c) else {
            return;
        };
        self.metrics.sip_calls_active.set(self.calls.len() as f64);
        if let Some(f) = call.relay_flow {
            self.flows.remove(&f);
        }
        // Dropping the command sender stops the media task, which returns the ports.
        call.media = None;
        if let Some(p) = call.pair.take() {
            self.pool.release(p, self.now());
        }
        if tell_relay {
            self.send_signal(CallSignal::End {
                call: call.relay_call,
                reason,
            });
        }
        info!(call = c, ?reason, "call ended");
        if !tell_phone {
            return;
        }
        let now = self.now();
        match (call.origin, call.answered) {
            (Origin::Phone, false) => {
                if let Some(inv) = &call.their_invite {
                    let mut r = Message::response_to(inv, reason.sip_status());
                    r.set_to_tag(&call.local_tag);
                    let _ = self.txs.send_response(now, &call.invite, r);
                }
            }
            (Origin::Relay, false) => {
                if let Some(inv) = &call.our_invite {
                    let cancel = cancel_for(inv);
                    let _ = self
                        .txs
                        .send_request(now, cancel, call.phone, call.reliable);
                }
            }
            (_, true) => {
                let via = self.via(call.reliable);
                if let Some(d) = call.dialog.as_mut()
                    && let Ok(bye) = d.request(Method::Bye, &via)
                {
                    let _ = self.txs.send_request(now, bye, call.phone, call.reliable);
                }
            }
        }
    }

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => {
                self.relay_up = true;
                let now = self.now();
                let exts: Vec<String> = self
                    .phones
                    .iter()
                    .filter(|(e, _)| !self.registrar.lookup(now, e).is_empty())
                    .map(|(e, _)| e.to_string())
                    .collect();
                for e in exts {
                    self.send_signal(CallSignal::ExtUp(e));
                }
            }
            LinkEvent::Down => {
                self.relay_up = false;
                let calls: Vec<u32> = self.calls.keys().copied().collect();
                for c in calls {
                    self.end_call(c, EndReason::Unavailable, false, true);
                }
            }
            LinkEvent::Signal(s) => self.on_signal(s),
        }
    }

    fn call_by_relay_id(&self, relay_call: u32) -> Option<u32> {
        self.calls
            .iter()
            .find(|(_, c)| c.relay_call == relay_call)
            .map(|(&k, _)| k)
    }

    fn on_signal(&mut self, s: CallSignal) {
        match s {
            CallSignal::Ringing { call } => {
                let Some(c) = self.call_by_relay_id(call) else {
                    return;
                };
                let now = self.now();
                let call = &self.calls[&c];
                if let (Origin::Phone, Some(inv)) = (call.origin, &call.their_invite) {
                    let mut r = Message::response_to(inv, 180);
                    r.set_to_tag(&call.local_tag);
                    r.headers
                        .push("Contact", format!("<{}>", self.local_uri(None)));
                    let key = call.invite.clone();
                    let _ = self.txs.send_response(now, &key, r);
                }
            }
            CallSignal::Answer { call, flow, .. } => {
                let Some(c) = self.call_by_relay_id(call) else {
                    return;
                };
                let now = self.now();
                let contact = format!("<{}>", self.local_uri(None));
                let Some(cl) = self.calls.get_mut(&c) else {
                    return;
                };
                if cl.origin != Origin::Phone || cl.answered {
                    return;
                }
                cl.answered = true;
                cl.relay_flow = Some(flow);
                if let Some(inv) = &cl.their_invite {
                    let mut r = Message::response_to(inv, 200);
                    r.set_to_tag(&cl.local_tag);
                    r.headers.push("Contact", contact);
                    r.headers.push("Content-Type", "application/sdp");
                    r.body = cl.answer_sdp.clone().unwrap_or_default();
                    if let Some(d) = cl.dialog.as_mut() {
                        d.state = DialogState::Confirmed;
                    }
                    let key = cl.invite.clone();
                    let _ = self.txs.send_response(now, &key, r);
                }
                self.start_media(c);
                info!(call = c, "call answered");
            }
            CallSignal::End { call, reason } => {
                if let Some(c) = self.call_by_relay_id(call) {
                    self.end_call(c, reason, false, true);
                }
            }
            CallSignal::Dtmf {
                call,
                digit,
                duration_ms,
            } => {
                if let (Some(c), Some(d)) = (self.call_by_relay_id(call), Digit::from_char(digit))
                    && let Some(m) = self.calls.get(&c).and_then(|c| c.media.as_ref())
                {
                    let _ = m.try_send(MediaCmd::Digit(d, u32::from(duration_ms)));
                }
            }
            CallSignal::Setup {
                call,
                to,
                from,
                flow,
                ..
            } => self.call_phone(call, to, from, flow),
            CallSignal::Error { code, message } => {
                warn!(code, message = %message, "relay refused a call request");
            }
            CallSignal::ExtUp(_) | CallSignal::ExtDown(_) => {}
        }
    }

    /// The relay calls extension `to`.
    fn call_phone(&mut self, relay_call: u32, to: String, from: String, relay_flow: u64) {
        let now = self.now();
        let refuse = |me: &Self, reason| {
            me.send_signal(CallSignal::End {
                call: relay_call,
                reason,
            })
        };
        let Some(binding) = self
            .registrar
            .lookup(now, &to)
            .first()
            .map(|b| (*b).clone())
        else {
            return refuse(
                self,
                if self.phones.get(&to).is_some() {
                    EndReason::Unavailable
                } else {
                    EndReason::NotFound
                },
            );
        };
        if self.calls.len() >= MAX_CALLS {
            return refuse(self, EndReason::Busy);
        }
        let Some(pair) = self.pool.lease(now) else {
            return refuse(self, EndReason::Busy);
        };
        let reliable = binding.transport.eq_ignore_ascii_case("TCP");
        let local = self.local_media(&pair);
        let sdp = offer::offer(&local, Direction::SendRecv);
        let mut inv = Message::request(Method::Invite, binding.contact.uri.clone());
        inv.headers.push("Via", self.via(reliable).to_string());
        inv.headers.push("Max-Forwards", "70");
        inv.headers.push(
            "From",
            format!(
                "<{}>;tag={}",
                self.local_uri(Some(&from)),
                new_tag(secure_bytes())
            ),
        );
        inv.headers
            .push("To", format!("<sip:{to}@{}>", self.advertise));
        inv.headers.push(
            "Call-ID",
            format!(
                "{}@{}",
                crate::sip::auth::hex(&secure_bytes::<12>()),
                self.advertise
            ),
        );
        inv.headers.push("CSeq", "1 INVITE");
        inv.headers
            .push("Contact", format!("<{}>", self.local_uri(None)));
        inv.headers
            .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        inv.headers.push("Content-Type", "application/sdp");
        inv.body = sdp.encode();
        let key = match self
            .txs
            .send_request(now, inv.clone(), binding.source, reliable)
        {
            Ok(k) => k,
            Err(e) => {
                warn!(error = %e, "INVITE to the phone not sent");
                self.pool.release(pair, now);
                return refuse(self, EndReason::Error);
            }
        };
        self.next_call = self.next_call.wrapping_add(1) & 0x7fff_ffff;
        let c = self.next_call;
        let up_flow = self.next_flow;
        self.next_flow += 1;
        info!(call = c, %to, %from, phone = %binding.source, "calling a phone");
        self.metrics.sip_calls.inc();
        self.calls.insert(
            c,
            Call {
                origin: Origin::Relay,
                relay_call,
                invite: key,
                our_invite: Some(inv),
                their_invite: None,
                phone: binding.source,
                reliable,
                local_tag: String::new(),
                dialog: None,
                negotiated: None,
                answer_sdp: None,
                pair: Some(pair),
                up_flow,
                up_ssrc: self.rng.u32(..),
                relay_flow: Some(relay_flow),
                media: None,
                answered: false,
            },
        );
        self.metrics.sip_calls_active.set(self.calls.len() as f64);
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
    metrics: Arc<GatewayMetrics>,
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
    let CallLinkEnds {
        signals,
        mut events,
        mut media,
    } = link;
    let mut core = Core {
        advertise: p.advertise,
        port,
        guard,
        registrar,
        txs: Transactions::new(Timers::default()),
        phones: p.phones,
        pool: p.pool,
        calls: HashMap::new(),
        next_call: 0,
        next_flow: FIRST_FLOW,
        flows: HashMap::new(),
        signals,
        relay_up: false,
        slot,
        media_events: media_tx,
        metrics,
        opus,
        rng: fastrand::Rng::new(),
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
            Some((flow, d)) = media.recv() => {
                if let Some(tx) = core.flows.get(&flow) {
                    let _ = tx.try_send(d);
                }
            }
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
    /// Call media from the relay.
    pub media: mpsc::Receiver<(u64, bytes::Bytes)>,
}

/// A connected pair of link ends.
pub fn link() -> (CallLink, CallLinkEnds) {
    let (sig_tx, sig_rx) = mpsc::channel(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let (media_tx, media_rx) = mpsc::channel(1024);
    (
        CallLink {
            events: ev_tx,
            signals: sig_rx,
            media: media_tx,
        },
        CallLinkEnds {
            signals: sig_tx,
            events: ev_rx,
            media: media_rx,
        },
    )
}
