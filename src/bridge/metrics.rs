//! The phone bridge's metrics: SIP admission and calls, and the media of
//! every call leg. The gateway registers them into its registry.

use crate::telemetry::metrics::{Counter, Gauge, Histogram, Registry};
use std::sync::Arc;

/// The bridge's counters, gauges and histogram.
#[derive(Debug)]
pub struct BridgeMetrics {
    /// SIP requests dropped unanswered (outside the allowlist, banned, unparsable).
    pub sip_dropped: Arc<Counter>,
    /// SIP TCP connections closed at accept (not allowed, banned, too many
    /// from one source) or for sending no SIP message in time.
    pub sip_tcp_refused: Arc<Counter>,
    /// Failed SIP authentications (the first, credential-less challenge is not one).
    pub sip_auth_failures: Arc<Counter>,
    /// Sources banned for too many failed authentications.
    pub sip_bans: Arc<Counter>,
    /// Extensions with at least one registered phone.
    pub sip_registered: Arc<Gauge>,
    /// Calls set up through the bridge (both directions).
    pub sip_calls: Arc<Counter>,
    /// Calls in progress.
    pub sip_calls_active: Arc<Gauge>,
    /// Requests answered with a stateless 503 because the SIP transaction table was full.
    pub sip_transactions_full: Arc<Counter>,
    /// Live SIP transactions (including completed ones kept for retransmissions).
    pub sip_transactions: Arc<Gauge>,
    /// RTP packets received from phones (all calls).
    pub phone_rtp_in: Arc<Counter>,
    /// Call datagrams sent to the relay (all calls).
    pub phone_up_sent: Arc<Counter>,
    /// Phone frames concealed on the uplink (lost or late at the jitter buffer).
    pub phone_up_concealed: Arc<Counter>,
    /// Call datagrams received from the relay.
    pub phone_relay_in: Arc<Counter>,
    /// RTP packets sent to phones.
    pub phone_rtp_out: Arc<Counter>,
    /// Relay frames concealed towards phones (lost or late: FEC or PLC played).
    pub phone_down_concealed: Arc<Counter>,
    /// Datagrams on a call's RTP port from an address the call does not
    /// take RTP from (another host spraying the port range), dropped.
    pub phone_rtp_refused: Arc<Counter>,
    /// RFC 4733 event packets sent to phones (digits from the relay), counted when sent.
    pub phone_dtmf_sent: Arc<Counter>,
    /// Key presses received from phones (RFC 4733, each reported once).
    pub phone_keys_received: Arc<Counter>,
    /// Time from a phone's RTP packet arriving to the datagram carrying its
    /// audio handed to QUIC (jitter buffer and transcoding included).
    pub phone_to_send: Arc<Histogram>,
    /// Time from a relay datagram arriving to the phone RTP packet carrying
    /// its audio sent (jitter buffer and transcoding included).
    pub phone_relay_to_rtp: Arc<Histogram>,
}

impl BridgeMetrics {
    /// Register the bridge's metrics in `r`.
    pub fn register(r: &mut Registry) -> Arc<Self> {
        Arc::new(BridgeMetrics {
            sip_dropped: r.counter(
                "voxgate_sip_dropped_total",
                "SIP messages dropped unanswered (not allowed, banned, malformed)",
            ),
            sip_tcp_refused: r.counter(
                "voxgate_sip_tcp_refused_total",
                "SIP TCP connections refused at accept or closed for no message in time",
            ),
            sip_auth_failures: r.counter(
                "voxgate_sip_auth_failures_total",
                "Failed SIP digest authentications",
            ),
            sip_bans: r.counter("voxgate_sip_bans_total", "SIP sources banned"),
            sip_registered: r.gauge(
                "voxgate_sip_registered_extensions",
                "Extensions with a registered phone",
            ),
            sip_calls: r.counter("voxgate_sip_calls_total", "Calls through the phone bridge"),
            sip_calls_active: r.gauge("voxgate_sip_calls_active", "Bridged calls in progress"),
            sip_transactions_full: r.counter(
                "voxgate_sip_transactions_full_total",
                "SIP requests refused with 503 because the transaction table was full",
            ),
            sip_transactions: r.gauge(
                "voxgate_sip_transactions",
                "Live SIP transactions, completed ones kept for retransmissions included",
            ),
            phone_rtp_in: r.counter(
                "voxgate_phone_rtp_received_total",
                "RTP packets received from phones",
            ),
            phone_up_sent: r.counter(
                "voxgate_phone_uplink_datagrams_total",
                "Call datagrams sent to the relay",
            ),
            phone_up_concealed: r.counter(
                "voxgate_phone_uplink_concealed_total",
                "Phone frames concealed (lost or late) before transcoding",
            ),
            phone_relay_in: r.counter(
                "voxgate_phone_relay_received_total",
                "Call datagrams received from the relay",
            ),
            phone_rtp_out: r.counter("voxgate_phone_rtp_sent_total", "RTP packets sent to phones"),
            phone_down_concealed: r.counter(
                "voxgate_phone_downlink_concealed_total",
                "Relay frames concealed (lost or late) towards phones",
            ),
            phone_rtp_refused: r.counter(
                "voxgate_phone_rtp_refused_total",
                "Datagrams on a call's RTP port from an address other than its phone's, dropped",
            ),
            phone_dtmf_sent: r.counter(
                "voxgate_phone_dtmf_packets_sent_total",
                "RFC 4733 event packets sent to phones",
            ),
            phone_keys_received: r.counter(
                "voxgate_phone_keys_received_total",
                "Key presses (RFC 4733) received from phones",
            ),
            phone_to_send: r.histogram(
                "voxgate_phone_to_send_seconds",
                "Time from a phone's RTP packet arriving to its audio handed to QUIC",
            ),
            phone_relay_to_rtp: r.histogram(
                "voxgate_phone_relay_to_rtp_seconds",
                "Time from a relay datagram arriving to its audio sent to the phone as RTP",
            ),
        })
    }
}
