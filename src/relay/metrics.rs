//! The relay's metrics.

use crate::telemetry::metrics::{Counter, Gauge, Registry};
use std::sync::Arc;

/// Relay counters.
#[derive(Debug)]
pub struct RelayMetrics {
    /// The registry behind the Prometheus endpoint.
    pub registry: Arc<Registry>,
    /// Devices that completed the handshake and hello.
    pub sessions: Arc<Counter>,
    /// Sessions currently up.
    pub active: Arc<Gauge>,
    /// Handshakes or hellos that failed.
    pub rejected: Arc<Counter>,
    /// Media datagrams received.
    pub datagrams: Arc<Counter>,
    /// Datagrams that were not RTP-over-QUIC.
    pub malformed: Arc<Counter>,
    /// Datagrams for a flow that was never opened, or with the wrong SSRC.
    pub unknown_flow: Arc<Counter>,
    /// Control messages that were invalid.
    pub control_errors: Arc<Counter>,
    /// Frames written to recordings.
    pub recorded: Arc<Counter>,
    /// Lost frames filled with concealment markers in recordings.
    pub gap_frames: Arc<Counter>,
    /// Datagrams sent down to devices.
    pub sent_down: Arc<Counter>,
    /// Calls set up (every outcome).
    pub calls: Arc<Counter>,
    /// Calls in progress.
    pub calls_active: Arc<Gauge>,
    /// Calls handed to the `[calls]` fallback.
    pub call_fallbacks: Arc<Counter>,
    /// Call datagrams forwarded to another leg (or echoed).
    pub forwarded: Arc<Counter>,
    /// Seconds until the served relay certificate's notAfter.
    pub cert_expiry: Arc<Gauge>,
    /// Incoming handshakes answered with a QUIC Retry.
    pub retried: Arc<Counter>,
    /// Incoming handshakes dropped by the admission caps.
    pub handshakes_refused: Arc<Counter>,
    /// Handshakes in flight.
    pub handshakes_in_flight: Arc<Gauge>,
    /// Enrollments refused because too many were running.
    pub enrollments_busy: Arc<Counter>,
    /// Sessions closed because the same device opened a new one.
    pub sessions_replaced: Arc<Counter>,
    /// Recordings stopped by a device's daily quota.
    pub recording_quota_stops: Arc<Counter>,
    /// Recordings deleted by the retention sweep.
    pub recordings_deleted: Arc<Counter>,
    /// Bytes of recordings kept after the last sweep.
    pub recordings_bytes: Arc<Gauge>,
    /// Requests to the operator API's authenticated routes.
    pub api_requests: Arc<Counter>,
    /// Operator API requests refused for their key (401).
    pub api_auth_failures: Arc<Counter>,
    /// Operator API requests refused by a rate limit (429).
    pub api_rate_limited: Arc<Counter>,
    /// Webhook deliveries that reached a 2xx.
    pub webhooks_delivered: Arc<Counter>,
    /// Webhook attempts that failed (each retry counts).
    pub webhooks_failed_attempts: Arc<Counter>,
}

impl RelayMetrics {
    /// Register every metric.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::default();
        let m = RelayMetrics {
            sessions: r.counter(
                "voxgate_relay_sessions_total",
                "Device sessions established",
            ),
            active: r.gauge(
                "voxgate_relay_sessions_active",
                "Device sessions currently up",
            ),
            rejected: r.counter(
                "voxgate_relay_sessions_rejected_total",
                "Connections refused at handshake or hello",
            ),
            datagrams: r.counter("voxgate_relay_datagrams_total", "Media datagrams received"),
            malformed: r.counter(
                "voxgate_relay_datagrams_malformed_total",
                "Datagrams that were not RTP-over-QUIC",
            ),
            unknown_flow: r.counter(
                "voxgate_relay_datagrams_unknown_flow_total",
                "Datagrams for an unopened flow or with a foreign SSRC",
            ),
            control_errors: r.counter(
                "voxgate_relay_control_errors_total",
                "Invalid control messages",
            ),
            recorded: r.counter(
                "voxgate_relay_frames_recorded_total",
                "Opus frames written to recordings",
            ),
            gap_frames: r.counter(
                "voxgate_relay_gap_frames_total",
                "Lost frames marked for concealment in recordings",
            ),
            sent_down: r.counter(
                "voxgate_relay_datagrams_sent_total",
                "Datagrams sent down to devices",
            ),
            calls: r.counter("voxgate_relay_calls_total", "Calls set up"),
            calls_active: r.gauge("voxgate_relay_calls_active", "Calls in progress"),
            call_fallbacks: r.counter(
                "voxgate_relay_call_fallbacks_total",
                "Calls handed to the [calls] fallback",
            ),
            forwarded: r.counter(
                "voxgate_relay_call_datagrams_forwarded_total",
                "Call datagrams forwarded to the other leg",
            ),
            cert_expiry: r.gauge(
                "voxgate_relay_cert_expiry_seconds",
                "Seconds until the served relay TLS certificate expires (negative once expired)",
            ),
            retried: r.counter(
                "voxgate_relay_handshakes_retried_total",
                "Incoming handshakes answered with a QUIC Retry (address validation)",
            ),
            handshakes_refused: r.counter(
                "voxgate_relay_handshakes_refused_total",
                "Incoming handshakes dropped by the per-source or global caps",
            ),
            handshakes_in_flight: r.gauge(
                "voxgate_relay_handshakes_in_flight",
                "Handshakes admitted and not yet finished",
            ),
            enrollments_busy: r.counter(
                "voxgate_relay_enrollments_busy_total",
                "Enrollments refused because too many were running",
            ),
            sessions_replaced: r.counter(
                "voxgate_relay_sessions_replaced_total",
                "Sessions closed because the same device opened a new one",
            ),
            recording_quota_stops: r.counter(
                "voxgate_relay_recording_quota_stops_total",
                "Recordings stopped by a device's daily quota",
            ),
            recordings_deleted: r.counter(
                "voxgate_relay_recordings_deleted_total",
                "Recordings deleted by the retention sweep",
            ),
            recordings_bytes: r.gauge(
                "voxgate_relay_recordings_bytes",
                "Bytes of recordings kept after the last retention sweep",
            ),
            api_requests: r.counter(
                "voxgate_relay_api_requests_total",
                "Requests to the operator API's authenticated routes",
            ),
            api_auth_failures: r.counter(
                "voxgate_relay_api_auth_failures_total",
                "Operator API requests refused for a missing, unknown, revoked or expired key",
            ),
            api_rate_limited: r.counter(
                "voxgate_relay_api_rate_limited_total",
                "Operator API requests refused by a rate limit (429)",
            ),
            webhooks_delivered: r.counter(
                "voxgate_relay_webhooks_delivered_total",
                "Webhook deliveries a receiver took (2xx)",
            ),
            webhooks_failed_attempts: r.counter(
                "voxgate_relay_webhooks_failed_attempts_total",
                "Webhook attempts that failed (refused, unreachable, timed out, or a non-2xx answer)",
            ),
            registry: Arc::new(Registry::default()),
        };
        Arc::new(RelayMetrics {
            registry: Arc::new(r),
            ..m
        })
    }
}
