//! `scripts/bench`'s §4 (streams per relay core, from `relay_load.json`),
//! §5b (the phone leg, from `phone_leg.json`), §6 (binary size) and the
//! method section.

use super::pipeline::Ctx;
use super::pipeline_more::int_text;
use super::value::{V, f, mib};

/// `100 * x` when present.
fn pct(v: V) -> Option<f64> {
    v.num().map(|x| 100.0 * x)
}

pub(crate) fn relay(c: &Ctx, l: &mut Vec<String>) {
    let r = c.r;
    let st = r.get("setup");
    let mut w = |s: String| l.push(s);
    w("## 4. Streams per relay core".into());
    w("".into());
    w(format!(
        "The release relay runs pinned to CPU {} (`taskset`), in record mode (downlink none), recordings on {}, \
         UDP receive buffer {} bytes as granted by the kernel. The load generator is the bench process, pinned to CPU {} ({}): {}.",
        st.get("relay_cpus").or("?"),
        st.get("recordings").or("?"),
        st.get("relay_udp_recv_buffer").or_unset("?"),
        st.get("generator_cpus").or("?"),
        st.get("generator_sched").or_unset("normal policy"),
        st.get("generator").or_unset("N QUIC connections")
    ));
    w("A stream is what one gateway sends: its own QUIC connection with mutual TLS (a development".into());
    w("certificate of its own), the device's control handshake (hello, welcome, `flow_open` of up flow 0 with its own".into());
    w(format!(
        "SSRC), then a real Opus packet (speech, mean payload {} bytes)",
        f(st.get("mean_opus_payload_bytes").num(), 0)
    ));
    w("every 20 ms as an RTP-over-QUIC datagram; the relay's per-connection cost (handshake, ACKs, timers,".into());
    w("one session task) is in the figure. The generator sends each stream in one of twenty 1 ms slots.".into());
    w(format!(
        "Connections ramp in at {} per second",
        f(st.get("ramp_per_s").num(), 0)
    ));
    w(format!(
        "and are kept; each step measures {} s after a 1 s settle. After the first failing",
        f(st.get("measure_s").num(), 0)
    ));
    w("step the count is bisected twice. Loss = 1 − relay `voxgate_relay_datagrams_total` delta / datagrams".into());
    w("handed to quinn without error, both counted with the media paused until the relay's count stops".into());
    w("moving, so that nothing is in flight or queued at the window's edges; a step whose relay queue grew".into());
    w(
        "by 1% of the window's datagrams meanwhile is \"falling behind\", even with nothing lost."
            .into(),
    );
    w(format!(
        "The relay runs at nice {} so that other processes on CPU 0 do not take half of it.",
        st.get("relay_nice")
            .num()
            .map_or("0".into(), |n| format!("{n:.0}"))
    ));
    w("The generator must offer ≥ 99% of the nominal rate, quinn must".into());
    w("transmit ≥ 99% of what it was handed (less packets its socket refused), and at most 5% of its 1 ms".into());
    w("send slots may run more than 2 ms late; otherwise the step is a generator limit, not a relay result.".into());
    w("Each step waits (up to 30 s) for a quiet machine; a window during which other processes used more".into());
    w("than 0.15 of either core is measured once more and the quieter window is kept.".into());
    w("".into());
    w(format!(
        "**The glibc build** (`{}`):",
        st.get("relay_binary").or("?")
    ));
    w("".into());
    steps_block(r, l);
    let rs = c.rs;
    if rs.truthy() {
        l.push(format!(
            "**The static musl binary, as deployed** (`{}`, `scripts/build-release x86_64`), the same generator, the same run{}:",
            rs.at(&["setup", "relay_binary"]).or("?"),
            if rs.has("error") {
                format!(" (error: {})", rs.get("error").text())
            } else {
                String::new()
            }
        ));
        l.push("".into());
        steps_block(rs, l);
    }
}

/// One relay's steps table, what was lost where, and its CPU per stream.
fn steps_block(r: V, l: &mut Vec<String>) {
    let st = r.get("setup");
    let mut w = |s: String| l.push(s);
    w("| streams | phase | loss | relay CPU | generator CPU | relay socket drops | generator: offered / sent by quinn / late slots | other load (CPU0 / CPU1) | relay RSS | verdict |".into());
    w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |".into());
    let steps = r.get("steps").list();
    for s in &steps {
        w(format!(
            "| {} | {} | {}% | {}% | {}% | {} | {}% / {}% / {}% | {} / {} | {} MiB | {} |",
            f(s.get("connected").num(), 0),
            s.get("phase").or(""),
            f(pct(s.get("loss")), 2),
            f(s.get("relay_cpu_pct").num(), 0),
            f(s.get("generator_cpu_pct").num(), 0),
            f(s.get("relay_socket_drops").num(), 0),
            f(pct(s.get("offered_share")), 1),
            f(pct(s.get("transmitted_share")), 1),
            f(pct(s.get("generator_late_slot_share")), 1),
            f(s.get("other_load_cpu0_cores").num(), 2),
            f(s.get("other_load_cpu1_cores").num(), 2),
            f(mib(s.get("relay_rss_kib").num()), 0),
            s.get("verdict").or("?")
        ));
    }
    w("".into());
    let lost: f64 = steps
        .iter()
        .map(|s| {
            // Drained counts (nothing queued at the edges) where the
            // bench wrote them.
            let n = |drained: &str, old: &str| {
                s.get(drained)
                    .num()
                    .or(s.get(old).num())
                    .filter(|&x| x != 0.0)
                    .unwrap_or(0.0)
            };
            (n("drained_handed", "handed_to_quinn") - n("drained_received", "relay_received"))
                .max(0.0)
        })
        .sum();
    let drops: f64 = steps
        .iter()
        .map(|s| {
            s.get("relay_socket_drops_drained")
                .num()
                .or(s.get("relay_socket_drops").num())
                .unwrap_or(0.0)
        })
        .sum();
    let first_fail = steps
        .iter()
        .find(|s| !(s.get("verdict").is_none() || s.get("verdict").str() == Some("ok")));
    if lost > 0.0 {
        w(format!(
            "Over all steps, {} datagrams were lost and the kernel counted {} drops (receive buffer",
            f(Some(lost), 0),
            f(Some(drops), 0)
        ));
        w(format!(
            "full) at the relay's UDP socket (its receive buffer: {} bytes; `net.core.rmem_default` = {}).",
            st.get("relay_udp_recv_buffer").or_unset("?"),
            st.get("net.core.rmem_default").or("?")
        ));
        if lost >= 100.0 && drops >= 0.8 * lost {
            w("The datagrams were therefore lost in the kernel in front of the relay, not inside it.".into());
        }
        if let Some(ff) = first_fail
            && ff.get("verdict").str() == Some("loss over 1%")
            && ff
                .get("relay_cpu_pct")
                .num()
                .filter(|&x| x != 0.0)
                .unwrap_or(100.0)
                < 95.0
        {
            w(format!(
                "In the first step with more than 1% loss the relay used {}% of its core on",
                f(ff.get("relay_cpu_pct").num(), 0)
            ));
            w("average: the buffer overflows during short bursts of arrivals or short stalls of the relay, before".into());
            w("the core is saturated on average.".into());
        }
        w("".into());
    }
    let quiet: Vec<&V> = steps
        .iter()
        .filter(|s| {
            s.get("connected").truthy()
                && !s.get("relay_cpu_pct").is_none()
                && s.get("other_load_cores_max").num().unwrap_or(0.0) <= 0.15
        })
        .collect();
    let mut xs: Vec<f64> = quiet
        .iter()
        .map(|s| s.get("connected").num_or(0.0))
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    if xs.len() >= 2 {
        let fit = |key: &str| {
            let n = quiet.len() as f64;
            let x = |s: &V| s.get("connected").num_or(0.0);
            let y = |s: &V| s.get(key).num_or(0.0);
            let mx = quiet.iter().map(|s| x(s)).sum::<f64>() / n;
            let my = quiet.iter().map(|s| y(s)).sum::<f64>() / n;
            let sxx: f64 = quiet.iter().map(|s| (x(s) - mx).powi(2)).sum();
            let slope = quiet.iter().map(|s| (x(s) - mx) * (y(s) - my)).sum::<f64>() / sxx;
            (slope, my - slope * mx)
        };
        let (rs, ri) = fit("relay_cpu_pct");
        let (gs, gi) = fit("generator_cpu_pct");
        if rs > 0.0 && gs > 0.0 {
            w(format!(
                "CPU cost, from a least-squares line through the quiet steps: relay {}% of a core per 100",
                f(Some(100.0 * rs), 1)
            ));
            w(format!(
                "streams (the line reaches 100% at about {} streams); generator {}% per 100 streams",
                f(Some((100.0 - ri) / rs), 0),
                f(Some(100.0 * gs), 1)
            ));
            w(format!(
                "(100% at about {} streams: this generator cannot verify much more than that on one core).",
                f(Some((100.0 - gi) / gs), 0)
            ));
            w("".into());
        }
    }
    let warnings = r.get("relay_warnings");
    if warnings.truthy() {
        w(format!(
            "Relay warnings: {}",
            warnings
                .list()
                .into_iter()
                .take(3)
                .map(|x| format!("`{}`", x.text().chars().take(160).collect::<String>()))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        w("".into());
    }
}

pub(crate) fn phone_leg_size_method(c: &Ctx, l: &mut Vec<String>) {
    let mut w = |s: &str| l.push(s.to_string());
    w("## 5b. Phone bridge: transcoding cost per call");
    w("");
    w(
        "`cargo bench --bench phone_leg`: one call leg through `voxgate::media::leg::PhoneLeg` in both",
    );
    w(
        "directions per 20 ms packet time (a phone packet buffered, decoded and encoded to Opus for the",
    );
    w("relay; a relay Opus packet decoded at the phone's rate and encoded for the phone), against");
    w(
        "libopus alone doing the same Opus encode and decode on the same thread, median of 5 runs of 30 s",
    );
    w(
        "of audio. Transcoding only: SIP, sockets and QUIC are not in it; calls per core is `1 / CPU`.",
    );
    w("The bridge uses `[sip] opus_complexity` (default 1) for phone legs.");
    w("");
    match c.pl {
        Err(e) => w(&format!("Not measured: {e}")),
        Ok(pl) => {
            w(
                "| leg | Opus complexity | PhoneLeg CPU per packet time | libopus alone | ratio | calls per core (transcoding only) |",
            );
            w("| --- | ---: | ---: | ---: | ---: | ---: |");
            for r in &pl.rows {
                w(&format!(
                    "| {} ↔ Opus | {} | {} µs | {} µs | {}× | {} |",
                    r.codec,
                    r.opus_complexity,
                    f(Some(r.leg_cpu_s_per_call_s * 1e6 / 50.0), 1),
                    f(Some(r.libopus_cpu_s_per_call_s * 1e6 / 50.0), 1),
                    f(Some(r.ratio), 2),
                    f(Some(r.calls_per_core), 0)
                ));
            }
        }
    }
    w("");
    let bytes = |k: &str| {
        let v = c.p.at(&["binary", k]);
        Some(if v.truthy() { v.num_or(0.0) } else { 0.0 } / 1048576.0)
    };
    w("## 6. Binary size");
    w("");
    w(&format!(
        "`voxgate` release binary for x86_64-unknown-linux-gnu: {} MiB as built,",
        f(bytes("as_built_bytes"), 2)
    ));
    w(&format!(
        "{} MiB after `strip` of a copy. aarch64 is tracked by the appliance issue.",
        f(bytes("stripped_bytes"), 2)
    ));
    w("");
    for line in METHOD {
        w(line);
    }
    let _ = int_text;
}

const METHOD: &[&str] = &[
    "## Method and limits",
    "",
    "- One machine, loopback only. The relay, the gateway, PulseAudio and the load generator share its",
    "  cores; other processes may run too. Each run records how much CPU the rest of the machine used",
    "  during its measurement window (\"other load\" above; from `/proc/stat`, user + system + steal).",
    "- CPU per stream excludes start-up: the gateway's window starts at its first sent frame. It includes",
    "  everything the process does meanwhile: the capture callback thread, the encoder thread, QUIC",
    "  (encryption, acknowledgements, keep-alives, the control stream) and a few metrics scrapes.",
    "  libopus alone is measured hot (a tight loop over the whole file); the one-frame-every-20 ms",
    "  diagnostic shows how much of the difference is caches and wake-ups of real-time operation.",
    "- The ALSA `file` device has no clock; the gateway paces it (`audio::clock`), so its capture thread",
    "  sleeps and reads a file where a sound card would wake it by interrupt. The PulseAudio run is the",
    "  hardware-like case for latency.",
    "- Latency percentiles are histogram bucket bounds (25 µs to 1 s, see",
    "  `telemetry::metrics::LATENCY_BUCKETS_US`) and cover the callback-to-`send_datagram` part only,",
    "  not the network or the relay.",
    "- Resident memory is read once, after 10 s; VmHWM is the peak up to then. File-backed pages",
    "  (executable, libasound, libc, PulseAudio client libraries loaded by ALSA's configuration) are",
    "  counted whole in VmRSS.",
    "- The relay load generator is a single thread on one core running quinn; it checks that it offered",
    "  the nominal rate and that quinn transmitted what it was handed, and reports a generator limit",
    "  otherwise. Its own sends are scheduled in 1 ms slots and can leave in bursts when its thread runs",
    "  late; the steps table's source JSON has the count of late slots. Loopback has no real network",
    "  loss or reordering.",
    "- The gateway and the relay run as root with `privilege.stay_root = true` (the development switch the",
    "  tests use) and the sandbox (Landlock, seccomp) on; logging at `info`.",
    "- PESQ is computed on one espeak-ng text; synthetic speech scores differently from recorded speech.",
    "",
];
