//! Switchboard tests: whole call flows in simulated time, fed the bytes a
//! desk phone sends (SIPp and baresip style), asserting the bytes, signals
//! and media actions that come out.
//!
//! The box is 192.168.1.2:5060 on 192.168.1.0/24; extension 201 is a phone
//! at 192.168.1.20:5060, 202 one at 192.168.1.21:5062. Randomness counts up,
//! so tags, branches and session ids are the same on every run.

mod fixtures;
mod hardening;
mod phone_calls;
mod registrations;
mod relay_calls;
mod transactions;

use super::*;
use crate::sip::Method;
use crate::sip::auth::{Algorithm, Ha1Pair, digest_response};
use fixtures::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
pub(super) use std::time::Duration;

pub(super) const BOX: &str = "192.168.1.2";

pub(super) fn phone_201() -> SocketAddr {
    "192.168.1.20:5060".parse().unwrap()
}

pub(super) fn phone_202() -> SocketAddr {
    "192.168.1.21:5062".parse().unwrap()
}

/// Entropy that counts: every fill and number is the next value.
#[derive(Debug, Default)]
pub(super) struct Counting(u64);

impl Entropy for Counting {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0 += 1;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (self.0 as u8).wrapping_add(i as u8);
        }
    }
    fn u32(&mut self) -> u32 {
        self.0 += 1;
        1000 + self.0 as u32
    }
    fn u16(&mut self) -> u16 {
        self.0 += 1;
        self.0 as u16
    }
}

/// A port pair of [`FakePorts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pair(pub u16);

/// Port pairs 10000, 10002, ... without sockets; checks every pair comes
/// back once.
#[derive(Debug)]
pub(super) struct FakePorts {
    free: BTreeSet<u16>,
    pub leased: BTreeSet<u16>,
}

impl FakePorts {
    pub(super) fn new(pairs: u16) -> Self {
        FakePorts {
            free: (0..pairs).map(|i| 10_000 + 2 * i).collect(),
            leased: BTreeSet::new(),
        }
    }
}

impl Ports for FakePorts {
    type Pair = Pair;
    fn lease(&mut self, _: Instant) -> Option<Pair> {
        let p = self.free.pop_first()?;
        self.leased.insert(p);
        Some(Pair(p))
    }
    fn port(pair: &Pair) -> u16 {
        pair.0
    }
    fn release(&mut self, pair: Pair, _: Instant) {
        assert!(self.leased.remove(&pair.0), "{pair:?} released twice");
        self.free.insert(pair.0);
    }
}

pub(super) fn sip_config() -> SipConfig {
    SipConfig {
        listen: "0.0.0.0:5060".parse().unwrap(),
        tcp: true,
        advertise: None,
        rtp_ports: (10_000, 10_199),
        realm: "voxgate".into(),
        allow: None,
        auth_failures: 3,
        ban: Duration::from_secs(600),
        min_expires: Duration::from_secs(60),
        max_expires: Duration::from_secs(3600),
        phones: PathBuf::from("phones.sealed"),
        codecs: vec![
            PhoneCodec::Opus,
            PhoneCodec::G722,
            PhoneCodec::Pcmu,
            PhoneCodec::Pcma,
        ],
        ptime: Duration::from_millis(20),
        opus_complexity: 1,
        digest: vec![Algorithm::Sha256, Algorithm::Md5],
        packets_per_source: 200,
        max_transactions: 2048,
        nonce_ttl: Duration::from_secs(300),
        ipv6_prefix: 128,
        calls_per_extension: 4,
    }
}

pub(super) fn opus() -> CodecConfig {
    CodecConfig {
        complexity: 5,
        ..CodecConfig::default()
    }
}

pub(super) fn password(ext: &str) -> String {
    format!("pw-{ext}")
}

fn store() -> PhoneStore {
    let mut text = String::from("VXPHONES1\nrealm voxgate\n");
    for ext in ["201", "202"] {
        let e = crate::bridge::phone_store::PhoneEntry::derive(ext, "voxgate", &password(ext), 1);
        text.push_str(&format!("{ext} {} {} 1\n", e.ha1_sha256, e.ha1_md5));
    }
    PhoneStore::parse(text.as_bytes()).unwrap()
}

/// What one input made the switchboard do.
#[derive(Debug, Default)]
pub(super) struct Out(pub Vec<Action<Pair>>);

impl Out {
    /// The SIP messages sent, parsed, with their destination.
    pub(super) fn sip(&self) -> Vec<(SocketAddr, Message)> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Action::SendSip(t) => Some((t.dest, Message::parse(&t.bytes).unwrap())),
                _ => None,
            })
            .collect()
    }

    /// The raw bytes sent.
    pub(super) fn bytes(&self) -> Vec<Vec<u8>> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Action::SendSip(t) => Some(t.bytes.clone()),
                _ => None,
            })
            .collect()
    }

    /// Status codes of the responses sent.
    pub(super) fn codes(&self) -> Vec<u16> {
        self.sip().iter().filter_map(|(_, m)| m.code()).collect()
    }

    /// Methods of the requests sent.
    pub(super) fn methods(&self) -> Vec<String> {
        self.sip()
            .iter()
            .filter_map(|(_, m)| m.method().map(|x| x.as_str().to_string()))
            .collect()
    }

    /// The one message sent (panics unless exactly one).
    pub(super) fn one(&self) -> Message {
        let s = self.sip();
        assert_eq!(s.len(), 1, "{:?}", self.0);
        s[0].1.clone()
    }

    pub(super) fn signals(&self) -> Vec<CallSignal> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Action::Signal(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Everything but SIP bytes and signals (media, routes), as text.
    pub(super) fn media(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Action::SendSip(_) | Action::Signal(_) => None,
                Action::StartMedia {
                    call,
                    pair,
                    remote,
                    relay_flow,
                    ..
                } => Some(format!("start {call} {} {remote:?} {relay_flow:?}", pair.0)),
                Action::Media(c, cmd) => Some(format!("{c} {cmd:?}")),
                Action::StopMedia(c) => Some(format!("stop {c}")),
                Action::Unroute(f) => Some(format!("unroute {f}")),
            })
            .collect()
    }

    /// The leg settings and pair of the one media start.
    pub(super) fn started(&mut self) -> (u32, PhoneLegConfig, Pair) {
        let i = self
            .0
            .iter()
            .position(|a| matches!(a, Action::StartMedia { .. }))
            .expect("media started");
        match self.0.remove(i) {
            Action::StartMedia {
                call, leg, pair, ..
            } => (call, *leg, pair),
            _ => unreachable!(),
        }
    }
}

/// A switchboard and a simulated clock.
pub(super) struct Lab {
    pub sb: Switchboard<FakePorts>,
    pub now: Instant,
    pub t0: Instant,
}

impl Lab {
    /// Relay link up, no phone registered.
    pub(super) fn new() -> Lab {
        Lab::with(sip_config(), FakePorts::new(4))
    }

    pub(super) fn with(cfg: SipConfig, ports: FakePorts) -> Lab {
        let t0 = Instant::now();
        let sb = Switchboard::new(
            t0,
            Setup {
                cfg,
                opus: opus(),
                advertise: BOX.parse().unwrap(),
                port: 5060,
                allow: vec![Cidr::parse("192.168.1.0/24").unwrap()],
                phones: store(),
                ports,
                digest_secret: [7; 32],
                entropy: Box::new(Counting::default()),
            },
        );
        let mut lab = Lab { sb, now: t0, t0 };
        assert!(lab.link(LinkEvent::Up).0.is_empty());
        lab
    }

    pub(super) fn drain(&mut self) -> Out {
        let mut out = Out::default();
        while let Some(a) = self.sb.poll_action() {
            out.0.push(a);
        }
        out
    }

    /// A datagram from `src`.
    pub(super) fn recv(&mut self, src: SocketAddr, bytes: &[u8]) -> Out {
        self.sb.handle_datagram(self.now, bytes, src);
        self.drain()
    }

    /// A message on the TCP connection from `src`.
    pub(super) fn recv_tcp(&mut self, src: SocketAddr, bytes: &[u8]) -> Out {
        let m = Message::parse(bytes).unwrap();
        self.sb.handle_message(self.now, m, src, Transport::Tcp);
        self.drain()
    }

    pub(super) fn link(&mut self, ev: LinkEvent) -> Out {
        self.sb.handle_link(self.now, ev);
        self.drain()
    }

    /// A call signal from the relay.
    pub(super) fn relay(&mut self, s: CallSignal) -> Out {
        self.link(LinkEvent::Signal(s))
    }

    /// Let `d` pass, firing the timers that come due on the way.
    pub(super) fn wait(&mut self, d: Duration) -> Out {
        let end = self.now + d;
        let mut out = Out::default();
        while let Some(at) = self.sb.poll_timeout()
            && at <= end
        {
            self.now = self.now.max(at);
            self.sb.handle_timeout(self.now);
            out.0.extend(self.drain().0);
        }
        self.now = end;
        out
    }

    /// Like [`Lab::wait`], with the time since start of every message sent.
    pub(super) fn wait_timed(&mut self, d: Duration) -> Vec<(Duration, Message)> {
        let end = self.now + d;
        let mut v = Vec::new();
        while let Some(at) = self.sb.poll_timeout()
            && at <= end
        {
            self.now = self.now.max(at);
            self.sb.handle_timeout(self.now);
            for (_, m) in self.drain().sip() {
                v.push((self.now - self.t0, m));
            }
        }
        self.now = end;
        v
    }

    /// Register `ext` from `src` (challenge, then digest); returns what the
    /// authenticated REGISTER produced.
    pub(super) fn register(&mut self, ext: &str, src: SocketAddr, expires: u32) -> Out {
        self.register_at(ext, src, expires, 1)
    }

    /// [`Lab::register`] with CSeq `cseq` and `cseq + 1`.
    pub(super) fn register_at(
        &mut self,
        ext: &str,
        src: SocketAddr,
        expires: u32,
        cseq: u32,
    ) -> Out {
        let first = self.recv(src, &register(ext, src, cseq, None, expires));
        let challenge = first.one();
        assert_eq!(challenge.code(), Some(401), "{challenge:?}");
        let auth = authorization(&challenge, ext, "REGISTER", &format!("sip:{BOX}:5060"));
        let out = self.recv(src, &register(ext, src, cseq + 1, Some(&auth), expires));
        assert_eq!(out.codes(), [200], "{:?}", out.0);
        out
    }

    /// 201 dials `to` with `sdp`: challenge, digest, 100 Trying and
    /// `call_setup`; returns the bridge's call id, the authenticated INVITE
    /// and what it produced.
    pub(super) fn dial(&mut self, to: &str, sdp: &str) -> (u32, Vec<u8>, Out) {
        let src = phone_201();
        let first = invite_from_201(to, 1, "z9hG4bK-201-inv1", None, sdp);
        let out = self.recv(src, &first);
        assert_eq!(out.codes(), [100, 401], "{:?}", out.0);
        let challenge = out.sip()[1].1.clone();
        assert!(
            self.recv(src, &ack_from_201(&first, &challenge))
                .0
                .is_empty(),
            "the ACK of the 401 is absorbed"
        );
        let auth = authorization(&challenge, "201", "INVITE", &format!("sip:{to}@{BOX}"));
        let second = invite_from_201(to, 2, "z9hG4bK-201-inv2", Some(&auth), sdp);
        let out = self.recv(src, &second);
        assert_eq!(out.codes(), [100], "{:?}", out.0);
        let setup = out.signals();
        let [CallSignal::Setup { call, .. }] = setup[..] else {
            panic!("{:?}", out.0)
        };
        (call, second, out)
    }
}

/// The `Authorization` value answering `challenge` (its first, SHA-256, offer).
pub(super) fn authorization(challenge: &Message, ext: &str, method: &str, uri: &str) -> String {
    authorization_with(challenge, ext, &password(ext), method, uri)
}

/// [`authorization`] with another password.
pub(super) fn authorization_with(
    challenge: &Message,
    ext: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let www = challenge.headers.get("WWW-Authenticate").unwrap();
    assert!(www.contains("algorithm=SHA-256"), "{www}");
    let nonce = www
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let ha1 = Ha1Pair::derive(ext, "voxgate", password);
    let cnonce = "6b8b4567";
    let response = digest_response(
        Algorithm::Sha256,
        &ha1.sha256,
        nonce,
        "00000001",
        cnonce,
        "auth",
        method,
        uri,
    );
    format!(
        "Digest username=\"{ext}\",realm=\"voxgate\",nonce=\"{nonce}\",uri=\"{uri}\",response=\"{response}\",algorithm=SHA-256,cnonce=\"{cnonce}\",qop=auth,nc=00000001"
    )
}
