//! Phone to phone, one way (issue 17): two boxes (gateways with the SIP
//! bridge) on one relay, on loopback; phone 201 on box A calls phone 301 on
//! box B, both real SIP peers (SIPp 3.7.3 does their signalling: A's INVITE
//! with digest, B's REGISTER and answer); A speaks, B listens.
//!
//! The phones' media are two sockets of this process, so that both ends are
//! stamped on one clock (the wall clock, `CLOCK_REALTIME`): phone A sends
//! PCMU speech in 20 ms RTP packets (paced by its own thread, each stamped
//! just before `send_to`; it starts once box A's first packet tells it
//! where box A listens, as a phone does with the SDP answer), and phone B's
//! RTP port records the kernel's receive time of every packet
//! (`SO_TIMESTAMPNS`). The one-way delay is the cross-correlation
//! (`xcorr.rs`) of the audio phone B received against the audio phone A
//! sent, each packet's samples laid out on the common clock from its
//! departure (A) or arrival (B) time: what the two phones would play if
//! each played a packet the moment it had it.
//!
//! Stages, from the boxes' metrics between two scrapes around the speech:
//! box A `voxgate_phone_to_send_seconds` (a phone packet's kernel arrival
//! to the Opus datagram carrying its audio handed to QUIC), box B
//! `voxgate_phone_relay_to_rtp_seconds` (a relay datagram's arrival to the
//! phone RTP packet carrying its audio sent), Opus's lookahead; the rest
//! (QUIC out of box A, the relay, QUIC into box B, the phones' sockets) is
//! the total minus those, shown beside half of each box's QUIC round trip.
//!
//! Each box waits for its leg's next 20 ms tick, so the phase of the boxes'
//! clocks against the packets is part of the figure: phone A starts at a
//! random phase, and box B's clock is started first by another call (phone
//! 302 to the echo service), so that it keeps no fixed phase to box A's
//! (both would start at the measured call's answer). Several calls per
//! build, alternating between builds, draw several phases.

use super::phone_media::{HOP_S, Listener, PTIME, Talker, WINDOW_S, one_way};
use super::*;
use std::net::UdpSocket;
use voxgate_testkit::lab::free_udp;
use voxgate_testkit::rtp::ulaw_of;
use voxgate_testkit::sip::{
    SipGateway, Sipp, callee_scenario, fill, free_rtp_range, register_at, sipp_auth, sipp_file,
    sipp37, wait_child,
};

/// u-law silence before the speech, and after it, seconds. The boxes'
/// metrics are read during the trailing silence, while the stream still
/// flows (its end makes each jitter buffer conceal until it goes idle).
const LEAD_S: f64 = 0.6;
const TAIL_S: f64 = 1.5;

/// One build (and phone-leg setting) under test.
pub(crate) struct PhoneVariant {
    pub name: String,
    /// Another build of `voxgate` (the baseline), else this one.
    pub binary: Option<PathBuf>,
    /// Added to both boxes' `[sip]` sections.
    pub sip_extra: String,
}

/// Phone 201's call to 301: tests/sipp/call-with-pcap.xml without the
/// pcap (this process sends its media, at `media_port`), up for `up_ms`
/// after the ACK, then its BYE.
fn caller_scenario(ext: &str, to: &str, password: &str, media_port: u16, up_ms: u64) -> String {
    let call = sipp_file("call-with-pcap.xml");
    let play = "  <nop><action><exec play_pcap_audio=\"{{PCAP}}\"/></action></nop>\n";
    assert!(call.contains(play), "call-with-pcap.xml changed");
    let sdp = fill(&sipp_file("sdp.txt"), &[("PTIME", &PTIME.to_string())])
        .replace("[media_port]", &media_port.to_string());
    fill(
        &call.replace(play, ""),
        &[
            ("HANGUP", &sipp_file("caller-bye.xml")),
            ("SDP_BODY", &sdp),
            (
                "RINGING_STEP",
                if to == "900" {
                    ""
                } else {
                    r#"<recv response="180"/>"#
                },
            ),
            ("EXT", ext),
            ("PLAY_MS", &up_ms.to_string()),
        ],
    )
    .replace("[authentication]", &sipp_auth(ext, password))
}

fn read_logs(dir: &Path, prefix: &str) -> String {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.starts_with(prefix) && !n.ends_with(".xml")
                })
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// One call; returns its figures.
pub(crate) fn run(speech_wav: &Path, v: &PhoneVariant, n: usize) -> Value {
    let tag = if v.binary.is_some() { "base" } else { "this" };
    let mut lab = Lab::new(&format!("bench-latency-phone-{tag}-{n}"), "mode = \"none\"");
    // The relay's default: no call recordings.
    lab.set_relay_sections("enabled = false", "");
    let mut relay = lab.start_relay();
    let digest = "[\"sha-256\", \"md5\"]";
    let mut a = SipGateway::configure(&lab, "gw-a", digest, &v.sip_extra);
    let mut b = SipGateway::configure(&lab, "gw-b", digest, &v.sip_extra);
    let (pa, pb) = (a.add_phone("201"), b.add_phone("301"));
    let p302 = b.add_phone("302");
    let binary = v
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(voxgate_testkit::lab::bin()));
    let env = vec![("VOXGATE_LOG".to_string(), "info".to_string())];
    a.start_with(&lab, &binary, &env);
    b.start_with(&lab, &binary, &env);
    let callee_port = free_udp();
    register_at(&lab.dir, &b, "301", &pb, callee_port);
    b.wait_registered(1.0);
    // The relay learns the extension from box B.
    std::thread::sleep(Duration::from_millis(300));

    // Phone A's audio: silence, the speech, silence, as u-law.
    let speech = ulaw_of(speech_wav, &lab.dir);
    let lead = vec![0xffu8; (LEAD_S * 8000.0) as usize];
    let tail = vec![0xffu8; (TAIL_S * 8000.0) as usize];
    let ulaw: Vec<u8> = [&lead[..], &speech, &tail].concat();
    let talk_ms = (ulaw.len() / 8) as u64;

    // Both boxes' media clocks would start within a few ms of each other
    // (at the call's answer, which reaches B first): on loopback box B's
    // 10 ms clock would keep one phase against box A's. Another call on
    // box B (phone 302 to the echo service, media to a socket that only
    // absorbs it) starts B's clock at a moment of its own first.
    let absorb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (media302, _) = free_rtp_range(2);
    let other = Sipp {
        bin: &sipp37(),
        dir: &lab.dir,
        name: "caller-302",
        scenario: &caller_scenario(
            "302",
            "900",
            &p302,
            absorb.local_addr().unwrap().port(),
            talk_ms + 8000,
        ),
        target: &format!("127.0.0.1:{}", b.sip_port),
        args: &[
            "-timeout",
            "90s",
            "-auth_uri",
            &format!("900@127.0.0.1:{}", b.sip_port),
            "-s",
            "900",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media302.to_string(),
        ],
        limit: Duration::from_secs(100),
    }
    .spawn();
    voxgate_testkit::lab::wait_for(Duration::from_secs(15), "box B's other call", || {
        b.metric("voxgate_sip_calls_active") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(fastrand::u64(100..400)));
    let listener = Listener::spawn();
    let callee = Sipp {
        bin: &sipp37(),
        dir: &lab.dir,
        name: "callee-301",
        scenario: &callee_scenario("301", listener.port),
        target: &format!("127.0.0.1:{}", b.sip_port),
        args: &[
            "-p",
            &callee_port.to_string(),
            "-timeout",
            "90s",
            "-trace_msg",
            "-trace_logs",
        ],
        limit: Duration::from_secs(100),
    }
    .spawn();
    let talker = Talker::spawn(ulaw);
    let (media, _) = free_rtp_range(2);
    let caller = Sipp {
        bin: &sipp37(),
        dir: &lab.dir,
        name: "caller-201",
        scenario: &caller_scenario("201", "301", &pa, talker.port, talk_ms + 2500),
        target: &format!("127.0.0.1:{}", a.sip_port),
        args: &[
            "-timeout",
            "90s",
            "-auth_uri",
            &format!("301@127.0.0.1:{}", a.sip_port),
            "-s",
            "301",
            "-mi",
            "127.0.0.1",
            "-mp",
            &media.to_string(),
            "-trace_msg",
            "-trace_logs",
        ],
        limit: Duration::from_secs(100),
    }
    .spawn();
    if talker.ready.recv_timeout(Duration::from_secs(20)).is_err() {
        panic!(
            "phone A got no RTP from box A: the call was not answered\ncaller:\n{}\ncallee:\n{}\nA:\n{}\nB:\n{}",
            read_logs(&lab.dir, "caller-201"),
            read_logs(&lab.dir, "callee-301"),
            a.log(),
            b.log()
        );
    }
    let scrape_both = || {
        (
            scrape(a.metrics).unwrap_or_default(),
            scrape(b.metrics).unwrap_or_default(),
        )
    };
    let (a0, b0) = scrape_both();
    talker.go.send(()).unwrap();
    let _ = talker.ending.recv_timeout(Duration::from_secs(120));
    let (a1, b1) = scrape_both();
    let said = talker.thread.join().unwrap_or_default();
    // The last packets through both boxes.
    std::thread::sleep(Duration::from_millis(300));
    let heard = listener.finish();
    let caller_ok = wait_child(caller, Duration::from_secs(30)).success();
    let callee_ok = wait_child(callee, Duration::from_secs(30)).success();
    if !caller_ok || !callee_ok {
        eprintln!(
            "latency: phone: a phone's scenario failed (caller {caller_ok}, callee {callee_ok})\ncaller:\n{}\ncallee:\n{}",
            read_logs(&lab.dir, "caller-201"),
            read_logs(&lab.dir, "callee-301"),
        );
    }
    let mut other = other;
    let _ = other.kill();
    let _ = other.wait();
    drop(absorb);
    for gw in [&mut a, &mut b] {
        if let Some(p) = gw.proc.as_mut() {
            p.assert_running();
            let _ = p.stop();
        }
    }
    let _ = relay.stop();

    let (whole, windows) = one_way(&said, &heard);
    let mut sorted = windows.clone();
    sorted.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
    };
    let ga = |n: &str| voxgate::telemetry::metrics::scrape_value(&a1, n);
    let gb = |n: &str| voxgate::telemetry::metrics::scrape_value(&b1, n);
    let steady = |t0: &str, t1: &str, n: &str| {
        let g = |t: &str| voxgate::telemetry::metrics::scrape_value(t, n).unwrap_or(0.0);
        g(t1) - g(t0)
    };
    let box_a = hist_mean_ms(&a0, &a1, "voxgate_phone_to_send_seconds");
    let box_b = hist_mean_ms(&b0, &b1, "voxgate_phone_relay_to_rtp_seconds");
    let total = whole.map(|d| d.0);
    let lookahead = opus_lookahead_ms();
    let rest = match (total, box_a, box_b) {
        (Some(t), Some(a), Some(b)) => Some(t - a - b - lookahead),
        _ => None,
    };
    let half_rtts = ga("voxgate_rtt_seconds")
        .zip(gb("voxgate_rtt_seconds"))
        .map(|(x, y)| (x + y) * 1000.0 / 2.0);
    let mut j = Value::obj();
    j.set("variant", v.name.as_str())
        .set("one_way_ms", total)
        .set("correlation", whole.map(|d| d.1))
        .set("box_a_ms", box_a)
        .set("box_b_ms", box_b)
        .set("opus_lookahead_ms", lookahead)
        .set("rest_ms", rest)
        .set("half_rtts_ms", half_rtts)
        .set("window_min_ms", quantile(0.0))
        .set("window_median_ms", quantile(0.5))
        .set("window_max_ms", quantile(1.0))
        .set("windows", windows.len() as f64)
        .set("packets_sent", said.len() as f64)
        .set("packets_heard", heard.len() as f64)
        .set(
            "up_concealed",
            steady(&a0, &a1, "voxgate_phone_uplink_concealed_total"),
        )
        .set(
            "down_concealed",
            steady(&b0, &b1, "voxgate_phone_downlink_concealed_total"),
        )
        .set(
            "box_a_frames",
            steady(&a0, &a1, "voxgate_phone_uplink_datagrams_total"),
        )
        .set(
            "box_b_packets",
            steady(&b0, &b1, "voxgate_phone_rtp_sent_total"),
        )
        .set("phones_ok", caller_ok && callee_ok);
    j
}

/// The boxes' Opus encoder's algorithmic delay (its lookahead at 8 kHz,
/// VoIP, as `codec::OpusEncoder::with_rate` sets it up): the decoded audio
/// comes out this much later than the encoder's input, in no histogram.
fn opus_lookahead_ms() -> f64 {
    let mut e = opus::Encoder::new(8000, opus::Channels::Mono, opus::Application::Voip)
        .expect("an Opus encoder");
    f64::from(e.get_lookahead().expect("OPUS_GET_LOOKAHEAD")) / 8.0
}

/// One variant's calls in one figure: the stages and the one-way delay
/// averaged over the calls (each call draws its own phase of the boxes'
/// 20 ms clocks against the phone's packets), counters summed, and the
/// spread between and within calls.
pub(crate) fn combine(name: &str, calls: &[Value]) -> Value {
    let all = |k: &str| calls.iter().filter_map(|c| f(c, k)).collect::<Vec<f64>>();
    let mean = |k: &str| {
        let v = all(k);
        (v.len() == calls.len() && !v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let sum = |k: &str| all(k).iter().sum::<f64>();
    let one_way = all("one_way_ms");
    let mut j = Value::obj();
    j.set("variant", name).set("calls", calls.len() as f64);
    for k in [
        "one_way_ms",
        "box_a_ms",
        "box_b_ms",
        "opus_lookahead_ms",
        "rest_ms",
        "half_rtts_ms",
        "other_load",
    ] {
        j.set(k, mean(k));
    }
    for k in [
        "up_concealed",
        "down_concealed",
        "packets_sent",
        "packets_heard",
    ] {
        j.set(k, sum(k));
    }
    let within = calls
        .iter()
        .filter_map(|c| Some(f(c, "window_max_ms")? - f(c, "window_min_ms")?))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    j.set("call_min_ms", one_way.iter().copied().reduce(f64::min))
        .set("call_max_ms", one_way.iter().copied().reduce(f64::max))
        .set("within_call_spread_ms", within)
        .set(
            "phones_ok",
            calls
                .iter()
                .all(|c| c.get("phones_ok").and_then(Value::as_bool) == Some(true)),
        )
        .set("per_call", Value::Array(calls.to_vec()));
    j
}

const PHONE_STAGES: [(&str, &str); 4] = [
    (
        "box_a_ms",
        "box A: phone RTP arrival → jitter buffer → G.711 decode → Opus encode → QUIC (`voxgate_phone_to_send_seconds`)",
    ),
    (
        "opus_lookahead_ms",
        "Opus algorithmic delay (the encoder's lookahead at 8 kHz, VoIP: `OPUS_GET_LOOKAHEAD`)",
    ),
    (
        "rest_ms",
        "QUIC out of box A → relay → QUIC into box B, the phones' sockets (the rest: the one-way figure minus the other rows)",
    ),
    (
        "box_b_ms",
        "box B: relay datagram arrival → jitter buffer → Opus decode → G.711 encode → RTP to the phone (`voxgate_phone_relay_to_rtp_seconds`)",
    ),
];

/// The phone-to-phone table.
pub(crate) fn table(runs: &[Value]) -> String {
    let mut s =
        String::from("| latency budget, phone to phone one way, two boxes and the relay (ms) |");
    for r in runs {
        s += &format!(" {} |", r.str("variant").unwrap_or("?"));
    }
    s += "\n|---|";
    s += &"---:|".repeat(runs.len());
    s += "\n";
    for (k, label) in PHONE_STAGES {
        s += &format!("| {label} |");
        for r in runs {
            s += &format!(" {} |", cell(f(r, k)));
        }
        s += "\n";
    }
    let row = |s: &mut String, label: &str, g: &dyn Fn(&Value) -> String| {
        *s += &format!("| {label} |");
        for r in runs {
            *s += &format!(" {} |", g(r));
        }
        *s += "\n";
    };
    row(
        &mut s,
        "**one way, cross-correlation, mean of the calls** (target ≤ 60)",
        &|r| format!("**{}**", cell(f(r, "one_way_ms"))),
    );
    row(&mut s, "one way: the fastest / slowest call", &|r| {
        format!(
            "{} / {}",
            cell(f(r, "call_min_ms")),
            cell(f(r, "call_max_ms"))
        )
    });
    row(
        &mut s,
        &format!(
            "within a call: the largest spread of the one-way delay over {WINDOW_S} s windows, {HOP_S} s apart"
        ),
        &|r| cell(f(r, "within_call_spread_ms")),
    );
    row(&mut s, "calls", &|r| {
        f(r, "calls").unwrap_or(0.0).to_string()
    });
    row(
        &mut s,
        "for comparison: half of each box's QUIC round trip to the relay, summed (`voxgate_rtt_seconds`)",
        &|r| cell(f(r, "half_rtts_ms")),
    );
    row(
        &mut s,
        "frames concealed, all calls: box A from phone A / box B towards phone B",
        &|r| {
            format!(
                "{} / {}",
                f(r, "up_concealed").unwrap_or(0.0),
                f(r, "down_concealed").unwrap_or(0.0)
            )
        },
    );
    row(
        &mut s,
        "packets, all calls: sent by phone A / heard by phone B",
        &|r| {
            format!(
                "{} / {}",
                f(r, "packets_sent").unwrap_or(0.0),
                f(r, "packets_heard").unwrap_or(0.0)
            )
        },
    );
    row(
        &mut s,
        "other processes' load in the second before the run (cores)",
        &|r| cell(f(r, "other_load")),
    );
    s.pop();
    s
}
