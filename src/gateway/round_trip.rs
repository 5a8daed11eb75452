//! A round trip through the relay: one session with the device's
//! certificate, an uplink flow, the `echo` control message (the relay sends
//! this session's flow straight back on the downlink flow, for this session
//! only), then a train of small Opus packets, each matched with its echo by
//! sequence number. `voxgate setup` reports the measured round-trip time
//! and loss before it installs the identity.

use crate::media::{flow, rtp};
use crate::proto::control::{Direction, Echo, FlowOpen, Hello, Message};
use crate::transport::framed::{self, FrameReader};
use crate::transport::tls::{self, DeviceIdentity};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The uplink flow of the probe.
const PROBE_FLOW: u64 = 2;
/// A 20 ms Opus silence frame (TOC 0xf8: CELT fullband 20 ms, one frame).
const SILENCE: [u8; 3] = [0xf8, 0xff, 0xfe];

/// Why the round trip could not be measured.
#[derive(Debug, Error)]
pub enum RoundTripError {
    /// The TLS configuration could not be made.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The connection failed (the relay refused the new certificate,
    /// or went away).
    #[error("the relay session failed: {0}")]
    Connection(String),
    /// The relay refused the echo or the session.
    #[error("the relay refused the echo request: {0}")]
    Refused(String),
    /// The relay did not answer in time.
    #[error("the relay did not answer the echo request within 5 s")]
    NoAnswer,
}

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundTrip {
    /// Packets sent.
    pub sent: u32,
    /// Packets that came back.
    pub received: u32,
    /// Fastest round trip.
    pub min: Duration,
    /// Mean round trip.
    pub mean: Duration,
    /// Slowest round trip.
    pub max: Duration,
}

impl RoundTrip {
    /// Lost packets, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.sent - self.received.min(self.sent)) / f64::from(self.sent)
    }
}

/// Measure: `count` packets, one every `interval`, echoed by the relay at
/// `addr` (verified against `ca`) for the device `identity`.
pub async fn measure(
    addr: SocketAddr,
    server_name: &str,
    ca: &[CertificateDer<'static>],
    identity: &dyn DeviceIdentity,
    count: u16,
    interval: Duration,
) -> Result<RoundTrip, RoundTripError> {
    let conn_err = |e: &dyn std::fmt::Display| RoundTripError::Connection(e.to_string());
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| conn_err(&e))?;
    let cfg = tls::client_config(ca, identity)?;
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint
            .connect_with(cfg, addr, server_name)
            .map_err(|e| conn_err(&e))?,
    )
    .await
    .map_err(|_| RoundTripError::NoAnswer)?
    .map_err(|e| RoundTripError::Connection(crate::transport::link::describe(&e)))?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| conn_err(&e))?;
    let mut reader = FrameReader::new(recv);
    let mut caps = serde_json_core::heapless::Vec::new();
    let _ = caps.push("opus");
    let ssrc = fastrand::u32(..);
    for m in [
        Message::Hello(Hello {
            device: identity.device_id(),
            version: env!("CARGO_PKG_VERSION"),
            caps,
        }),
        Message::FlowOpen(FlowOpen {
            flow: PROBE_FLOW,
            dir: Direction::Up,
            ssrc,
            codec: "opus",
            frame_ms: 20,
        }),
        Message::Echo(Echo {
            flow: PROBE_FLOW,
            on: true,
        }),
    ] {
        framed::send(&mut send, &m)
            .await
            .map_err(|e| conn_err(&e))?;
    }
    // Welcome, the downlink's flow_open, stats: until the echo's answer.
    let acked = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let r = reader
                .next(|m| match m {
                    Message::Echo(e) if e.on => Ok(true),
                    Message::Error(e) => Err(RoundTripError::Refused(e.message.to_string())),
                    _ => Ok(false),
                })
                .await
                .map_err(|e| match conn.close_reason() {
                    Some(r) => RoundTripError::Connection(crate::transport::link::describe(&r)),
                    None => conn_err(&e),
                })??;
            if r {
                return Ok::<_, RoundTripError>(());
            }
        }
    })
    .await;
    acked.map_err(|_| RoundTripError::NoAnswer)??;

    let mut sent_at: Vec<Option<Instant>> = vec![None; usize::from(count)];
    let mut rtts: Vec<Duration> = Vec::with_capacity(usize::from(count));
    let mut buf = [0u8; 64];
    let mut tick = tokio::time::interval(interval);
    let mut next = 0u16;
    let base_seq = fastrand::u16(..);
    let drain_until = |last: Instant| last + Duration::from_secs(1);
    let mut last_send = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick(), if next < count => {
                let repr = rtp::Repr {
                    marker: next == 0,
                    payload_type: 111,
                    sequence: base_seq.wrapping_add(next),
                    timestamp: u32::from(next) * 960,
                    ssrc,
                };
                if let Some(n) = flow::encode(PROBE_FLOW, &repr, &SILENCE, &mut buf) {
                    last_send = Instant::now();
                    sent_at[usize::from(next)] = Some(last_send);
                    let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(&buf[..n]));
                }
                next += 1;
            }
            d = conn.read_datagram() => {
                let Ok(d) = d else { break };
                let Ok((_, pkt)) = flow::decode(&d) else { continue };
                let i = usize::from(pkt.sequence().wrapping_sub(base_seq));
                if let Some(at) = sent_at.get_mut(i).and_then(Option::take) {
                    rtts.push(at.elapsed());
                }
            }
            _ = tokio::time::sleep_until(drain_until(last_send).into()), if next >= count => break,
        }
        if next >= count && rtts.len() == usize::from(count) {
            break;
        }
    }
    let _ = framed::send(
        &mut send,
        &Message::Echo(Echo {
            flow: PROBE_FLOW,
            on: false,
        }),
    )
    .await;
    conn.close(0u32.into(), b"round trip measured");
    endpoint.wait_idle().await;
    let received = rtts.len() as u32;
    let total: Duration = rtts.iter().sum();
    Ok(RoundTrip {
        sent: u32::from(count),
        received,
        min: rtts.iter().min().copied().unwrap_or_default(),
        mean: total.checked_div(received.max(1)).unwrap_or_default(),
        max: rtts.iter().max().copied().unwrap_or_default(),
    })
}
