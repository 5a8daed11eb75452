//! The phone bridge's call logic, sans-IO: every piece of SIP state (guard,
//! registrar, transactions, dialogs) and every call, between the LAN's desk
//! phones and calls on the relay connection.
//!
//! The shell (`bridge::run`) feeds the [`Switchboard`] what happens, each
//! time with the current instant: datagrams and stream messages from phones
//! ([`Switchboard::handle_datagram`], [`Switchboard::handle_message`]),
//! relay link events ([`Switchboard::handle_link`]), keys and returned port
//! pairs from the media engine, and timer expiry
//! ([`Switchboard::handle_timeout`] when [`Switchboard::poll_timeout`] says).
//! It carries out the [`Action`]s it then drains from
//! [`Switchboard::poll_action`]: SIP bytes to send, call signals to the
//! relay, media to start, steer or stop, relay flows to unroute.
//!
//! Guarantees:
//! - no IO and no clock: time comes in as `Instant` arguments, randomness
//!   (tags, branches, Call-IDs, SDP session ids, SSRCs) from an
//!   [`Entropy`], RTP port pairs from a [`Ports`] lease; the same inputs give
//!   the same actions, byte for byte;
//! - actions come out in the order the shell must carry them out (a call's
//!   media starts before its `call_answer` is signalled);
//! - every call ends exactly once: the relay is told (`call_end`) unless it
//!   ended the call, the phone (final error response, CANCEL or BYE) unless
//!   the phone ended it, its relay flow is unrouted, its media stopped and
//!   its port pair returned to [`Ports`] (directly, or by the media engine
//!   through [`Switchboard::media_done`]);
//! - at most [`MAX_CALLS`] calls; counters and gauges for the metrics are in
//!   [`Switchboard::stats`].
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
//! [`Switchboard::registrations`] lists every extension of the phone store
//! with its live bindings (where the phone registered from, its user
//! agent, since when, until when; nothing of its credentials), and
//! [`Switchboard::registrations_version`] changes whenever that list would.

mod calls;
mod registrations;
mod requests;
#[cfg(test)]
mod tests;

use crate::bridge::phone_store::PhoneStore;
use crate::codec::CodecConfig;
use crate::codec::telephony::PhoneCodec;
use crate::media::dtmf::{Digit, KeyPress};
use crate::media::leg::PhoneLegConfig;
use crate::proto::signal::{CallSignal, EndReason};
use crate::sip::SipConfig;
use crate::sip::auth::DigestServer;
use crate::sip::dialog::Dialog;
use crate::sip::guard::{AuditEvent, Cidr, Guard, GuardConfig};
use crate::sip::offer::{Codec, LocalMedia, Negotiated};
use crate::sip::registrar::{Registrar, RegistrarConfig};
use crate::sip::transaction::{Timers, Transactions, Transmit, TxKey};
use crate::sip::{Message, SipUri, Via, new_branch, new_tag};
use crate::transport::link::LinkEvent;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tracing::{debug, warn};

pub use registrations::{RegisteredContact, Registration};

/// First flow id the bridge uses for call audio towards the relay (0 is the
/// microphone's uplink).
pub const FIRST_FLOW: u64 = 16;
/// Most calls in progress at once.
pub const MAX_CALLS: usize = 512;

/// RTP/RTCP port pairs for calls, leased while a call is set up and
/// returned when it ends (the shell's is `media::ports::PortPool`).
pub trait Ports {
    /// One leased pair (the media engine holds it while the call's media runs).
    type Pair: fmt::Debug;
    /// A free pair, or `None` when all are in use.
    fn lease(&mut self, now: Instant) -> Option<Self::Pair>;
    /// The RTP port of `pair` (what our SDP announces).
    fn port(pair: &Self::Pair) -> u16;
    /// Give `pair` back.
    fn release(&mut self, pair: Self::Pair, now: Instant);
}

/// Where the bridge's random values come from.
pub trait Entropy: Send + fmt::Debug {
    /// Unpredictable bytes: tags, branches, Call-IDs.
    fn fill(&mut self, buf: &mut [u8]);
    /// A random `u32`: SDP session ids, SSRCs, RTP timestamps.
    fn u32(&mut self) -> u32;
    /// A random `u16`: RTP sequence numbers.
    fn u16(&mut self) -> u16;
}

/// The system's generators: `ring`'s for [`Entropy::fill`], `fastrand` for
/// the rest.
#[derive(Debug)]
pub struct SystemEntropy(fastrand::Rng);

impl Default for SystemEntropy {
    fn default() -> Self {
        SystemEntropy(fastrand::Rng::new())
    }
}

impl Entropy for SystemEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        use ring::rand::SecureRandom;
        // A failing system RNG leaves zeros; tags and branches then still
        // differ by the counter mixed in by the caller's use.
        let _ = ring::rand::SystemRandom::new().fill(buf);
    }

    fn u32(&mut self) -> u32 {
        self.0.u32(..)
    }

    fn u16(&mut self) -> u16 {
        self.0.u16(..)
    }
}

/// How a message reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram.
    Udp,
    /// A message framed on a TCP connection.
    Tcp,
}

impl Transport {
    /// A stream transport (no retransmissions, replies on the connection).
    pub fn is_reliable(self) -> bool {
        self == Transport::Tcp
    }
}

/// A command for one running call's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaCmd {
    /// Play a digit to the phone.
    Digit(Digit, u32),
    /// The far end is on hold (`true`) or back (`false`): stop or resume sending to the phone.
    Hold(bool),
    /// The phone's SDP (re-INVITE) names this RTP address: send there
    /// until its packets come from elsewhere.
    Remote(SocketAddr),
}

/// What the shell must do, in order.
#[derive(Debug)]
pub enum Action<Pair> {
    /// Send SIP bytes (on the connection to `dest` when `reliable`).
    SendSip(Transmit),
    /// Send a call signal to the relay.
    Signal(CallSignal),
    /// Start a call's media: build the leg and hand it with `pair` to the
    /// media engine, and route `relay_flow` to the engine. If it cannot
    /// start, give `pair` back through [`Switchboard::media_failed`].
    StartMedia {
        /// The bridge's call id.
        call: u32,
        /// The leg's settings (codec, packet time, flows, SSRCs).
        leg: Box<PhoneLegConfig>,
        /// The call's RTP ports (the engine returns them when it stops).
        pair: Pair,
        /// Where the phone's SDP said to send RTP (when inside the allowlist).
        remote: Option<SocketAddr>,
        /// The only addresses the call's RTP is taken from: the phone's
        /// signalling address and its SDP address, each inside the allowlist.
        sources: Vec<IpAddr>,
        /// The flow the relay sends this call's audio on.
        relay_flow: Option<u64>,
    },
    /// A command for a call whose media runs.
    Media(u32, MediaCmd),
    /// Stop a call's media (its pair comes back through [`Switchboard::media_done`]).
    StopMedia(u32),
    /// Datagrams from the relay on this flow no longer go to the media engine.
    Unroute(u64),
}

/// Counters (totals since start) and gauges (current values) for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// SIP messages dropped (malformed, not allowed, flood, banned, unanswerable).
    pub dropped: u64,
    /// Failed digest authentications.
    pub auth_failures: u64,
    /// Sources banned.
    pub bans: u64,
    /// Requests refused with 503 because the transaction table was full.
    pub transactions_full: u64,
    /// Calls set up (both directions).
    pub calls: u64,
    /// Live SIP transactions (gauge).
    pub transactions: usize,
    /// Calls in progress (gauge).
    pub calls_active: usize,
    /// Extensions with a registered phone (gauge, updated when one changes).
    pub registered: usize,
}

/// Everything a [`Switchboard`] starts from.
pub struct Setup<P> {
    /// The `[sip]` settings.
    pub cfg: SipConfig,
    /// The gateway's Opus settings (the QUIC side of every call).
    pub opus: CodecConfig,
    /// The address phones reach us at (Via, Contact, SDP).
    pub advertise: IpAddr,
    /// Our SIP port.
    pub port: u16,
    /// Sources allowed to talk to us.
    pub allow: Vec<Cidr>,
    /// Digest credentials of the phones.
    pub phones: PhoneStore,
    /// RTP port pairs.
    pub ports: P,
    /// Per-boot secret of the digest nonces.
    pub digest_secret: [u8; 32],
    /// Random values.
    pub entropy: Box<dyn Entropy>,
}

impl<P> fmt::Debug for Setup<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Setup")
            .field("advertise", &self.advertise)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The bans of a [`Switchboard`] at one instant, for screening TCP
/// connections in another task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screen {
    /// Banned source keys (`sip::guard::source_key`) and when each ban ends.
    pub bans: Vec<(IpAddr, Instant)>,
    /// The IPv6 prefix the keys are cut to.
    pub ipv6_prefix: u8,
}

impl Screen {
    /// Whether `ip` is banned at `now`.
    pub fn banned(&self, now: Instant, ip: IpAddr) -> bool {
        let k = crate::sip::guard::source_key(ip, self.ipv6_prefix);
        self.bans.iter().any(|(b, until)| *b == k && now < *until)
    }
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
struct Call<Pair> {
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
    /// The phone's extension (the caller's, or the one called).
    ext: String,
    /// Our ACK of the phone's 2xx (calls to a phone), sent again for every
    /// retransmission of that 2xx.
    ack: Option<Message>,
    reliable: bool,
    /// Our To tag (phone-originated calls).
    local_tag: String,
    dialog: Option<Dialog>,
    negotiated: Option<Negotiated>,
    /// Our SDP answer (phone-originated calls).
    answer_sdp: Option<Vec<u8>>,
    /// The leased ports until the media engine takes them.
    pair: Option<Pair>,
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

/// The bridge's call logic (see the module docs).
#[derive(Debug)]
pub struct Switchboard<P: Ports> {
    cfg: SipConfig,
    advertise: IpAddr,
    port: u16,
    guard: Guard,
    registrar: Registrar,
    txs: Transactions,
    phones: PhoneStore,
    ports: P,
    calls: HashMap<u32, Call<P::Pair>>,
    next_call: u32,
    next_flow: u64,
    relay_up: bool,
    opus: CodecConfig,
    entropy: Box<dyn Entropy>,
    stats: Stats,
    actions: VecDeque<Action<P::Pair>>,
    /// Advanced when the phone store is replaced (the extensions listed by
    /// [`Switchboard::registrations`] may change).
    phones_generation: u64,
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

impl<P: Ports> Switchboard<P> {
    /// A switchboard with no registration and no call, the relay not yet up.
    pub fn new(now: Instant, s: Setup<P>) -> Self {
        let digest = DigestServer::new(&s.cfg.realm, &s.digest_secret, now, s.cfg.nonce_ttl)
            .with_algorithms(&s.cfg.digest);
        let guard = Guard::new(
            GuardConfig {
                allow: s.allow,
                max_failures: s.cfg.auth_failures,
                ban: s.cfg.ban,
                max_packets: s.cfg.packets_per_source,
                ipv6_prefix: s.cfg.ipv6_prefix,
                ..GuardConfig::default()
            },
            digest,
        );
        let registrar = Registrar::new(RegistrarConfig {
            min_expires: s.cfg.min_expires.as_secs() as u32,
            max_expires: s.cfg.max_expires.as_secs() as u32,
            default_expires: s.cfg.max_expires.as_secs() as u32,
            ..RegistrarConfig::default()
        });
        Switchboard {
            advertise: s.advertise,
            port: s.port,
            guard,
            registrar,
            txs: Transactions::with_capacity(Timers::default(), s.cfg.max_transactions),
            phones: s.phones,
            ports: s.ports,
            calls: HashMap::new(),
            next_call: 0,
            next_flow: FIRST_FLOW,
            relay_up: false,
            opus: s.opus,
            entropy: s.entropy,
            stats: Stats::default(),
            actions: VecDeque::new(),
            phones_generation: 0,
            cfg: s.cfg,
        }
    }

    /// A UDP datagram from `src`: the guard's address checks (allowlist,
    /// ban, packet budget) run before a byte of it is parsed.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8], src: SocketAddr) {
        if !self.admit(now, src) {
            return;
        }
        match Message::parse(bytes) {
            Ok(m) => {
                self.on_message(now, m, src, false);
                self.flush(now);
            }
            Err(e) => {
                self.stats.dropped += 1;
                debug!(%src, error = %e, "malformed SIP datagram dropped");
            }
        }
    }

    /// A parsed message from `src` (a TCP connection's frames come this way;
    /// the connection was screened at accept and before framing, see
    /// [`Switchboard::screen`]).
    pub fn handle_message(&mut self, now: Instant, msg: Message, src: SocketAddr, t: Transport) {
        if !self.admit(now, src) {
            return;
        }
        self.on_message(now, msg, src, t.is_reliable());
        self.flush(now);
    }

    /// The guard's checks of a source address, counting a refusal once.
    fn admit(&mut self, now: Instant, src: SocketAddr) -> bool {
        let (ok, ev) = self.guard.admit(now, src.ip());
        self.audit(ev);
        if !ok {
            self.stats.dropped += 1;
        }
        ok
    }

    /// What a connection-oriented shell needs to refuse a source before
    /// reading from it: the allowlist and the bans in force at `now`.
    pub fn screen(&self, now: Instant) -> Screen {
        Screen {
            bans: self.guard.bans(now),
            ipv6_prefix: self.cfg.ipv6_prefix,
        }
    }

    /// Whether `ip` is inside the allowlist.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.guard.allowed(ip)
    }

    /// A TCP connection sent bytes that frame no message (it is closed).
    pub fn handle_stream_error(&mut self) {
        self.stats.dropped += 1;
    }

    /// An event of the relay connection.
    pub fn handle_link(&mut self, now: Instant, ev: LinkEvent) {
        self.on_link(now, ev);
        self.flush(now);
    }

    /// The phone of call `call` pressed a key.
    pub fn handle_key(&mut self, now: Instant, call: u32, key: KeyPress) {
        if let Some(c) = self.calls.get(&call) {
            let s = CallSignal::Dtmf {
                call: c.relay_call,
                digit: key.digit.as_char(),
                duration_ms: 100,
            };
            self.signal(s);
        }
        self.flush(now);
    }

    /// The media engine stopped a call and gives its ports back.
    pub fn media_done(&mut self, now: Instant, pair: P::Pair) {
        self.ports.release(pair, now);
    }

    /// A call's media could not start ([`Action::StartMedia`]): its ports
    /// come back and the call goes on without media.
    pub fn media_failed(&mut self, now: Instant, call: u32, pair: P::Pair) {
        if let Some(c) = self.calls.get_mut(&call) {
            c.media = false;
        }
        self.ports.release(pair, now);
    }

    /// Fire the timers due at `now` (transactions, registrations).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.txs.handle_timeout(now);
        let gone = self.registrar.expire(now);
        for ext in gone {
            tracing::info!(%ext, "phone registration expired");
            self.signal(CallSignal::ExtDown(ext));
            self.update_registered(now);
        }
        self.flush(now);
    }

    /// The phone store changed on disk (`voxgate phones add`, `remove`,
    /// `rotate`): authenticate against `phones` from now on, and drop the
    /// registrations of every extension whose credentials changed or went
    /// away, so its phone must register again with the new password (the
    /// relay hears `ext_down` for those that were registered). Calls in
    /// progress go on. Returns those extensions.
    pub fn replace_phones(&mut self, now: Instant, phones: PhoneStore) -> Vec<String> {
        let changed = self.phones.changed_in(&phones);
        self.phones = phones;
        self.phones_generation += 1;
        for ext in &changed {
            if self.registrar.remove(now, ext) {
                tracing::info!(%ext, "phone registration dropped: its credentials changed");
                self.signal(CallSignal::ExtDown(ext.clone()));
            }
        }
        self.update_registered(now);
        self.flush(now);
        changed
    }

    /// When [`Switchboard::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.txs.poll_timeout(), self.registrar.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action<P::Pair>> {
        self.actions.pop_front()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The port pool.
    pub fn ports(&self) -> &P {
        &self.ports
    }

    /// The bridge stops: hang up every call so phones do not keep talking to nobody.
    pub fn shutdown(&mut self, now: Instant) {
        let calls: Vec<u32> = self.calls.keys().copied().collect();
        for c in calls {
            self.end_call(now, c, EndReason::Unavailable, true, true);
        }
        while let Some(t) = self.txs.poll_transmit() {
            self.actions.push_back(Action::SendSip(t));
        }
    }

    /// After an input: the transaction user's events, then what to send.
    fn flush(&mut self, now: Instant) {
        while let Some(ev) = self.txs.poll_event() {
            self.on_tx_event(now, ev);
        }
        self.note_transactions();
        while let Some(t) = self.txs.poll_transmit() {
            self.actions.push_back(Action::SendSip(t));
        }
    }

    fn secure<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.entropy.fill(&mut b);
        b
    }

    fn new_tag(&mut self) -> String {
        new_tag(self.secure())
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

    fn via(&mut self, reliable: bool) -> Via {
        let branch = new_branch(self.secure());
        let text = format!(
            "SIP/2.0/{} {}:{};branch={};rport",
            if reliable { "TCP" } else { "UDP" },
            self.advertise,
            self.port,
            branch
        );
        Via::parse(&text).expect("our Via is well-formed")
    }

    fn respond(&mut self, now: Instant, key: &TxKey, req: &Message, code: u16) {
        let mut r = Message::response_to(req, code);
        if code > 100 {
            r.set_to_tag(&self.new_tag());
        }
        if code == 405 {
            r.headers
                .push("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER");
        }
        if let Err(e) = self.txs.send_response(now, key, r) {
            debug!(error = %e, code, "response not sent");
        }
    }

    fn signal(&mut self, s: CallSignal) {
        self.actions.push_back(Action::Signal(s));
    }

    fn audit(&mut self, events: impl IntoIterator<Item = AuditEvent>) {
        for e in events {
            match e {
                // Drops are counted where they happen, once each.
                AuditEvent::NotAllowed { src } => {
                    debug!(target: "audit", %src, "SIP from outside the allowed subnets dropped");
                }
                AuditEvent::AuthFailed {
                    src,
                    user,
                    failures,
                    ..
                } => {
                    self.stats.auth_failures += 1;
                    warn!(target: "audit", %src, user = %user.escape_debug(), failures, "SIP authentication failed");
                }
                AuditEvent::Flood { src } => {
                    warn!(target: "audit", %src, "SIP flood: excess packets dropped");
                }
                AuditEvent::Banned { src, ban } => {
                    self.stats.bans += 1;
                    warn!(target: "audit", %src, ban_s = ban.as_secs(), "SIP source banned after repeated authentication failures");
                }
                AuditEvent::AuthUnproven { src, user } => {
                    debug!(target: "audit", %src, user = %user.escape_debug(),
                           "SIP answer without a nonce issued to its source: challenged, not counted");
                }
                AuditEvent::Replayed { src, user } => {
                    warn!(target: "audit", %src, user = %user.escape_debug(),
                          "SIP digest replayed (nonce and count used before): challenged again");
                }
                AuditEvent::Authenticated { src, user } => {
                    debug!(target: "audit", %src, %user, "SIP authenticated");
                }
            }
        }
    }

    /// Count the transaction table's size and its 503 refusals.
    fn note_transactions(&mut self) {
        let full = self.txs.full_refusals();
        if full > self.stats.transactions_full {
            if self.stats.transactions_full == 0 {
                warn!(
                    capacity = self.txs.capacity(),
                    "SIP transaction table full: new requests get 503 ([sip] max_transactions)"
                );
            }
            self.stats.transactions_full = full;
        }
        self.stats.transactions = self.txs.len();
    }

    fn update_registered(&mut self, now: Instant) {
        self.stats.registered = self
            .phones
            .iter()
            .filter(|(e, _)| !self.registrar.lookup(now, e).is_empty())
            .count();
    }

    /// Calls in progress for extension `ext`.
    fn calls_of(&self, ext: &str) -> usize {
        self.calls.values().filter(|c| c.ext == ext).count()
    }

    fn update_active(&mut self) {
        self.stats.calls_active = self.calls.len();
    }
}
