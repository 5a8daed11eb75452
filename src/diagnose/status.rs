//! `voxgate status`: the running daemon on one screen, read from its
//! status socket (`[telemetry] status_socket`, by default
//! `/run/voxgate/status.sock`) or its loopback metrics endpoint
//! (`[telemetry] metrics`), its process
//! (`daemon::find_pid`) and its certificate file (rewritten by each
//! renewal). Nothing it shows is secret.
//!
//! Exit code: 0 when the daemon runs, 3 when it does not (the LSB
//! convention of `systemctl status`), 1 when the config cannot be read.

use super::daemon;
use crate::bridge::registrations::{PhoneState, PhonesView};
use crate::config::GatewayConfig;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `voxgate status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Gateway config file.
    #[arg(long, short, default_value = "/etc/voxgate/voxgate.toml")]
    pub config: PathBuf,
    /// Output: `text` or `json`.
    #[arg(long, short, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
}

/// What `voxgate status` shows.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    /// Whether the daemon runs.
    pub running: bool,
    /// Its device id.
    pub device_id: String,
    /// Its pid, when found.
    pub pid: Option<i32>,
    /// Seconds since it started.
    pub uptime_s: Option<u64>,
    /// The relay: address, connection, round trip.
    pub relay: Relay,
    /// Loss on both directions.
    pub loss: Loss,
    /// Audio frames.
    pub frames: Frames,
    /// Registered phones and calls.
    pub phones: Phones,
    /// The device certificate.
    pub certificate: Certificate,
    /// Whether the status socket or metrics endpoint answered (the live
    /// figures).
    pub metrics: bool,
}

/// The relay connection.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Relay {
    /// `relay.address`.
    pub address: String,
    /// Connected now.
    pub connected: Option<bool>,
    /// Connections made since the start.
    pub connects: Option<u64>,
    /// QUIC's round-trip estimate, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Packet loss.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Loss {
    /// Uplink packets the relay reports lost (current flow).
    pub uplink_lost: Option<u64>,
    /// Downlink frames missing at playout.
    pub downlink_lost: Option<u64>,
    /// Downlink packets received.
    pub downlink_received: Option<u64>,
}

/// Audio frames.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Frames {
    /// Captured from the microphone.
    pub captured: Option<u64>,
    /// Sent to the relay.
    pub sent: Option<u64>,
    /// Dropped while disconnected.
    pub unsent: Option<u64>,
}

/// The phone bridge.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Phones {
    /// Whether `[sip]` is on.
    pub bridge: bool,
    /// Extensions with a registered phone.
    pub registered: Option<u64>,
    /// Calls in progress.
    pub calls_active: Option<u64>,
    /// Calls since the start.
    pub calls_total: Option<u64>,
    /// Each extension and its registered phones (the status socket's
    /// `GET /phones`; absent when it does not answer).
    pub extensions: Option<Vec<PhoneState>>,
}

/// The device certificate.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Certificate {
    /// Its expiry, Unix seconds.
    pub not_after: Option<i64>,
    /// Seconds left (negative: expired).
    pub seconds_left: Option<i64>,
}

/// Build the report from what was read: the config, the pid, the metrics
/// text, the certificate's expiry and the time now.
pub fn report(
    cfg: &GatewayConfig,
    pid: Option<i32>,
    metrics: Option<&str>,
    phones: Option<PhonesView>,
    not_after: Option<i64>,
    now: i64,
) -> Report {
    let v = |name| metrics.and_then(|m| daemon::value(m, name));
    let n = |name| v(name).map(|x| x.max(0.0) as u64);
    Report {
        running: pid.is_some() || metrics.is_some(),
        device_id: cfg.device_id.clone(),
        pid,
        uptime_s: v("voxgate_start_time_seconds")
            .filter(|t| *t > 0.0)
            .map(|t| (now as f64 - t).max(0.0) as u64),
        relay: Relay {
            address: cfg.relay.address.clone(),
            connected: v("voxgate_relay_connected").map(|c| c >= 1.0),
            connects: n("voxgate_relay_connects_total"),
            rtt_ms: v("voxgate_rtt_seconds").map(|s| (s * 10_000.0).round() / 10.0),
        },
        loss: Loss {
            uplink_lost: n("voxgate_uplink_packets_lost"),
            downlink_lost: n("voxgate_downlink_frames_lost_total"),
            downlink_received: n("voxgate_downlink_packets_received_total"),
        },
        frames: Frames {
            captured: n("voxgate_frames_captured_total"),
            sent: n("voxgate_frames_sent_total"),
            unsent: n("voxgate_frames_unsent_total"),
        },
        phones: Phones {
            bridge: cfg.sip.is_some(),
            registered: n("voxgate_sip_registered_extensions"),
            calls_active: n("voxgate_sip_calls_active"),
            calls_total: n("voxgate_sip_calls_total"),
            extensions: phones.filter(|v| v.bridge).map(|v| v.phones),
        },
        certificate: Certificate {
            not_after,
            seconds_left: not_after.map(|t| t - now),
        },
        metrics: metrics.is_some(),
    }
}

/// The report as text, one screen.
pub fn text(r: &Report) -> String {
    use crate::identity::status::{span, when};
    let num = |x: Option<u64>| x.map_or("?".to_string(), |x| x.to_string());
    let mut out = format!(
        "voxgate `{}`: running{}{}\n",
        r.device_id,
        r.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        r.uptime_s
            .map(|u| format!(", up {}", span(u as i64)))
            .unwrap_or_default()
    );
    if !r.metrics {
        out.push_str(
            "live figures:  unavailable (neither the status socket nor a metrics endpoint answers)\n",
        );
    } else {
        let rel = &r.relay;
        out.push_str(&format!(
            "relay:         {} {} ({} connection(s) since start)\n",
            rel.address,
            match rel.connected {
                Some(true) => "connected",
                Some(false) => "NOT CONNECTED",
                None => "?",
            },
            num(rel.connects)
        ));
        out.push_str(&format!(
            "round trip:    {}\n",
            rel.rtt_ms
                .filter(|_| rel.connected == Some(true))
                .map_or("-".to_string(), |m| format!("{m} ms"))
        ));
        out.push_str(&format!(
            "loss:          uplink {} packet(s) (relay's report); downlink {} frame(s) of {} packet(s)\n",
            num(r.loss.uplink_lost),
            num(r.loss.downlink_lost),
            num(r.loss.downlink_received)
        ));
        out.push_str(&format!(
            "frames:        {} captured, {} sent, {} unsent\n",
            num(r.frames.captured),
            num(r.frames.sent),
            num(r.frames.unsent)
        ));
        if r.phones.bridge {
            out.push_str(&format!(
                "phones:        {} extension(s) registered\n",
                num(r.phones.registered)
            ));
            let now = crate::bridge::registrations::unix_now();
            for p in r.phones.extensions.iter().flatten() {
                out.push_str(&format!("  {}\n", phone_line(p, now)));
            }
            out.push_str(&format!(
                "calls:         {} in progress, {} since start\n",
                num(r.phones.calls_active),
                num(r.phones.calls_total)
            ));
        } else {
            out.push_str("phones:        the phone bridge is off\n");
        }
    }
    match (r.certificate.not_after, r.certificate.seconds_left) {
        (Some(t), Some(l)) if l > 0 => out.push_str(&format!(
            "certificate:   expires {} ({} left)\n",
            when(t),
            span(l)
        )),
        (Some(t), Some(l)) => out.push_str(&format!(
            "certificate:   EXPIRED {} ({} ago)\n",
            when(t),
            span(-l)
        )),
        _ => out.push_str("certificate:   unreadable\n"),
    }
    out
}

/// One extension's line: `101  registered from 127.0.0.1:5071 (UDP,
/// Yealink ...), for 2 min, expires in 58 min` or `102  not registered`.
pub fn phone_line(p: &PhoneState, now: i64) -> String {
    use crate::identity::status::span;
    match p.latest() {
        None => format!("{:<8} not registered", p.extension),
        Some(c) => {
            let more = match p.contacts.len() {
                1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            };
            format!(
                "{:<8} registered from {} ({}{}), for {}, expires in {}{more}",
                p.extension,
                c.source,
                c.transport,
                c.user_agent
                    .as_deref()
                    .map(|u| format!(", {u}"))
                    .unwrap_or_default(),
                span(now.saturating_sub(c.registered_since).max(0)),
                span(c.expires.saturating_sub(now).max(0)),
            )
        }
    }
}

/// `voxgate status`.
pub fn run(a: StatusArgs) -> ExitCode {
    let cfg = match GatewayConfig::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("voxgate: error: {e}; `voxgate check` says more");
            return ExitCode::from(1);
        }
    };
    let pid = daemon::find_pid(&a.config);
    let metrics = daemon::read_metrics(&cfg.telemetry);
    let phones = daemon::read_phones(&cfg.telemetry);
    let not_after = crate::identity::status::cert_validity(&cfg.identity.cert)
        .ok()
        .map(|(_, na, _)| na);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let r = report(&cfg, pid, metrics.as_deref(), phones, not_after, now);
    if a.output == "json" {
        super::render::emit(
            &(serde_json::to_string_pretty(&r).unwrap_or_else(|_| "{}".into()) + "\n"),
        );
    } else if r.running {
        super::render::emit(&text(&r));
    }
    if r.running {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "voxgate: not running: no `voxgate run` runs {}{}; start it (`systemctl start voxgate`, or `voxgate run --config {}`), and `voxgate check` says what stops it",
            a.config.display(),
            cfg.telemetry
                .metrics
                .map(|m| format!(" and nothing answers at {m}"))
                .unwrap_or_default(),
            a.config.display()
        );
        ExitCode::from(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GatewayConfig {
        GatewayConfig::parse(
            std::path::Path::new("/x/gw.toml"),
            "device_id = \"gw-1\"\n[relay]\naddress = \"127.0.0.1:4433\"\nca = \"ca.pem\"\n[identity]\ncert = \"d.pem\"\nkey = \"d.key\"\n",
        )
        .unwrap()
    }

    #[test]
    fn report_from_metrics() {
        let m = "voxgate_relay_connected 1\nvoxgate_rtt_seconds 0.0123\nvoxgate_relay_connects_total 2\nvoxgate_frames_sent_total 500\nvoxgate_start_time_seconds 1000\n";
        let r = report(&cfg(), Some(9), Some(m), None, Some(5_000), 1_100);
        assert!(r.running);
        assert_eq!(r.uptime_s, Some(100));
        assert_eq!(r.relay.connected, Some(true));
        assert_eq!(r.relay.rtt_ms, Some(12.3));
        assert_eq!(r.frames.sent, Some(500));
        assert_eq!(r.frames.captured, None);
        assert_eq!(r.certificate.seconds_left, Some(3_900));
        let t = text(&r);
        assert!(t.contains("running (pid 9), up 1 min"), "{t}");
        assert!(
            t.contains("127.0.0.1:4433 connected (2 connection(s)"),
            "{t}"
        );
        assert!(t.contains("12.3 ms"), "{t}");
        assert!(t.contains("phone bridge is off"), "{t}");
        let down = report(&cfg(), None, None, None, None, 0);
        assert!(down.phones.extensions.is_none());
        assert!(!down.running);
        assert!(text(&down).contains("certificate:   unreadable"));
    }

    #[test]
    fn one_line_per_phone() {
        use crate::bridge::registrations::ContactState;
        let up = PhoneState {
            extension: "101".into(),
            registered: true,
            contacts: vec![ContactState {
                source: "127.0.0.1:5071".into(),
                contact: "127.0.0.1:5071".into(),
                transport: "UDP".into(),
                user_agent: Some("Yealink SIP-T46U".into()),
                registered_since: 1_000,
                expires: 4_600,
            }],
        };
        assert_eq!(
            phone_line(&up, 1_120),
            "101      registered from 127.0.0.1:5071 (UDP, Yealink SIP-T46U), for 2 min, expires in 58 min"
        );
        let down = PhoneState {
            extension: "102".into(),
            ..PhoneState::default()
        };
        assert_eq!(phone_line(&down, 0), "102      not registered");
    }
}
