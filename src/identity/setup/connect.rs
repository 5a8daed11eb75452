//! Setup's connection to the relay (ALPN `voxgate-enroll/1`): resolve,
//! handshake with the pinned fleet CA, then the one `enroll` exchange.
//! Each way it can fail is its own [`ConnectError`], so that an
//! unreachable relay is reported as unreachable (no answer; ICMP "port
//! unreachable" comes from the UDP probe `cli::setup` runs first, with
//! `diagnose`'s), and only a relay that answered with a TLS alert is
//! reported as one that could not prove it holds the fleet CA. Nothing is
//! sent before the handshake has checked the CA.

use crate::proto::control::{Enroll, Message};
use crate::telemetry::Secret;
use crate::transport::framed::{self, FrameReader};
use crate::transport::tls::{self, PinnedCaVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long the QUIC handshake may take before the relay counts as not
/// answering.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why setup could not reach the relay or enroll with it. Every message
/// says what to do next; none holds the token.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The relay's name does not resolve.
    #[error(
        "cannot resolve {relay}: {source}; check the relay address and this box's DNS (/etc/resolv.conf)"
    )]
    Resolve {
        /// HOST:PORT as given.
        relay: String,
        /// The resolver's answer.
        source: std::io::Error,
    },
    /// The name resolves to nothing.
    #[error("{0} resolves to no address; check the relay address and this box's DNS")]
    NoAddress(String),
    /// An ICMP "port unreachable" came back: the host is there, nothing
    /// listens on the port.
    #[error(
        "the relay at {0} is unreachable: nothing listens on that UDP port (the host answered \"port unreachable\"); check the port, and that the relay is running. Nothing was sent"
    )]
    Refused(SocketAddr),
    /// No answer at all to the handshake.
    #[error(
        "the relay at {0} is unreachable: no answer (the host is down, the address is wrong, or a firewall drops UDP to it). Nothing was sent"
    )]
    NoAnswer(SocketAddr),
    /// The relay answered, but its certificate chain holds no CA with the
    /// pinned fingerprint (or names another server).
    #[error(
        "the relay at {addr} answered but could not prove it holds the fleet CA {fingerprint} ({why}); nothing was sent. Check the CA fingerprint and the server name (--server-name)"
    )]
    Certificate {
        /// The relay's address.
        addr: SocketAddr,
        /// The pinned fingerprint.
        fingerprint: String,
        /// What TLS said.
        why: String,
    },
    /// The connection failed in another way.
    #[error("the connection to the relay at {addr} failed: {why}")]
    Connection {
        /// The relay's address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The relay refused the enrollment (its audit log says why).
    #[error(
        "{0}. Check the token for a typo and that it was issued for this device id; a used or expired token needs a new one"
    )]
    EnrollRefused(String),
    /// The relay did not answer the enrollment in time.
    #[error("the relay did not answer the enrollment within 10 s; run setup again")]
    EnrollTimeout,
    /// The relay's answer was not usable.
    #[error("the relay's answer was not usable: {0}")]
    BadAnswer(String),
    /// Local failure (socket, TLS configuration).
    #[error("cannot connect: {0}")]
    Local(String),
}

/// The relay's first address.
pub async fn resolve(relay: &str) -> Result<SocketAddr, ConnectError> {
    tokio::net::lookup_host(relay)
        .await
        .map_err(|source| ConnectError::Resolve {
            relay: relay.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ConnectError::NoAddress(relay.to_string()))
}

/// Whether the relay at `addr` holds the pinned CA: a handshake that
/// checks the CA and nothing else ([`tls::probe_client_config`]: no client
/// certificate, so the relay records no enrollment attempt and no
/// session). Returns quinn's RTT estimate.
pub async fn check(
    addr: SocketAddr,
    server_name: &str,
    verifier: Arc<PinnedCaVerifier>,
    fingerprint: &str,
) -> Result<Duration, ConnectError> {
    let endpoint = quinn::Endpoint::client(unspecified(addr))
        .map_err(|e| ConnectError::Local(e.to_string()))?;
    let cfg = tls::probe_client_config(verifier).map_err(|e| ConnectError::Local(e.to_string()))?;
    let c = handshake(&endpoint, cfg, addr, server_name, fingerprint).await?;
    let rtt = c.rtt();
    c.close(0u32.into(), b"checked");
    endpoint.wait_idle().await;
    Ok(rtt)
}

/// The unspecified address of `addr`'s family, any port.
pub fn unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// Handshake with the relay at `addr` with `cfg` (which trusts only the
/// pinned CA).
async fn handshake(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    fingerprint: &str,
) -> Result<quinn::Connection, ConnectError> {
    let connecting = endpoint
        .connect_with(cfg, addr, server_name)
        .map_err(|e| ConnectError::Local(e.to_string()))?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::NoAnswer(addr)),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(classify(addr, fingerprint, &e)),
    }
}

/// What a failed handshake means.
fn classify(addr: SocketAddr, fingerprint: &str, e: &quinn::ConnectionError) -> ConnectError {
    use quinn::ConnectionError as E;
    // TLS alerts are QUIC's CRYPTO_ERROR range (0x100-0x1ff).
    let crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        E::TimedOut => ConnectError::NoAnswer(addr),
        E::TransportError(t) if crypto(u64::from(t.code)) => ConnectError::Certificate {
            addr,
            fingerprint: fingerprint.to_string(),
            why: t.to_string(),
        },
        E::ConnectionClosed(c) if crypto(u64::from(c.error_code)) => ConnectError::Certificate {
            addr,
            fingerprint: fingerprint.to_string(),
            why: c.to_string(),
        },
        other => ConnectError::Connection {
            addr,
            why: crate::transport::link::describe(other),
        },
    }
}

/// What one enrollment needs.
#[derive(Debug)]
pub struct Request<'a> {
    /// HOST:PORT.
    pub relay: &'a str,
    /// The relay's TLS name.
    pub server_name: &'a str,
    /// The pinned fingerprint (for messages).
    pub fingerprint: &'a str,
    /// The device id asked for.
    pub device: &'a str,
    /// The one-time token.
    pub token: &'a Secret<String>,
    /// DER of the CSR.
    pub csr: &'a [u8],
}

/// Reach the relay, check its CA, then send the token and the CSR.
/// Returns the certificate's DER and expiry.
pub async fn enroll(
    r: &Request<'_>,
    verifier: Arc<PinnedCaVerifier>,
) -> Result<(Vec<u8>, i64), ConnectError> {
    let addr = resolve(r.relay).await?;
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| ConnectError::Local(e.to_string()))?;
    let cfg =
        tls::enroll_client_config(verifier).map_err(|e| ConnectError::Local(e.to_string()))?;
    let conn = handshake(&endpoint, cfg, addr, r.server_name, r.fingerprint).await?;
    let failed = |e: &dyn std::fmt::Display| ConnectError::Connection {
        addr,
        why: e.to_string(),
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
    let csr_b64 = B64.encode(r.csr);
    framed::send(
        &mut send,
        &Message::Enroll(Enroll {
            token: r.token.expose(),
            device: r.device,
            csr: &csr_b64,
        }),
    )
    .await
    .map_err(|e| failed(&e))?;
    let mut reader = FrameReader::new(recv);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        reader.next(|m| match m {
            Message::Enrolled(e) => Ok((e.cert.to_string(), e.not_after)),
            Message::Error(e) => Err(ConnectError::EnrollRefused(e.message.to_string())),
            _ => Err(ConnectError::BadAnswer("an unexpected message".into())),
        }),
    )
    .await
    .map_err(|_| ConnectError::EnrollTimeout)?;
    let (cert_b64, not_after) = match answer {
        Ok(inner) => inner?,
        Err(e) => match conn.close_reason() {
            Some(r) => {
                return Err(ConnectError::EnrollRefused(format!(
                    "enrollment refused: {}",
                    crate::transport::link::describe(&r)
                )));
            }
            None => return Err(failed(&e)),
        },
    };
    conn.close(0u32.into(), b"enrolled");
    endpoint.wait_idle().await;
    let der = B64
        .decode(cert_b64)
        .map_err(|_| ConnectError::BadAnswer("the certificate is not base64".into()))?;
    Ok((der, not_after))
}
