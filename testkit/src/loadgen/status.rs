//! What the generator reports about its connections ([`super::Generator::status`]).

use quinn_proto::Connection;

/// What the generator knows about its connections.
#[derive(Debug, Default, Clone)]
pub struct Status {
    /// Sessions streaming (welcome received, flow opened, not closed).
    pub streaming: usize,
    /// Sessions still in the handshake.
    pub setting_up: usize,
    /// Sessions that failed or closed before streaming, and the first reason.
    pub failed: usize,
    pub first_error: Option<String>,
    /// DATAGRAM frames transmitted, over every live connection.
    pub datagrams_tx: u64,
    /// Over the streaming connections: datagrams handed to quinn and not
    /// (yet) transmitted (queued in its send buffer, or dropped from it
    /// to make room for newer ones).
    pub unsent: u64,
    /// Over the streaming connections: packets quinn's loss detection
    /// declared lost, the smallest congestion window (bytes) and the
    /// largest smoothed RTT (µs): how far the relay's queue had grown.
    pub lost_packets: u64,
    pub min_cwnd: u64,
    pub max_rtt_us: u64,
}

impl Status {
    /// Adds one live connection (`handed`: datagrams handed to it).
    pub(super) fn add(&mut self, conn: &Connection, handed: u64, streaming: bool) {
        let st = conn.stats();
        self.datagrams_tx += st.frame_tx.datagram;
        if !streaming {
            return;
        }
        self.unsent += handed.saturating_sub(st.frame_tx.datagram);
        self.lost_packets += st.path.lost_packets;
        self.min_cwnd = match self.min_cwnd {
            0 => st.path.cwnd,
            m => m.min(st.path.cwnd),
        };
        self.max_rtt_us = self.max_rtt_us.max(st.path.rtt.as_micros() as u64);
    }
}
