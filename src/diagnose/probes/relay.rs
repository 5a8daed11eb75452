//! The relay, in the order a connection needs it: its name resolves
//! ([`dns`]), something answers QUIC on its UDP port ([`udp`]), it proves
//! it holds the fleet CA in a TLS handshake ([`handshake`], [`quic`]), and
//! the round trip is short enough for calls ([`rtt`]). [`probe`] runs all
//! four and skips what cannot run.
//!
//! "No answer" and "answered, but not with the fleet CA" are different
//! failures with different fixes (a firewall or a stopped relay; a wrong
//! fingerprint, server name or relay), and are reported apart.

use crate::diagnose::{Finding, Status};
use rustls::client::danger::ServerCertVerifier;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long each step waits for an answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// A round trip above this warns: calls get noticeably late.
pub const RTT_WARN: Duration = Duration::from_millis(250);
/// A round trip above this fails: conversation breaks down.
pub const RTT_FAIL: Duration = Duration::from_millis(600);

/// `dns`: resolve `address` (`host:port`) with the system resolver,
/// within [`TIMEOUT`]. Returns the finding and the addresses.
pub fn dns(address: &str) -> (Finding, Vec<SocketAddr>) {
    const ID: &str = "dns";
    let Some((host, port)) = crate::transport::split_host_port(address) else {
        return (
            Finding::fail(
                ID,
                format!("`{address}` is not HOST:PORT"),
                "set relay.address to HOST:PORT",
            ),
            Vec::new(),
        );
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return (
            Finding::ok(ID, format!("{host} is an address: nothing to resolve")),
            vec![SocketAddr::new(ip, port)],
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let query = address.to_string();
    // getaddrinfo cannot be cancelled: a thread, abandoned past the limit.
    std::thread::spawn(move || {
        let _ = tx.send(query.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    let fix = format!(
        "check relay.address (`{host}`) in the config and the box's resolver (`getent hosts {host}`, /etc/resolv.conf)"
    );
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(addrs)) if !addrs.is_empty() => {
            let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            (
                Finding::ok(ID, format!("{host} resolves to {}", list.join(", "))),
                addrs,
            )
        }
        Ok(Ok(_)) => (
            Finding::fail(ID, format!("{host} resolves to no address"), fix),
            Vec::new(),
        ),
        Ok(Err(e)) => (
            Finding::fail(ID, format!("{host} does not resolve: {e}"), fix),
            Vec::new(),
        ),
        Err(_) => (
            Finding::fail(
                ID,
                format!("no answer from the resolver for {host} within {TIMEOUT:?}"),
                fix,
            ),
            Vec::new(),
        ),
    }
}

/// A reserved QUIC version (RFC 9000 §15: 0x?a?a?a?a), which no server
/// speaks, so every server answers with Version Negotiation.
const GREASE_VERSION: u32 = 0x1a2a_3a4a;
/// Servers answer unknown versions only in datagrams of at least this.
const PROBE_LEN: usize = 1200;

/// A QUIC long-header packet of [`GREASE_VERSION`] with connection ids
/// `dcid` and `scid`, padded to 1200 bytes.
pub fn version_probe(dcid: [u8; 8], scid: [u8; 8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROBE_LEN);
    p.push(0xc0);
    p.extend_from_slice(&GREASE_VERSION.to_be_bytes());
    p.push(8);
    p.extend_from_slice(&dcid);
    p.push(8);
    p.extend_from_slice(&scid);
    p.resize(PROBE_LEN, 0);
    p
}

/// Whether `answer` is a Version Negotiation packet for [`version_probe`]
/// `(dcid, scid)`: long header, version 0, the ids swapped back.
pub fn is_version_negotiation(answer: &[u8], dcid: [u8; 8], scid: [u8; 8]) -> bool {
    if answer.len() < 7 + 8 + 8 || answer[0] & 0x80 == 0 || answer[1..5] != [0, 0, 0, 0] {
        return false;
    }
    let (dl, rest) = (usize::from(answer[5]), &answer[6..]);
    if dl != 8 || rest.len() < 9 || rest[..8] != scid {
        return false;
    }
    let sl = usize::from(rest[8]);
    sl == 8 && rest.len() >= 17 && rest[9..17] == dcid
}

/// What the UDP probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpAnswer {
    /// A QUIC server answered, after this long.
    Quic(Duration),
    /// The host said nothing listens there (ICMP port unreachable).
    Refused,
    /// Nothing came back within the time limit (host down, packets
    /// dropped by a firewall, or not a QUIC server).
    Silent,
    /// The probe could not be sent (no route, no socket).
    Local(String),
}

/// Send the version probe to `addr` (three tries within `limit`) and wait
/// for the server's answer.
pub fn udp_answer(addr: SocketAddr, limit: Duration) -> UdpAnswer {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind).and_then(|s| s.connect(addr).map(|()| s)) {
        Ok(s) => s,
        Err(e) => return UdpAnswer::Local(e.to_string()),
    };
    let dcid: [u8; 8] = fastrand::u64(..).to_be_bytes();
    let scid: [u8; 8] = fastrand::u64(..).to_be_bytes();
    let packet = version_probe(dcid, scid);
    let t0 = Instant::now();
    let mut buf = [0u8; 1500];
    for attempt in 1..=3u32 {
        let sent = Instant::now();
        if let Err(e) = sock.send(&packet) {
            return match e.kind() {
                std::io::ErrorKind::ConnectionRefused => UdpAnswer::Refused,
                _ => UdpAnswer::Local(e.to_string()),
            };
        }
        let until = t0 + limit * attempt / 3;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match sock.recv(&mut buf) {
                Ok(n) if is_version_negotiation(&buf[..n], dcid, scid) => {
                    return UdpAnswer::Quic(sent.elapsed());
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return UdpAnswer::Refused;
                }
                Err(_) => break,
            }
        }
    }
    UdpAnswer::Silent
}

/// `relay.udp`: the verdict on [`udp_answer`].
pub fn udp(addr: SocketAddr, answer: &UdpAnswer) -> Finding {
    const ID: &str = "relay.udp";
    match answer {
        UdpAnswer::Quic(t) => Finding::ok(
            ID,
            format!("a QUIC server answers at {addr} ({} ms)", t.as_millis()),
        ),
        UdpAnswer::Refused => Finding::fail(
            ID,
            format!("nothing listens at {addr}: the host answered \"port unreachable\""),
            "check relay.address (host and port), and that the relay runs (`systemctl status voxgate-relay` on the relay)",
        ),
        UdpAnswer::Silent => Finding::fail(
            ID,
            format!("no answer from {addr} on UDP within {TIMEOUT:?}"),
            "the relay is down or a firewall drops UDP: let UDP to the relay's port out (QUIC; TCP alone is not enough), and check relay.address",
        ),
        UdpAnswer::Local(e) => Finding::fail(
            ID,
            format!("cannot send to {addr}: {e}"),
            "check the box's network: an address and a default route (`ip addr`, `ip route`)",
        ),
    }
}

/// Why the handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No answer within the limit.
    NoAnswer,
    /// The relay answered, but its certificate did not verify: not signed
    /// by the fleet CA, not for the server name, or expired.
    NotProven(String),
    /// The relay closed the connection during the handshake.
    Refused(String),
    /// This side could not start one.
    Local(String),
}

/// One QUIC handshake with the relay at `addr` as `server_name`, the relay
/// verified by `verifier`; no client certificate (see
/// `transport::tls::probe_client_config`). Returns quinn's RTT estimate.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    verifier: Arc<dyn ServerCertVerifier>,
    limit: Duration,
) -> Result<Duration, HandshakeFailure> {
    let local = |e: &dyn std::fmt::Display| HandshakeFailure::Local(e.to_string());
    let cfg = crate::transport::tls::probe_client_config(verifier).map_err(|e| local(&e))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| local(&e))?;
    let connecting = endpoint
        .connect_with(cfg, addr, server_name)
        .map_err(|e| local(&e))?;
    let result = match tokio::time::timeout(limit, connecting).await {
        Err(_) => Err(HandshakeFailure::NoAnswer),
        Ok(Ok(conn)) => {
            let rtt = conn.rtt();
            conn.close(0u32.into(), b"voxgate check");
            Ok(rtt)
        }
        Ok(Err(e)) => Err(match e {
            quinn::ConnectionError::TimedOut => HandshakeFailure::NoAnswer,
            quinn::ConnectionError::TransportError(t) => HandshakeFailure::NotProven(t.reason),
            quinn::ConnectionError::ConnectionClosed(c) => {
                HandshakeFailure::Refused(format!("{c}"))
            }
            other => HandshakeFailure::Refused(crate::transport::link::describe(&other)),
        }),
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
    result
}

/// `relay.quic`: the verdict on [`handshake`].
pub fn quic(
    addr: SocketAddr,
    server_name: &str,
    r: &Result<Duration, HandshakeFailure>,
) -> Finding {
    const ID: &str = "relay.quic";
    match r {
        Ok(_) => Finding::ok(
            ID,
            format!("{addr} proved it is `{server_name}` of the fleet CA (QUIC + TLS 1.3)"),
        ),
        Err(HandshakeFailure::NotProven(why)) => Finding::fail(
            ID,
            format!("{addr} answered but could not prove it holds the fleet CA: {why}"),
            "the address reaches another server, or the relay's certificate is not for relay.server_name or not from this fleet's CA: check relay.address, relay.server_name and relay.ca (the fingerprint `voxgate relay init` printed)",
        ),
        Err(HandshakeFailure::NoAnswer) => Finding::fail(
            ID,
            format!("{addr} did not complete a handshake within {TIMEOUT:?}"),
            "the relay is overloaded or packets are lost on the way: check the relay's log and the network's loss",
        ),
        Err(HandshakeFailure::Refused(why)) => Finding::fail(
            ID,
            format!("{addr} closed the handshake: {why}"),
            "read the relay's log for the reason (rate limits, admission)",
        ),
        Err(HandshakeFailure::Local(why)) => Finding::fail(
            ID,
            format!("cannot start a handshake: {why}"),
            "check relay.ca and the box's network",
        ),
    }
}

/// `relay.rtt`: the round trip the handshake measured.
pub fn rtt(rtt: Duration) -> Finding {
    const ID: &str = "relay.rtt";
    let ms = rtt.as_millis();
    let fix = "calls need a short path to the relay: use a relay nearer to the box, or fix the network's delay (a congested uplink, Wi-Fi, a VPN detour)";
    if rtt >= RTT_FAIL {
        Finding::fail(
            ID,
            format!(
                "{ms} ms round trip (fails from {} ms)",
                RTT_FAIL.as_millis()
            ),
            fix,
        )
    } else if rtt >= RTT_WARN {
        Finding::warn(
            ID,
            format!(
                "{ms} ms round trip (warns from {} ms)",
                RTT_WARN.as_millis()
            ),
            fix,
        )
    } else {
        Finding::ok(ID, format!("{ms} ms round trip"))
    }
}

/// The relay's four findings.
#[derive(Debug, Clone)]
pub struct RelayFindings {
    /// `dns`.
    pub dns: Finding,
    /// `relay.udp`.
    pub udp: Finding,
    /// `relay.quic`.
    pub quic: Finding,
    /// `relay.rtt`.
    pub rtt: Finding,
}

impl RelayFindings {
    /// In check order.
    pub fn into_vec(self) -> Vec<Finding> {
        vec![self.dns, self.udp, self.quic, self.rtt]
    }
}

/// Every relay probe against `address` (`host:port`) as `server_name`,
/// verified by `verifier`: a failed step skips the steps after it.
pub fn probe(
    address: &str,
    server_name: &str,
    verifier: Arc<dyn ServerCertVerifier>,
) -> RelayFindings {
    let (dns, addrs) = dns(address);
    let Some(&addr) = addrs.first() else {
        return RelayFindings {
            dns,
            udp: Finding::skip("relay.udp", "dns"),
            quic: Finding::skip("relay.quic", "dns"),
            rtt: Finding::skip("relay.rtt", "dns"),
        };
    };
    let answer = udp_answer(addr, TIMEOUT);
    let udp = udp(addr, &answer);
    if udp.status == Status::Fail {
        return RelayFindings {
            dns,
            udp,
            quic: Finding::skip("relay.quic", "relay.udp"),
            rtt: Finding::skip("relay.rtt", "relay.udp"),
        };
    }
    let shook = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HandshakeFailure::Local(e.to_string()))
        .and_then(|rt| rt.block_on(handshake(addr, server_name, verifier, TIMEOUT)));
    let quic = quic(addr, server_name, &shook);
    let rtt = match shook {
        Ok(t) => rtt(t),
        Err(_) => Finding::skip("relay.rtt", "relay.quic"),
    };
    RelayFindings {
        dns,
        udp,
        quic,
        rtt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation_is_recognised_by_its_swapped_ids() {
        let (d, s) = ([1u8; 8], [2u8; 8]);
        let p = version_probe(d, s);
        assert_eq!(p.len(), 1200);
        assert_eq!(&p[1..5], &GREASE_VERSION.to_be_bytes());
        let mut vn = vec![0x80 | 0x2a, 0, 0, 0, 0, 8];
        vn.extend_from_slice(&s);
        vn.push(8);
        vn.extend_from_slice(&d);
        vn.extend_from_slice(&1u32.to_be_bytes());
        assert!(is_version_negotiation(&vn, d, s));
        assert!(!is_version_negotiation(&vn, s, d));
        assert!(!is_version_negotiation(&vn[..10], d, s));
        let mut v1 = vn.clone();
        v1[4] = 1;
        assert!(!is_version_negotiation(&v1, d, s));
        assert!(!is_version_negotiation(&[], d, s));
    }

    #[test]
    fn nothing_listening_is_refused_not_unproven() {
        // A port bound and closed again: the kernel answers "unreachable".
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let a = udp_answer(addr, Duration::from_secs(2));
        assert_eq!(a, UdpAnswer::Refused);
        let f = udp(addr, &a);
        assert_eq!(f.status, Status::Fail);
        assert!(f.message.contains("nothing listens"), "{f:?}");
    }

    #[test]
    fn a_silent_port_is_no_answer() {
        // Bound but never answering: datagrams vanish.
        let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = quiet.local_addr().unwrap();
        let a = udp_answer(addr, Duration::from_millis(300));
        assert_eq!(a, UdpAnswer::Silent);
    }

    #[test]
    fn rtt_and_handshake_verdicts() {
        assert_eq!(rtt(Duration::from_millis(20)).status, Status::Ok);
        assert_eq!(rtt(RTT_WARN).status, Status::Warn);
        assert_eq!(rtt(RTT_FAIL).status, Status::Fail);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let not = quic(a, "r", &Err(HandshakeFailure::NotProven("x".into())));
        assert!(not.message.contains("answered but could not prove"));
        let none = quic(a, "r", &Err(HandshakeFailure::NoAnswer));
        assert!(!none.message.contains("prove"), "{none:?}");
        assert_eq!(quic(a, "r", &Ok(Duration::ZERO)).status, Status::Ok);
    }

    #[test]
    fn addresses_need_no_resolver_and_bad_names_fail() {
        let (f, a) = dns("127.0.0.1:4433");
        assert_eq!((f.status, a.len()), (Status::Ok, 1));
        let (f, a) = dns("relay.example.invalid:4433");
        assert_eq!(f.status, Status::Fail, "{f:?}");
        assert!(a.is_empty());
        assert_eq!(dns("no-port").0.status, Status::Fail);
    }
}
