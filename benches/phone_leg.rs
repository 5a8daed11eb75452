//! Transcoding cost of one phone call leg: G.711 (or G.722) ↔ Opus in both
//! directions through `voxgate::media::leg::PhoneLeg`, against libopus
//! alone doing the same encode and decode, in the same run.
//!
//!   cargo bench --bench phone_leg
//!
//! Each "call second" is 50 packet times of 20 ms: a PCMU packet from the
//! phone is buffered and transcoded to Opus for the relay, and an Opus packet
//! from the relay is decoded and encoded to PCMU for the phone. The CPU per
//! call second bounds the transcoded calls one core can carry (before SIP,
//! sockets and QUIC, which the sipp benchmark of the bridge adds).
//!
//! Output: a table, and `$VOXGATE_BENCH_OUT/phone_leg.json` when set.

use std::time::{Duration, Instant};
use voxgate::codec::CodecConfig;
use voxgate::codec::telephony::{PcmEncoder, PhoneCodec};
use voxgate::codec::{OpusDecoder, OpusEncoder};
use voxgate::media::leg::{PhoneLeg, PhoneLegConfig};
use voxgate::media::rtp::{Packet, Repr};
use voxgate_testkit::bench::{self, PhoneLegResults, PhoneLegRow};

const SECONDS: u32 = 30;
const PTIME: Duration = Duration::from_millis(20);

fn thread_cpu() -> Duration {
    // schedstat: nanoseconds this thread ran.
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat");
    Duration::from_nanos(ns)
}

fn speechlike(rate: u32, start: usize, n: usize) -> Vec<i16> {
    // Two formant-like tones with a syllable envelope: enough spectral
    // motion that the encoders do real work.
    (start..start + n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let env = (0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin()).powi(2);
            let v = (2.0 * std::f64::consts::PI * 220.0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * (900.0 + 300.0 * (t * 1.3).sin()) * t).sin() * 0.3;
            (v * env * 9000.0) as i16
        })
        .collect()
}

fn opus_cfg(complexity: u8) -> CodecConfig {
    CodecConfig {
        frame: PTIME,
        complexity,
        ..CodecConfig::default()
    }
}

/// Phone packets and relay packets for `SECONDS`, prepared outside the timing.
struct Fixture {
    phone: Vec<Vec<u8>>,
    relay: Vec<Vec<u8>>,
    /// 8 kHz PCM per frame (the baseline's encoder input).
    pcm8: Vec<Vec<i16>>,
    /// The relay's Opus payloads (the baseline's decoder input).
    opus: Vec<Vec<u8>>,
}

fn fixture(codec: PhoneCodec, pt: u8) -> Fixture {
    let frames = (SECONDS * 50) as usize;
    let rate = codec.sample_rate();
    let n = (rate / 50) as usize;
    let mut enc = PcmEncoder::new(codec).unwrap();
    let mut opus = OpusEncoder::new(&opus_cfg(9)).unwrap();
    let mut f = Fixture {
        phone: Vec::new(),
        relay: Vec::new(),
        pcm8: Vec::new(),
        opus: Vec::new(),
    };
    for i in 0..frames {
        let pcm = speechlike(rate, i * n, n);
        let mut payload = [0u8; 400];
        let len = enc.encode(&pcm, &mut payload);
        f.phone.push(rtp(
            pt,
            i as u16,
            (i * n / if codec == PhoneCodec::G722 { 2 } else { 1 }) as u32,
            &payload[..len],
        ));
        f.pcm8.push(pcm);
        let op = opus
            .encode(&speechlike(48_000, i * 960, 960))
            .unwrap()
            .to_vec();
        f.relay.push(rtp(111, i as u16, (i * 960) as u32, &op));
        f.opus.push(op);
    }
    f
}

fn rtp(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 12 + payload.len()];
    Repr {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc: 0x5eed,
    }
    .emit(payload, &mut b)
    .unwrap();
    b
}

/// CPU seconds per call second through `PhoneLeg`.
fn leg_run(codec: PhoneCodec, pt: u8, complexity: u8, fx: &Fixture) -> f64 {
    let mut leg = PhoneLeg::new(&PhoneLegConfig {
        codec,
        phone_pt: pt,
        dtmf_pt: Some(101),
        ptime: PTIME,
        opus: opus_cfg(complexity),
        up_flow: 16,
        up_ssrc: 1,
        down_ssrc: 2,
        initial: (0, 0, 0, 0),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    })
    .unwrap();
    let mut out = [0u8; 1500];
    let mut up = 0;
    let mut down = 0;
    let t0 = thread_cpu();
    for (i, (p, r)) in fx.phone.iter().zip(&fx.relay).enumerate() {
        let now = PTIME * i as u32;
        let _ = leg.push_phone(now, p, &mut out);
        let pkt = Packet::new_checked(&r[..]).unwrap();
        leg.push_relay(now, &pkt);
        let tick = now + Duration::from_millis(1);
        up += usize::from(leg.poll_uplink(tick, &mut out).is_some());
        down += usize::from(leg.poll_downlink(tick, &mut out).is_some());
    }
    let cpu = (thread_cpu() - t0).as_secs_f64();
    assert!(
        up > fx.phone.len() * 9 / 10 && down > fx.relay.len() * 9 / 10,
        "{up} {down}"
    );
    cpu / f64::from(SECONDS)
}

/// libopus alone: encode 8 kHz PCM and decode 48 kHz-clock Opus at 8 kHz, per call second.
fn baseline(codec: PhoneCodec, complexity: u8, fx: &Fixture) -> f64 {
    let mut enc = OpusEncoder::with_rate(&opus_cfg(complexity), codec.sample_rate()).unwrap();
    let mut dec = OpusDecoder::with_rate(codec.sample_rate()).unwrap();
    let t0 = thread_cpu();
    for (pcm, op) in fx.pcm8.iter().zip(&fx.opus) {
        std::hint::black_box(enc.encode(pcm).unwrap());
        std::hint::black_box(dec.decode(op).unwrap());
    }
    (thread_cpu() - t0).as_secs_f64() / f64::from(SECONDS)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (codec, pt, name) in [
        (PhoneCodec::Pcmu, 0u8, "PCMU"),
        (PhoneCodec::G722, 9, "G.722"),
    ] {
        let fx = fixture(codec, pt);
        for complexity in [9u8, 5, 3, 1] {
            let leg = median(
                (0..5)
                    .map(|_| leg_run(codec, pt, complexity, &fx))
                    .collect(),
            );
            let base = median((0..5).map(|_| baseline(codec, complexity, &fx)).collect());
            rows.push(format!(
                "| {name} ↔ Opus | {complexity} | {:.1} µs | {:.1} µs | {:.2}× | {:.0} |",
                leg * 1e6 / 50.0,
                base * 1e6 / 50.0,
                leg / base,
                1.0 / leg
            ));
            json_rows.push(PhoneLegRow {
                codec: name.to_string(),
                opus_complexity: complexity,
                leg_cpu_s_per_call_s: leg,
                libopus_cpu_s_per_call_s: base,
                ratio: leg / base,
                calls_per_core: 1.0 / leg,
            });
        }
    }
    println!(
        "Phone leg transcoding, per 20 ms packet time (median of 5 runs of {SECONDS} s of audio each):\n"
    );
    println!(
        "| leg | Opus complexity | PhoneLeg, both directions | libopus alone (encode + decode) | ratio | calls per core (transcoding only) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!("{r}");
    }
    println!("\n{:.1} s", started.elapsed().as_secs_f64());
    if std::env::var_os("VOXGATE_BENCH_OUT").is_some() {
        let results = PhoneLegResults {
            seconds_per_run: 30,
            rows: json_rows,
        };
        bench::write_result("phone_leg.json", &bench::to_value(&results));
    }
}
