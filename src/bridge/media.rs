//! One call's media task: the phone's RTP socket on one side, the relay
//! connection on the other, and a [`PhoneLeg`] in between, clocked by a
//! packet-time ticker.
//!
//! Symmetric RTP: packets go to the address the phone's RTP comes from (the
//! SDP address until the first packet arrives), so phones behind a LAN NAT
//! work. Packets from any other address after that are dropped.

use crate::gateway::metrics::GatewayMetrics;
use crate::media::dtmf::{Digit, KeyPress};
use crate::media::flow;
use crate::media::jitter::Push;
use crate::media::phone::{FromPhone, PhoneLeg};
use crate::media::ports::PortPair;
use crate::transport::client::ConnSlot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;

/// Commands from the bridge.
#[derive(Debug)]
pub enum MediaCmd {
    /// Play a digit to the phone.
    Digit(Digit, u32),
    /// The far end is on hold (`true`) or back (`false`): stop or resume sending to the phone.
    Hold(bool),
    /// The phone's SDP (re-INVITE) names this RTP address: send there
    /// until its packets come from elsewhere.
    Remote(SocketAddr),
}

/// What a media task reports to the bridge.
#[derive(Debug)]
pub enum MediaEvent {
    /// The phone pressed a key.
    Key(u32, KeyPress),
    /// The task ended; the port pair goes back to the pool.
    Done(u32, PortPair),
}

/// Everything a media task owns.
pub struct MediaTask {
    /// The bridge's call id.
    pub call: u32,
    /// The call leg.
    pub leg: PhoneLeg,
    /// The leased RTP/RTCP pair.
    pub pair: PortPair,
    /// Where the phone said to send (SDP); replaced by the first packet's source.
    pub remote: Option<SocketAddr>,
    /// The relay connection.
    pub slot: Arc<ConnSlot>,
    /// Relay datagrams of this call's downlink flow.
    pub from_relay: mpsc::Receiver<bytes::Bytes>,
    /// Commands.
    pub cmds: mpsc::Receiver<MediaCmd>,
    /// Reports.
    pub events: mpsc::Sender<MediaEvent>,
    /// The gateway's counters (phone RTP, relay datagrams, concealment, latency).
    pub metrics: Arc<GatewayMetrics>,
}

/// Arrival times of the last phone packets, by sequence number, for the
/// phone-to-QUIC latency histogram.
const ARRIVALS: usize = 64;

impl std::fmt::Debug for MediaTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaTask")
            .field("call", &self.call)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl MediaTask {
    /// Run until the bridge drops the command sender.
    pub async fn run(mut self) {
        let origin = tokio::time::Instant::now();
        let sock = match self
            .pair
            .rtp
            .try_clone()
            .and_then(tokio::net::UdpSocket::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(call = self.call, error = %e, "RTP socket unusable; call has no audio");
                let _ = self
                    .events
                    .send(MediaEvent::Done(self.call, self.pair))
                    .await;
                return;
            }
        };
        let mut tick = tokio::time::interval(self.leg.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = [0u8; 2048];
        let mut out = [0u8; 1500];
        let mut latched = false;
        let mut held = false;
        let mut conn: Option<quinn::Connection> = None;
        let mut conn_gen = 0u64;
        let mut arrivals = [(0u16, Duration::ZERO); ARRIVALS];
        let mut seen = self.leg.stats();
        let m = self.metrics.clone();
        loop {
            if let Some(c) = self.slot.current_if_changed(&mut conn_gen) {
                conn = c;
            }
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, src)) = r else { continue };
                    if latched && Some(src) != self.remote {
                        continue;
                    }
                    let now = origin.elapsed();
                    m.phone_rtp_in.inc();
                    match self.leg.push_phone(now, &buf[..n], &mut out) {
                        Ok(FromPhone::Forward(len)) => {
                            if let Some(c) = &conn
                                && c.send_datagram(bytes::Bytes::copy_from_slice(&out[..len])).is_ok()
                            {
                                m.phone_up_sent.inc();
                                m.phone_to_send.observe_us(origin.elapsed().saturating_sub(now).as_micros() as u64);
                            }
                        }
                        Ok(FromPhone::Buffered(Push::Accepted)) => {
                            if let Ok(p) = crate::media::rtp::Packet::new_checked(&buf[..n]) {
                                let seq = p.sequence();
                                arrivals[usize::from(seq) % ARRIVALS] = (seq, now);
                            }
                        }
                        Ok(FromPhone::Key(k)) => {
                            m.phone_keys_received.inc();
                            let _ = self.events.try_send(MediaEvent::Key(self.call, k));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            debug!(call = self.call, error = %e, "phone packet dropped");
                            continue;
                        }
                    }
                    if !latched {
                        latched = true;
                        self.remote = Some(src);
                    }
                }
                d = self.from_relay.recv() => {
                    let Some(d) = d else { break };
                    m.phone_relay_in.inc();
                    if let Ok((_, pkt)) = flow::decode(&d) {
                        self.leg.push_relay(origin.elapsed(), &pkt);
                    }
                }
                c = self.cmds.recv() => match c {
                    Some(MediaCmd::Digit(d, ms)) => { self.leg.send_digit(d, ms); }
                    Some(MediaCmd::Hold(h)) => held = h,
                    Some(MediaCmd::Remote(to)) => {
                        if self.remote != Some(to) {
                            self.remote = Some(to);
                            latched = false;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let now = origin.elapsed();
                    if let Some(len) = self.leg.poll_uplink(now, &mut out)
                        && let Some(c) = &conn
                        && c.send_datagram(bytes::Bytes::copy_from_slice(&out[..len])).is_ok()
                    {
                        m.phone_up_sent.inc();
                        if let Some(seq) = self.leg.uplink_played_seq()
                            && let (s, at) = arrivals[usize::from(seq) % ARRIVALS]
                            && s == seq
                        {
                            m.phone_to_send.observe_us(origin.elapsed().saturating_sub(at).as_micros() as u64);
                        }
                    }
                    let dtmf_before = self.leg.stats().dtmf_packets;
                    if let Some(len) = self.leg.poll_downlink(now, &mut out)
                        && !held
                        && let Some(to) = self.remote
                        && sock.send_to(&out[..len], to).await.is_ok()
                    {
                        m.phone_rtp_out.inc();
                        if self.leg.stats().dtmf_packets > dtmf_before {
                            m.phone_dtmf_sent.inc();
                        }
                    }
                    let st = self.leg.stats();
                    m.phone_up_concealed.add(st.uplink_concealed - seen.uplink_concealed);
                    m.phone_down_concealed.add(st.downlink_lost - seen.downlink_lost);
                    seen = st;
                }
            }
        }
        drop(sock);
        let _ = self
            .events
            .send(MediaEvent::Done(self.call, self.pair))
            .await;
    }
}
