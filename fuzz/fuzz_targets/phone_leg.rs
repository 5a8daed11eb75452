//! Arbitrary datagrams from a phone and from the relay into a call leg
//! (RTP, RFC 4733 events, G.711/G.722/Opus payloads), interleaved with the
//! playout clock: nothing may panic, and every output fits its buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use voxgate::codec::telephony::PhoneCodec;
use voxgate::codec::CodecConfig;
use voxgate::media::leg::{PhoneLeg, PhoneLegConfig};
use voxgate::media::rtp::Packet;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let codec = [PhoneCodec::Pcmu, PhoneCodec::Pcma, PhoneCodec::G722, PhoneCodec::Opus]
        [usize::from(sel & 3)];
    let Ok(mut leg) = PhoneLeg::new(&PhoneLegConfig {
        codec,
        phone_pt: codec.static_payload_type().unwrap_or(96),
        dtmf_pt: (sel & 4 != 0).then_some(101),
        ptime: Duration::from_millis(10 * u64::from(1 + (sel >> 3) % 6)),
        opus: CodecConfig {
            frame: Duration::from_millis(20),
            bitrate: 24_000,
            fec: true,
            dtx: false,
            expected_loss_percent: 5,
            complexity: 0,
        },
        up_flow: 2,
        up_ssrc: 1,
        down_ssrc: 2,
        initial: (0, 0, 0, 0),
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }) else {
        return;
    };
    let mut out = [0u8; 1500];
    let mut now = Duration::ZERO;
    // Records: [kind, len, bytes...].
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (d, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(kind >> 3));
        match kind & 7 {
            0 | 1 => {
                let _ = leg.push_phone(now, d, &mut out);
            }
            2 => {
                if let Ok(p) = Packet::new_checked(d) {
                    leg.push_relay(now, &p);
                }
            }
            3 => {
                if let Some(n) = leg.poll_uplink(now, &mut out) {
                    assert!(n <= out.len());
                }
            }
            4 => {
                if let Some(n) = leg.poll_downlink(now, &mut out) {
                    assert!(n <= out.len());
                }
            }
            5 => {
                if let Some(c) = d.first().and_then(|&b| char::from_u32(u32::from(b))) {
                    if let Some(digit) = voxgate::media::dtmf::Digit::from_char(c) {
                        leg.send_digit(digit, u32::from(*len) * 10);
                    }
                }
            }
            _ => {}
        }
    }
});
