//! The gateway's metrics, registered once.

use crate::telemetry::metrics::{Counter, Gauge, Histogram, Registry};
use std::sync::Arc;

/// Every gateway counter, shared by the audio threads and network tasks.
#[derive(Debug)]
pub struct GatewayMetrics {
    /// The registry behind the Prometheus endpoint.
    pub registry: Arc<Registry>,
    /// 48 kHz frames assembled from the microphone.
    pub frames_captured: Arc<Counter>,
    /// Frames Opus-encoded.
    pub frames_encoded: Arc<Counter>,
    /// Datagrams handed to QUIC.
    pub frames_sent: Arc<Counter>,
    /// Frames dropped because no relay connection was up or QUIC refused them.
    pub frames_unsent: Arc<Counter>,
    /// Samples dropped because the capture ring was full.
    pub capture_overruns: Arc<Counter>,
    /// Capture device (re)openings.
    pub capture_opens: Arc<Counter>,
    /// Downlink packets received.
    pub down_received: Arc<Counter>,
    /// Downlink frames missing at playout (recovered by FEC or concealed).
    pub down_lost: Arc<Counter>,
    /// Downlink packets that arrived after their playout time.
    pub down_late: Arc<Counter>,
    /// Downlink frames concealed by PLC.
    pub down_concealed: Arc<Counter>,
    /// Downlink frames recovered from FEC.
    pub down_fec: Arc<Counter>,
    /// Downlink duplicates dropped.
    pub down_duplicates: Arc<Counter>,
    /// Frames the jitter buffer dropped to shrink its delay.
    pub down_skipped: Arc<Counter>,
    /// Jitter buffer restarts (timestamp jumps, long silence).
    pub down_resyncs: Arc<Counter>,
    /// Samples of silence the speaker got because the ring was empty.
    pub playback_underruns: Arc<Counter>,
    /// Playback device (re)openings.
    pub playback_opens: Arc<Counter>,
    /// Uplink packets the relay reported lost.
    pub up_lost: Arc<Gauge>,
    /// Uplink interarrival jitter reported by the relay, seconds.
    pub up_jitter: Arc<Gauge>,
    /// Downlink interarrival jitter, seconds.
    pub down_jitter: Arc<Gauge>,
    /// Current jitter buffer target delay, seconds.
    pub jitter_target: Arc<Gauge>,
    /// QUIC round-trip time, seconds.
    pub rtt: Arc<Gauge>,
    /// 1 while connected to the relay.
    pub connected: Arc<Gauge>,
    /// Successful connections to the relay.
    pub connects: Arc<Counter>,
    /// Time from the capture callback to the datagram handed to QUIC.
    pub capture_to_send: Arc<Histogram>,
    /// SIP requests dropped unanswered (outside the allowlist, banned, unparsable).
    pub sip_dropped: Arc<Counter>,
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
    /// RFC 4733 event packets sent to phones (digits from the relay), counted when sent.
    pub phone_dtmf_sent: Arc<Counter>,
    /// Key presses received from phones (RFC 4733, each reported once).
    pub phone_keys_received: Arc<Counter>,
    /// Time from a phone's RTP packet arriving to the datagram carrying its
    /// audio handed to QUIC (jitter buffer and transcoding included).
    pub phone_to_send: Arc<Histogram>,
}

impl GatewayMetrics {
    /// Register every metric.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::default();
        let m = GatewayMetrics {
            frames_captured: r.counter(
                "voxgate_frames_captured_total",
                "Audio frames assembled from the capture device",
            ),
            frames_encoded: r.counter(
                "voxgate_frames_encoded_total",
                "Audio frames encoded with Opus",
            ),
            frames_sent: r.counter(
                "voxgate_frames_sent_total",
                "Uplink datagrams handed to QUIC",
            ),
            frames_unsent: r.counter(
                "voxgate_frames_unsent_total",
                "Uplink frames dropped while disconnected or refused by QUIC",
            ),
            capture_overruns: r.counter(
                "voxgate_capture_overrun_samples_total",
                "Captured samples dropped because the ring was full",
            ),
            capture_opens: r.counter("voxgate_capture_opens_total", "Capture device openings"),
            down_received: r.counter(
                "voxgate_downlink_packets_received_total",
                "Downlink RTP packets received",
            ),
            down_lost: r.counter(
                "voxgate_downlink_frames_lost_total",
                "Downlink frames missing at playout time",
            ),
            down_late: r.counter(
                "voxgate_downlink_packets_late_total",
                "Downlink packets that arrived after their playout time",
            ),
            down_concealed: r.counter(
                "voxgate_downlink_frames_concealed_total",
                "Downlink frames concealed by Opus PLC",
            ),
            down_fec: r.counter(
                "voxgate_downlink_frames_fec_recovered_total",
                "Downlink frames recovered from Opus in-band FEC",
            ),
            down_duplicates: r.counter(
                "voxgate_downlink_packets_duplicate_total",
                "Duplicate downlink packets dropped",
            ),
            down_skipped: r.counter(
                "voxgate_downlink_frames_skipped_total",
                "Downlink frames dropped by the jitter buffer to shrink its delay",
            ),
            down_resyncs: r.counter(
                "voxgate_downlink_jitter_resyncs_total",
                "Jitter buffer restarts after timestamp jumps or silence",
            ),
            playback_underruns: r.counter(
                "voxgate_playback_underrun_samples_total",
                "Silence samples played because the playback ring was empty",
            ),
            playback_opens: r.counter("voxgate_playback_opens_total", "Playback device openings"),
            up_lost: r.gauge(
                "voxgate_uplink_packets_lost",
                "Uplink packets the relay reports lost on the current flow",
            ),
            up_jitter: r.gauge(
                "voxgate_uplink_jitter_seconds",
                "Uplink interarrival jitter reported by the relay",
            ),
            down_jitter: r.gauge(
                "voxgate_downlink_jitter_seconds",
                "Downlink interarrival jitter",
            ),
            jitter_target: r.gauge(
                "voxgate_jitter_buffer_target_seconds",
                "Jitter buffer target playout delay",
            ),
            rtt: r.gauge("voxgate_rtt_seconds", "QUIC round-trip time to the relay"),
            connected: r.gauge(
                "voxgate_relay_connected",
                "1 while a relay connection is up",
            ),
            connects: r.counter(
                "voxgate_relay_connects_total",
                "Successful relay connections",
            ),
            capture_to_send: r.histogram(
                "voxgate_capture_to_send_seconds",
                "Time from the capture callback to the datagram handed to QUIC",
            ),
            sip_dropped: r.counter(
                "voxgate_sip_dropped_total",
                "SIP messages dropped unanswered (not allowed, banned, malformed)",
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
            registry: Arc::new(Registry::default()),
        };
        Arc::new(GatewayMetrics {
            registry: Arc::new(r),
            ..m
        })
    }
}
