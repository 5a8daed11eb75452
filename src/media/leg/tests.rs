//! Phone leg tests in simulated time, with real codecs on both sides.

use super::*;
use crate::codec::telephony::PcmEncoder as PhoneEnc;
use crate::media::dtmf::Event;
use crate::media::flow;
use crate::media::rtp::Repr;

const PTIME: Duration = Duration::from_millis(20);

fn opus() -> CodecConfig {
    CodecConfig {
        frame: PTIME,
        complexity: 5,
        ..CodecConfig::default()
    }
}

fn leg(codec: PhoneCodec, pt: u8) -> PhoneLeg {
    PhoneLeg::new(&PhoneLegConfig {
        codec,
        phone_pt: pt,
        dtmf_pt: Some(101),
        ptime: PTIME,
        opus: opus(),
        up_flow: 6,
        up_ssrc: 0x1111,
        down_ssrc: 0x2222,
        initial: (10, 1000, 20, 2000),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    })
    .unwrap()
}

fn tone(rate: u32, hz: f64, start: usize, n: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            ((2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin() * 8000.0) as i16
        })
        .collect()
}

/// Goertzel power of `hz` relative to the total power of `pcm`.
fn tone_share(pcm: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2) = (0f64, 0f64);
    let mut total = 0f64;
    for &x in pcm {
        let x = f64::from(x);
        total += x * x;
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    2.0 * p / (pcm.len() as f64 * total.max(1.0))
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    Repr {
        marker: false,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
    }
    .emit(payload, &mut buf)
    .unwrap();
    buf
}

/// Phone packets of a tone (every `drop`-th lost); returns the decoded uplink audio at 48 kHz.
fn uplink_of(
    codec: PhoneCodec,
    pt: u8,
    frames: usize,
    drop: Option<usize>,
) -> (Vec<i16>, PhoneLeg) {
    let mut leg = leg(codec, pt);
    let mut enc = PhoneEnc::new(codec).unwrap();
    let rate = codec.sample_rate();
    let n = (rate / 50) as usize;
    let ts_step = codec.rtp_clock() / 50;
    let mut dec = OpusDecoder::new().unwrap();
    let mut heard = Vec::new();
    let mut out = [0u8; 1500];
    let mut last_seq = None;
    // One packet time past the end: the buffer delays by one (20 ms).
    for i in 0..=frames {
        let now = PTIME * i as u32;
        if i < frames && drop.is_none_or(|d| i % d != d - 1) {
            let mut payload = [0u8; 400];
            let len = enc.encode(&tone(rate, 1000.0, i * n, n), &mut payload);
            let d = rtp(
                pt,
                500 + i as u16,
                7000 + ts_step * i as u32,
                0xabc,
                &payload[..len],
            );
            let r = leg.push_phone(now, &d, &mut out).unwrap();
            assert!(matches!(r, FromPhone::Buffered(Push::Accepted)), "{r:?}");
        }
        if let Some(len) = leg.poll_uplink(now + Duration::from_millis(1), &mut out) {
            let (f, p) = flow::decode(&out[..len]).unwrap();
            assert_eq!(
                (f, p.payload_type(), p.ssrc()),
                (6, OPUS_PAYLOAD_TYPE, 0x1111)
            );
            if let Some((s, t)) = last_seq {
                assert_eq!(p.sequence(), u16::wrapping_add(s, 1));
                assert_eq!(p.timestamp(), u32::wrapping_add(t, 960), "48 kHz clock");
            }
            last_seq = Some((p.sequence(), p.timestamp()));
            heard.extend_from_slice(dec.decode(p.payload()).unwrap());
        }
    }
    (heard, leg)
}

#[test]
fn g711_and_g722_from_the_phone_become_opus_on_the_flow() {
    for (codec, pt) in [
        (PhoneCodec::Pcmu, 0),
        (PhoneCodec::Pcma, 8),
        (PhoneCodec::G722, 9),
    ] {
        let (heard, leg) = uplink_of(codec, pt, 50, None);
        assert!(
            heard.len() >= 48 * 20 * 45,
            "{codec:?}: {} samples",
            heard.len()
        );
        let share = tone_share(&heard[9600..], 48_000, 1000.0);
        assert!(share > 0.8, "{codec:?}: 1 kHz is {share:.2} of the power");
        let st = leg.stats();
        assert_eq!((st.phone_packets, st.uplink_concealed), (50, 0));
    }
}

#[test]
fn phone_loss_is_concealed_and_counted() {
    let (heard, leg) = uplink_of(PhoneCodec::Pcmu, 0, 100, Some(10));
    let st = leg.stats();
    assert_eq!(st.phone_packets, 90);
    assert!((8..=11).contains(&st.uplink_concealed), "{st:?}");
    // The stream stays continuous: one uplink frame per packet time.
    assert!(st.uplink_frames >= 99, "{st:?}");
    assert!(tone_share(&heard[9600..], 48_000, 1000.0) > 0.5);
}

#[test]
fn relay_opus_reaches_the_phone_as_g711_with_its_clock() {
    for (codec, pt) in [(PhoneCodec::Pcmu, 0), (PhoneCodec::G722, 9)] {
        let mut leg = leg(codec, pt);
        let mut enc = OpusEncoder::new(&opus()).unwrap();
        let mut phone_dec = PcmDecoder::new(codec).unwrap();
        let mut heard = Vec::new();
        let mut out = [0u8; 1500];
        let mut prev: Option<(u16, u32)> = None;
        for i in 0..60usize {
            let now = PTIME * i as u32;
            if i < 50 {
                let pkt = enc
                    .encode(&tone(48_000, 600.0, i * 960, 960))
                    .unwrap()
                    .to_vec();
                let d = rtp(111, i as u16, 960 * i as u32, 0x77, &pkt);
                let p = Packet::new_checked(&d[..]).unwrap();
                assert_eq!(leg.push_relay(now, &p), Push::Accepted);
            }
            let len = leg
                .poll_downlink(now + Duration::from_millis(1), &mut out)
                .unwrap();
            let p = Packet::new_checked(&out[..len]).unwrap();
            assert_eq!((p.payload_type(), p.ssrc()), (pt, 0x2222));
            assert_eq!(p.payload().len(), 160, "{codec:?}: 20 ms payload");
            if let Some((s, t)) = prev {
                assert_eq!(p.sequence(), s.wrapping_add(1));
                assert_eq!(p.timestamp(), t.wrapping_add(160), "8 kHz RTP clock");
            }
            prev = Some((p.sequence(), p.timestamp()));
            let mut pcm = [0i16; 320];
            let n = phone_dec.decode(p.payload(), &mut pcm);
            heard.extend_from_slice(&pcm[..n]);
        }
        let rate = codec.sample_rate();
        let per = (rate / 50) as usize;
        let share = tone_share(&heard[10 * per..45 * per], rate, 600.0);
        assert!(share > 0.8, "{codec:?}: 600 Hz is {share:.2} of the power");
    }
}

#[test]
fn key_presses_from_the_phone_are_reported_once() {
    let mut leg = leg(PhoneCodec::Pcmu, 0);
    let mut out = [0u8; 1500];
    let mut keys = String::new();
    for (i, key) in "12#".chars().enumerate() {
        let ts = 10_000 + 2000 * i as u32;
        let mut tx = DtmfSender::new(Digit::from_char(key).unwrap(), ts, 80, 20, 8000);
        let mut seq = 100 + 10 * i as u16;
        while let Some(ev) = tx.next_packet() {
            let d = rtp(101, seq, ev.timestamp, 0xabc, &ev.payload);
            seq += 1;
            if let FromPhone::Key(k) = leg.push_phone(Duration::ZERO, &d, &mut out).unwrap() {
                keys.push(k.digit.as_char());
            }
        }
    }
    assert_eq!(keys, "12#");
    assert_eq!(leg.stats().keys, 3);
}

#[test]
fn digits_from_the_relay_play_as_events_then_audio_resumes_after_them() {
    let mut leg = leg(PhoneCodec::Pcmu, 0);
    let mut out = [0u8; 1500];
    assert!(leg.send_digit(Digit::from_char('7').unwrap(), 100));
    let mut events = Vec::new();
    let mut audio = Vec::new();
    for i in 0..12u32 {
        let len = leg.poll_downlink(PTIME * i, &mut out).unwrap();
        let p = Packet::new_checked(&out[..len]).unwrap();
        if p.payload_type() == 101 {
            events.push((
                p.marker(),
                p.timestamp(),
                Event::parse(p.payload()).unwrap(),
            ));
        } else {
            audio.push(p.timestamp());
        }
    }
    // 100 ms: 5 packets, the last an end, sent 3 times; all stamped at the start.
    assert_eq!(events.len(), 7);
    assert!(events[0].0 && events.iter().skip(1).all(|e| !e.0));
    assert!(
        events
            .iter()
            .all(|e| e.1 == 2000 && e.2.digit.as_char() == '7')
    );
    assert!(events[4..].iter().all(|e| e.2.end && e.2.duration == 800));
    // Audio after the event starts where the event ended.
    assert_eq!(audio[0], 2000 + 800);
    // No telephone-event negotiated: refused.
    let mut plain = PhoneLeg::new(&PhoneLegConfig {
        dtmf_pt: None,
        ..config_of(PhoneCodec::Pcma, 8)
    })
    .unwrap();
    assert!(!plain.send_digit(Digit::from_char('1').unwrap(), 100));
}

fn config_of(codec: PhoneCodec, pt: u8) -> PhoneLegConfig {
    PhoneLegConfig {
        codec,
        phone_pt: pt,
        dtmf_pt: Some(101),
        ptime: PTIME,
        opus: opus(),
        up_flow: 6,
        up_ssrc: 1,
        down_ssrc: 2,
        initial: (0, 0, 0, 0),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}

#[test]
fn an_opus_phone_is_forwarded_without_transcoding() {
    let mut leg = leg(PhoneCodec::Opus, 96);
    let mut out = [0u8; 1500];
    let mut enc = OpusEncoder::new(&opus()).unwrap();
    for i in 0..5u32 {
        let pkt = enc
            .encode(&tone(48_000, 440.0, i as usize * 960, 960))
            .unwrap()
            .to_vec();
        let d = rtp(96, 40 + i as u16, 90_000 + 960 * i, 0x5, &pkt);
        let FromPhone::Forward(n) = leg.push_phone(Duration::ZERO, &d, &mut out).unwrap() else {
            panic!("not forwarded");
        };
        let (f, p) = flow::decode(&out[..n]).unwrap();
        assert_eq!(
            (f, p.payload_type(), p.ssrc()),
            (6, OPUS_PAYLOAD_TYPE, 0x1111)
        );
        assert_eq!(p.payload(), &pkt[..], "payload untouched");
        assert_eq!(
            p.timestamp(),
            1000 + 960 * i,
            "re-stamped into our timestamp space"
        );
        assert_eq!(p.sequence(), 10 + i as u16);
    }
    // Nothing is transcoded on the playout clock.
    assert!(
        leg.poll_uplink(Duration::from_millis(200), &mut out)
            .is_none()
    );
}

#[test]
fn garbage_and_unknown_payload_types_are_reported_not_fatal() {
    let mut leg = leg(PhoneCodec::Pcmu, 0);
    let mut out = [0u8; 1500];
    assert!(
        leg.push_phone(Duration::ZERO, &[0x80, 0], &mut out)
            .is_err()
    );
    assert!(
        leg.push_phone(Duration::ZERO, &[0u8; 40], &mut out)
            .is_err()
    );
    let d = rtp(18, 1, 1, 1, &[0; 20]);
    assert_eq!(
        leg.push_phone(Duration::ZERO, &d, &mut out).unwrap(),
        FromPhone::UnknownPayloadType(18)
    );
    let d = rtp(COMFORT_NOISE_PT, 1, 1, 1, &[40]);
    assert_eq!(
        leg.push_phone(Duration::ZERO, &d, &mut out).unwrap(),
        FromPhone::Nothing
    );
    let d = rtp(101, 1, 1, 1, &[99, 0, 0, 0]);
    assert!(matches!(
        leg.push_phone(Duration::ZERO, &d, &mut out),
        Err(PhoneLegError::Dtmf(DtmfError::NotDtmf(99)))
    ));
    let mut rng = fastrand::Rng::with_seed(3);
    for _ in 0..2000 {
        let d: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
        let _ = leg.push_phone(Duration::from_millis(rng.u64(0..10_000)), &d, &mut out);
        let _ = leg.poll_uplink(Duration::from_millis(rng.u64(0..10_000)), &mut out);
    }
    assert!(
        PhoneLeg::new(&PhoneLegConfig {
            ptime: Duration::from_millis(25),
            ..config_of(PhoneCodec::Pcmu, 0)
        })
        .is_err()
    );
}

/// A phone at `ptime_ms` and a 20 ms Opus flow: each direction is
/// repacketized, keeps its clock, and carries the tone.
fn repacketized_both_ways(codec: PhoneCodec, pt: u8, ptime_ms: u32) {
    let ptime = Duration::from_millis(ptime_ms.into());
    let mut leg = PhoneLeg::new(&PhoneLegConfig {
        ptime,
        ..config_of(codec, pt)
    })
    .unwrap();
    let tick = leg.tick();
    assert_eq!(tick.as_millis() as u32, gcd(ptime_ms, 20));
    let rate = codec.sample_rate();
    let per_pkt = (rate * ptime_ms / 1000) as usize;
    let ts_step = codec.rtp_clock() * ptime_ms / 1000;
    let mut phone_enc = PhoneEnc::new(codec).unwrap();
    let mut phone_dec = PcmDecoder::new(codec).unwrap();
    let mut relay_enc = OpusEncoder::new(&opus()).unwrap();
    let mut relay_dec = OpusDecoder::new().unwrap();
    let (mut up_heard, mut down_heard) = (Vec::new(), Vec::new());
    let mut up_prev: Option<(u16, u32)> = None;
    let mut down_prev: Option<(u16, u32)> = None;
    let mut out = [0u8; 1500];
    let (mut sent_pkts, mut relay_frames) = (0usize, 0usize);
    let total = Duration::from_millis(1200);
    let mut now = Duration::ZERO;
    let mut at_end = None;
    while now < total + Duration::from_millis(200) {
        if now >= total && at_end.is_none() {
            // After this the phone is silent: the buffer conceals its tail.
            at_end = Some(leg.stats());
        }
        // The phone sends one packet per packet time, the relay one frame per 20 ms.
        if now < total && (now.as_millis() as u32).is_multiple_of(ptime_ms) {
            let mut payload = [0u8; 1000];
            let pcm = tone(rate, 1000.0, sent_pkts * per_pkt, per_pkt);
            let len = phone_enc.encode(&pcm, &mut payload);
            assert_eq!(len, codec.payload_len(per_pkt), "{codec:?} @ {ptime_ms} ms");
            let d = rtp(
                pt,
                900 + sent_pkts as u16,
                5000 + ts_step * sent_pkts as u32,
                0xabc,
                &payload[..len],
            );
            leg.push_phone(now, &d, &mut out).unwrap();
            sent_pkts += 1;
        }
        if now < total && now.as_millis().is_multiple_of(20) {
            let pkt = relay_enc
                .encode(&tone(48_000, 600.0, relay_frames * 960, 960))
                .unwrap()
                .to_vec();
            let d = rtp(
                111,
                relay_frames as u16,
                960 * relay_frames as u32,
                0x77,
                &pkt,
            );
            leg.push_relay(now, &Packet::new_checked(&d[..]).unwrap());
            relay_frames += 1;
        }
        let at = now + Duration::from_millis(1);
        if let Some(len) = leg.poll_uplink(at, &mut out) {
            let (_, p) = flow::decode(&out[..len]).unwrap();
            if let Some((s, t)) = up_prev {
                assert_eq!(p.sequence(), s.wrapping_add(1));
                let step = p.timestamp().wrapping_sub(t);
                assert!(step % 960 == 0 && step > 0, "uplink step {step}");
            }
            up_prev = Some((p.sequence(), p.timestamp()));
            up_heard.extend_from_slice(relay_dec.decode(p.payload()).unwrap());
        }
        if let Some(len) = leg.poll_downlink(at, &mut out) {
            let p = Packet::new_checked(&out[..len]).unwrap();
            assert_eq!(p.payload_type(), pt);
            assert_eq!(
                p.payload().len(),
                codec.payload_len(per_pkt),
                "{codec:?} @ {ptime_ms} ms"
            );
            if let Some((s, t)) = down_prev {
                assert_eq!(p.sequence(), s.wrapping_add(1));
                assert_eq!(p.timestamp(), t.wrapping_add(ts_step), "phone clock");
            }
            down_prev = Some((p.sequence(), p.timestamp()));
            let mut pcm = [0i16; 960];
            let n = phone_dec.decode(p.payload(), &mut pcm);
            down_heard.extend_from_slice(&pcm[..n]);
        }
        now += tick;
    }
    // Nearly all of the 1.2 s arrived each way (less the buffering delay).
    assert!(
        up_heard.len() >= 48 * 1000,
        "{ptime_ms} ms: uplink {} samples",
        up_heard.len()
    );
    let r = rate as usize;
    assert!(
        down_heard.len() >= r * 11 / 10,
        "{ptime_ms} ms: downlink {}",
        down_heard.len()
    );
    let up = tone_share(&up_heard[48 * 200..48 * 1000], 48_000, 1000.0);
    assert!(
        up > 0.8,
        "{codec:?} @ {ptime_ms} ms: uplink 1 kHz is {up:.2} of the power"
    );
    let down = tone_share(&down_heard[r / 5..r], rate, 600.0);
    assert!(
        down > 0.8,
        "{codec:?} @ {ptime_ms} ms: downlink 600 Hz is {down:.2} of the power"
    );
    let st = at_end.unwrap();
    assert_eq!(
        (st.uplink_concealed, st.downlink_lost),
        (0, 0),
        "{ptime_ms} ms: {st:?}"
    );
}

#[test]
fn phones_at_other_packet_times_are_repacketized_both_ways() {
    for ptime in [10, 20, 30, 40, 60] {
        repacketized_both_ways(PhoneCodec::Pcmu, 0, ptime);
    }
    repacketized_both_ways(PhoneCodec::G722, 9, 30);
}
