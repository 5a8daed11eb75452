//! The flood mode (`VOXGATE_RELAY_LOAD_FLOOD=1`): [`FLOOD_STREAMS`]
//! streams are held while a thread of this process (on the generator's
//! CPU, below the generator's SCHED_FIFO) sends QUIC Initials of distinct
//! connections from forged sources in 127.2.0.0/20 through a raw socket,
//! at rising rates. Each rate is one measured window, as a step of the
//! streams' bench; the first window (rate 0) is the same run's baseline.
//! Reported per rate: the streams' loss, the relay's CPU and memory
//! (VmRSS), and how the relay disposed of the forged handshakes (Retry,
//! dropped by the caps). `$VOXGATE_RELAY_LOAD_FLOOD_RATES` (comma-separated)
//! picks other rates; `$VOXGATE_RELAY_LOAD_RETRY_ABOVE` sets the relay's
//! Retry threshold (a huge value: the relay without Retry, caps only).

use super::*;
use std::net::{Ipv4Addr, SocketAddrV4};
use voxgate_testkit::flood::Flood;

/// Streams held during the flood.
pub(crate) const FLOOD_STREAMS: usize = 500;
/// Forged handshakes per second, one window each (0: the baseline).
const FLOOD_RATES: [u32; 7] = [0, 1_000, 2_000, 5_000, 10_000, 20_000, 40_000];

/// `FLOOD_RATES`, or `$VOXGATE_RELAY_LOAD_FLOOD_RATES` (comma-separated).
fn flood_rates() -> Vec<u32> {
    std::env::var("VOXGATE_RELAY_LOAD_FLOOD_RATES")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| FLOOD_RATES.to_vec())
}

/// The relay's `[limits] retry_above_handshakes_per_s` for the run
/// (`$VOXGATE_RELAY_LOAD_RETRY_ABOVE`, to compare with Retry off: a huge
/// value), else its default.
pub(crate) fn retry_above() -> Option<u64> {
    std::env::var("VOXGATE_RELAY_LOAD_RETRY_ABOVE")
        .ok()
        .and_then(|v| v.parse().ok())
}

pub(crate) fn flood_mode() -> bool {
    std::env::var("VOXGATE_RELAY_LOAD_FLOOD").is_ok_and(|v| v == "1")
}

pub(crate) async fn flood_steps(
    rig: &mut Rig<'_>,
    relay_port: u16,
    packets: Vec<Vec<u8>>,
) -> (Vec<Value>, String) {
    let g = rig.g;
    let (failed, err) = ramp_to(g, FLOOD_STREAMS, Instant::now() + Duration::from_secs(30)).await;
    if failed > 0 {
        return (
            Vec::new(),
            format!("{failed} of {FLOOD_STREAMS} streams failed to connect: {err:?}"),
        );
    }
    tokio::time::sleep(SETTLE).await;
    let relay = SocketAddrV4::new(Ipv4Addr::LOCALHOST, relay_port);
    let sources: Vec<Ipv4Addr> = (0..4096u32)
        .map(|i| Ipv4Addr::from(0x7f02_0000u32 + i))
        .collect();
    let mut out = Vec::new();
    let mut end = String::from("every rate passed");
    for rate in flood_rates() {
        let m = |name: &str| voxgate_testkit::lab::metric(rig.metrics, name);
        let retried0 = m("voxgate_relay_handshakes_retried_total");
        let refused0 = m("voxgate_relay_handshakes_refused_total");
        let flood = (rate > 0).then(|| {
            Flood::start(
                relay,
                packets.clone(),
                sources.clone(),
                rate,
                MEASURE * 2 + SETTLE * 2 + Duration::from_secs(5),
            )
        });
        tokio::time::sleep(SETTLE).await;
        let t0 = Instant::now();
        let mut j = window(rig, FLOOD_STREAMS).await;
        let sent = flood.map_or(0, Flood::stop);
        let flood_s = t0.elapsed().as_secs_f64() + SETTLE.as_secs_f64();
        let m = |name: &str| voxgate_testkit::lab::metric(rig.metrics, name);
        let retried = m("voxgate_relay_handshakes_retried_total") - retried0;
        let refused = m("voxgate_relay_handshakes_refused_total") - refused0;
        j.set("flood_per_s", rate)
            .set("flood_sent", sent)
            .set("flood_achieved_per_s", sent as f64 / flood_s)
            .set("flood_retried", retried)
            .set("flood_dropped_by_caps", refused);
        eprintln!(
            "relay_load flood: {rate}/s forged handshakes ({sent} sent, {retried} retried, {refused} dropped): \
             {FLOOD_STREAMS} streams loss {:.3}%, relay CPU {:.0}%, VmRSS {:.0} KiB -> {}",
            j.num("loss").unwrap_or(f64::NAN) * 100.0,
            j.num("relay_cpu_pct").unwrap_or(f64::NAN),
            j.num("relay_rss_kib").unwrap_or(f64::NAN),
            j.str("verdict").unwrap_or("?"),
        );
        let verdict = j.str("verdict").unwrap_or("?").to_string();
        out.push(j);
        if verdict != "ok" {
            end = format!("first failure at {rate} forged handshakes/s: {verdict}");
            break;
        }
    }
    (out, end)
}
