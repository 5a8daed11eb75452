//! The rest of `scripts/bench`'s document: the gateway's parts run alone,
//! other configurations and peers (§1), latency (§2), memory (§3), the
//! relay (§4), speech quality (§5), the phone leg (§5b), size (§6), method.

use super::pipeline::{Ctx, parts, parts_sums};
use super::value::{V, err, f, fu, load, mib, us};

pub(crate) fn parts_table(c: &Ctx, l: &mut Vec<String>) {
    let (qa, q_paced, q_flat, op_paced, cap) = parts(c);
    if !(q_paced.truthy() || q_flat.truthy()) {
        return;
    }
    let (base, cpu) = (c.base, c.cpu);
    let ratio = cpu.get("ratio_stat").num();
    let (parts_paced, floor_flat) = parts_sums(c);
    let fr = c
        .codec
        .get("frame_ms")
        .num()
        .filter(|&x| x != 0.0)
        .unwrap_or(20.0)
        / 1000.0;
    let us_frame = |v: Option<f64>| v.map(|v| v * fr * 1e6);
    let mut w = |s: String| l.push(s);
    w("**The gateway's parts run alone, same run.** Each part of the gateway measured on its own, as a".into());
    w("lower bound for what the whole can cost on this machine. *libopus paced* encodes one frame every".into());
    w("20 ms in the bench process, sleeping in between, as the encoder thread does (during the paced".into());
    w("device run). *QUIC transport* is the gateway's own client (`voxgate::gateway::session`: quinn,".into());
    w("mutual TLS, the control handshake, the gateway's quinn runtime) on a one-worker tokio runtime,".into());
    w("connected to a release relay, sending the baseline's packets as RTP-over-QUIC datagrams from a".into());
    w("plain thread: once one every 20 ms, and once flat out with each datagram in a packet of its own".into());
    w("(the next handed over when quinn has sent the last; queued together they would share packets)".into());
    w("and every thread pinned to one CPU, so that no idle core is woken. Its CPU is both threads'".into());
    w("schedstat until the relay's acknowledgements are in; on loopback the sender's `sendmsg` also".into());
    w("carries the relay's kernel receive path. *Capture thread* is the gateway's `cpal_alsa_in` above.".into());
    w("".into());
    w("| part | CPU s per audio s | per frame | ratio to libopus alone | notes |".into());
    w("| --- | ---: | ---: | ---: | --- |".into());
    let pa = |v: V| v.get("per_audio_s").num();
    w(format!(
        "| libopus, flat out (baseline) | {} | {} µs | 1 | |",
        f(pa(base), 5),
        f(us_frame(pa(base)), 0)
    ));
    w(format!(
        "| libopus, one frame every 20 ms | {} | {} µs | {} | the same work, paced |",
        f(pa(op_paced), 5),
        f(us_frame(pa(op_paced)), 0),
        f(c.per_base(pa(op_paced)), 3)
    ));
    w(format!(
        "| QUIC transport, one datagram every 20 ms{} | {} | {} µs | {} | runtime thread {} runs/s; relay received {} of {} |",
        err(qa),
        f(pa(q_paced), 5),
        f(q_paced.get("us_per_datagram").num(), 0),
        f(c.per_base(pa(q_paced)), 3),
        f(q_paced.get("runtime_runs_per_s").num(), 0),
        f(q_paced.get("relay_received").num(), 0),
        f(q_paced.get("datagrams").num(), 0)
    ));
    w(format!(
        "| QUIC transport, flat out on one CPU | {} | {} µs | {} | {} s for {} datagrams; relay received {} |",
        f(pa(q_flat), 5),
        f(q_flat.get("us_per_datagram").num(), 1),
        f(c.per_base(pa(q_flat)), 3),
        f(q_flat.get("handed_over_s").num(), 3),
        f(q_flat.get("datagrams").num(), 0),
        f(q_flat.get("relay_received").num(), 0)
    ));
    w(format!(
        "| capture thread (`cpal_alsa_in`, in the gateway run) | {} | | {} | |",
        f(pa(cap), 5),
        f(c.per_base(pa(cap)), 3)
    ));
    w(format!(
        "| **sum of the paced parts** | {} | | **{}** | |",
        f(parts_paced, 5),
        f(c.per_base(parts_paced), 3)
    ));
    w(format!(
        "| whole gateway | {} | | **{}** | |",
        f(cpu.get("per_audio_s_stat").num(), 5),
        f(ratio, 3)
    ));
    w("".into());
    let target = c.t.get("cpu_ratio").or("1.3");
    let paced_ratio = cpu.get("ratio_paced_stat").num();
    w(format!(
        "What these say about the ≤ {target}× target (against libopus paced) on this machine: with no"
    ));
    w(format!(
        "waiting at all, the QUIC transport alone costs {}× the codec flat out, so no gateway that encodes",
        f(c.per_base(pa(q_flat)), 2)
    ));
    w(format!(
        "with this libopus and sends each frame through quinn and TLS can measure below {}× libopus flat",
        f(floor_flat, 2)
    ));
    w(format!(
        "out here; paced as audio arrives, libopus alone costs {}× its flat-out self. The whole gateway",
        f(c.per_base(pa(op_paced)), 2)
    ));
    w(format!(
        "measures {}× libopus flat out ({}× libopus paced) against {}× for its parts run alone.",
        f(ratio, 2),
        f(paced_ratio, 2),
        f(c.per_base(parts_paced), 2)
    ));
    w("".into());
}

pub(crate) fn rest(c: &Ctx, l: &mut Vec<String>) {
    others_and_peers(c, l);
    latency(c, l);
    memory(c, l);
    super::relay::relay(c, l);
    quality(c, l);
    super::relay::phone_leg_size_method(c, l);
}

fn others_and_peers(c: &Ctx, l: &mut Vec<String>) {
    let base = c.base;
    let mut w = |s: String| l.push(s);
    w("Other gateway configurations (informational, same CPU accounting):".into());
    w("".into());
    w("| run | CPU s per audio s | ratio to libopus alone | largest threads (CPU s per audio s) | other load |".into());
    w("| --- | ---: | ---: | --- | ---: |".into());
    for (name, cv) in [
        (
            "playback on (echo relay, `voxplay`), 10 s",
            c.p.at(&["echo_run", "cpu"]),
        ),
        (
            "paced PulseAudio microphone (`pulsemic`), playback off, 30 s",
            c.p.at(&["paced_run", "cpu"]),
        ),
    ] {
        let v = cv.get("per_audio_s_stat").num();
        let r = c.per_base(v);
        let th = cv
            .get("threads")
            .list()
            .into_iter()
            .take(3)
            .map(|t| {
                format!(
                    "`{}` {}",
                    t.get("thread").text(),
                    f(t.get("per_audio_s").num(), 4)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        w(format!(
            "| {name} | {} | {} | {th} | {} |",
            f(v, 5),
            f(r, 2),
            load(cv.get("other_load_cores").num())
        ));
    }
    let _ = base;
    w("".into());
    let peers = c.p.get("peers");
    let db = peers.get("debian_baseline");
    w("**Peers against Debian's libopus.** GStreamer and ffmpeg link Debian's libopus 1.3.1, so they".into());
    w("are compared with `opusenc` (opus-tools, the same libopus) encoding the same file with the same".into());
    w(format!(
        "settings. Each runs as fast as it can on the whole file and on its first {} s; CPU is the child's rusage \
         (user + system, bash `time`), median of {}. *Total* divides the whole run's CPU by the audio length; *marginal* \
         subtracts the short run, removing start-up (plugin loading, probing), which the gateway figure above does not contain either.",
        f(c.fx.get("short_clip_s").num(), 0),
        db.get("cpu_s_runs").list().len()
    ));
    w("".into());
    w("| program | CPU s (whole file) | CPU s per audio s, total | marginal | ratio to opusenc, total | marginal |".into());
    w("| --- | ---: | ---: | ---: | ---: | ---: |".into());
    w(format!(
        "| opusenc (baseline){} | {} | {} | {} | 1 | 1 |",
        err(db),
        f(db.get("cpu_s").num(), 3),
        f(db.get("per_audio_s_total").num(), 5),
        f(db.get("per_audio_s_marginal").num(), 5)
    ));
    let peer_row = |p: V| {
        format!(
            "| {}{} | {} | {} | {} | {} | {} |",
            p.get("name").text(),
            err(p),
            f(p.get("cpu_s").num(), 3),
            f(p.get("per_audio_s_total").num(), 5),
            f(p.get("per_audio_s_marginal").num(), 5),
            f(p.get("ratio_total").num(), 3),
            f(p.get("ratio_marginal").num(), 3)
        )
    };
    for p in peers.get("peers").list() {
        w(peer_row(p));
    }
    w("".into());
    let rt = peers.get("real_time").list();
    if !rt.is_empty() {
        w("**The same peers paced to real time**, as the gateway is (GStreamer's `udpsink sync=true`,".into());
        w("`ffmpeg -re`), once each on the whole file and on the short clip; ratios to the flat-out".into());
        w("`opusenc` above. The difference from the flat-out rows is what pacing the same work to real".into());
        w("time costs on this machine; the in-process libopus diagnostic (one frame every 20 ms) in the".into());
        w("gateway table measures the same effect on libopus alone.".into());
        w("".into());
        w("| program, real time | CPU s (whole file) | CPU s per audio s, total | marginal | ratio to opusenc, total | marginal |".into());
        w("| --- | ---: | ---: | ---: | ---: | ---: |".into());
        for p in &rt {
            w(peer_row(*p));
        }
        w("".into());
    }
    w("The issue quotes 1.11 for GStreamer and 1.29 for ffmpeg \"on this job\"; the rows above are what this".into());
    w("run measured. Commands:".into());
    w("".into());
    w("```".into());
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let all = std::iter::once(db)
        .chain(peers.get("peers").list())
        .chain(peers.get("real_time").list());
    for p in all {
        if p.get("command").truthy() {
            w(p.get("command").text().replace(&home, "~"));
        }
    }
    w("```".into());
    w("".into());
}

fn latency(c: &Ctx, l: &mut Vec<String>) {
    let (lat_f, lat_p) = (c.lat_f, c.lat_p);
    let mut w = |s: String| l.push(s);
    w("## 2. Capture callback to datagram handed to quinn".into());
    w("".into());
    w("From the gateway's `voxgate_capture_to_send_seconds` histogram, scraped at the end of each run".into());
    w("(every frame of the run). Percentiles are bucket upper bounds, so they are coarse: a p99 of".into());
    w("\"400 µs\" means the 99th percentile lies in (300, 400] µs.".into());
    w("".into());
    w("| device | frames | mean | p50 | p90 | p99 | highest non-empty bucket |".into());
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    for (name, lv) in [
        ("ALSA `file` (`voxcap`, paced in software)", lat_f),
        (
            "PulseAudio null-sink monitor (`pulsemic`, paced like hardware)",
            lat_p,
        ),
    ] {
        w(format!(
            "| {name}{} | {} | {} | {} | {} | {} | {} |",
            err(lv),
            f(lv.get("count").num(), 0),
            us(lv.get("mean_us").num()),
            us(lv.get("p50_us").num()),
            us(lv.get("p90_us").num()),
            us(lv.get("p99_us").num()),
            us(lv.get("max_bucket_us").num())
        ));
    }
    w("".into());
    for (name, lv) in [("file device", lat_f), ("paced device", lat_p)] {
        let mut prev = 0.0;
        let mut parts = Vec::new();
        for x in lv.get("buckets").list() {
            let cum = x.get("cumulative").num_or(0.0);
            let n = cum - prev;
            prev = cum;
            if n != 0.0 {
                let le = match x.get("le_us").num() {
                    None => "+Inf".to_string(),
                    Some(v) => format!("≤{v:.0}"),
                };
                parts.push(format!("{le}: {}", int_text(n)));
            }
        }
        if !parts.is_empty() {
            w(format!(
                "- {name}, frames per bucket (µs): {}",
                parts.join(", ")
            ));
        }
    }
    w("".into());
    w(format!(
        "Load of other processes during the paced run (PulseAudio excluded): {} cores.",
        f(c.p.at(&["paced_run", "cpu", "other_load_cores"]).num(), 2)
    ));
    w("".into());
}

/// A count (a whole number) as written.
pub(crate) fn int_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        super::value::float_text(n)
    }
}

fn memory(c: &Ctx, l: &mut Vec<String>) {
    let mut w = |s: String| l.push(s);
    w("## 3. Resident memory".into());
    w("".into());
    w("`/proc/PID/status` and `/proc/PID/smaps_rollup` of the release gateway after 10 s of streaming.".into());
    w("VmRSS counts every resident page mapped, including shared library and executable pages that".into());
    w("are shared with other processes and can be dropped and re-read by the kernel; RssAnon is the".into());
    w("process's own heap and stacks.".into());
    w("".into());
    w("| process | VmRSS | VmHWM | RssAnon | RssFile | Pss | Private dirty |".into());
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    let build = super::pipeline::static_build(c.st_run);
    let st_off = format!("gateway, static x86_64 release binary (musl, {build}), playback off");
    let st_on =
        format!("gateway, static x86_64 release binary (musl, {build}), playback on (echo)");
    let rows = [
        ("gateway, playback off", c.mem_off),
        ("gateway, playback on (echo)", c.mem_on),
        (st_off.as_str(), c.mem_st),
        (st_on.as_str(), c.mem_st_on),
        ("gst-launch, same job, real time (`sync=true`)", c.gst_mem),
        (
            "ffmpeg, same job, real time (`-re`)",
            c.p.at(&["peer_memory", "ffmpeg"]),
        ),
    ];
    let m_ = |v: V| fu(mib(v.num()), 1, " MiB");
    for (name, m) in rows {
        let r = m.get("smaps_rollup_kib");
        w(format!(
            "| {name}{} | {} | {} | {} | {} | {} | {} |",
            err(m),
            m_(m.get("VmRSS")),
            m_(m.get("VmHWM")),
            m_(m.get("RssAnon")),
            m_(m.get("RssFile")),
            m_(r.get("Pss")),
            m_(r.get("Private_Dirty"))
        ));
    }
    w("".into());
    for (label, m) in [
        ("the gateway (playback off)", c.mem_off),
        ("the static release binary", c.mem_st),
    ] {
        let top = m.get("top_mappings_kib").list();
        if !top.is_empty() {
            w(format!(
                "Largest resident mappings of {label}: {}.",
                top.iter()
                    .map(|t| format!(
                        "`{}` {} MiB",
                        t.get("mapping").text(),
                        f(mib(t.get("rss_kib").num()), 2)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            w("".into());
        }
    }
}

fn quality(c: &Ctx, l: &mut Vec<String>) {
    let mut w = |s: String| l.push(s);
    w("## 5. Speech quality".into());
    w("".into());
    w("PESQ-WB (ITU-T P.862.2, `scripts/score.py`) of each decoded signal (`opusdec`, 48 kHz) against".into());
    w(
        "the source speech, after alignment. The target compares the relay's recording from the"
            .into(),
    );
    w("file-device run with plain `opusenc` at the same bitrate and frame size.".into());
    w("".into());
    w("| signal | PESQ-WB | STOI |".into());
    w("| --- | ---: | ---: |".into());
    for (name, k) in [
        ("relay's recording of the gateway stream", "gateway"),
        (
            "opusenc --bitrate 24 --framesize 20 --comp 9 (Debian libopus, defaults otherwise) — **baseline**",
            "opusenc",
        ),
        (
            "opusenc with the gateway's settings (VoIP, constrained VBR, FEC for 5% loss)",
            "opusenc_matched",
        ),
        (
            "libopus 1.6.1 in-process with the gateway's settings, no network",
            "libopus_inprocess",
        ),
    ] {
        let s = c.pesq.get(k);
        w(format!(
            "| {name}{} | {} | {} |",
            err(s),
            f(s.get("pesq_wb").num(), 3),
            f(s.get("stoi").num(), 3)
        ));
    }
    w("".into());
}
