//! The gateway's metrics, registered once.

use crate::bridge::metrics::BridgeMetrics;
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
    /// Samples the capture device delivered (its position in the stream).
    pub capture_samples: Arc<Counter>,
    /// Samples handed to the playback device (its position in the stream).
    pub playback_samples: Arc<Counter>,
    /// Time a downlink packet waited in the jitter buffer.
    pub jitter_hold: Arc<Histogram>,
    /// Audio queued in the playback ring ahead of a decoded frame.
    pub playback_queue: Arc<Histogram>,
    /// When the daemon started, Unix seconds (`voxgate status`'s uptime).
    pub start_time: Arc<Gauge>,
    /// Landlock as the privilege drop left it: 0 off, 1 partially, 2 fully
    /// (`voxgate check`'s `sandbox`).
    pub sandbox_landlock: Arc<Gauge>,
    /// The phone bridge's metrics (registered in the same place as before:
    /// the exported order is unchanged).
    pub bridge: Arc<BridgeMetrics>,
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
            capture_samples: r.counter(
                "voxgate_capture_samples_total",
                "Samples (frames at the device rate) the capture device delivered",
            ),
            playback_samples: r.counter(
                "voxgate_playback_samples_total",
                "Samples (frames at the device rate) handed to the playback device",
            ),
            jitter_hold: r.histogram(
                "voxgate_jitter_hold_seconds",
                "Time a downlink packet waited in the jitter buffer before its decode",
            ),
            playback_queue: r.histogram(
                "voxgate_playback_queue_seconds",
                "Audio queued in the playback ring ahead of each decoded frame",
            ),
            bridge: BridgeMetrics::register(&mut r),
            start_time: r.gauge(
                "voxgate_start_time_seconds",
                "When the daemon started, Unix seconds",
            ),
            sandbox_landlock: r.gauge(
                "voxgate_sandbox_landlock",
                "Landlock after the privilege drop: 0 off, 1 partially, 2 fully enforced",
            ),
            registry: Arc::new(Registry::default()),
        };
        m.start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs() as f64),
        );
        Arc::new(GatewayMetrics {
            registry: Arc::new(r),
            ..m
        })
    }
}
