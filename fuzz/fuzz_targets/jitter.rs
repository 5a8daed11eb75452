#![no_main]
//! The jitter buffer driven by arbitrary pushes and pops.
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use voxgate::media::jitter::{JitterBuffer, JitterConfig};

fuzz_target!(|data: &[u8]| {
    // Both behaviours: the phone legs' and the speaker path's adaptive floor.
    let mut jb = JitterBuffer::new(JitterConfig {
        adaptive_floor: data.first().is_some_and(|b| b & 1 == 1),
        ..JitterConfig::default()
    });
    let mut now = Duration::ZERO;
    for op in data.chunks(8) {
        if op.len() < 8 {
            break;
        }
        now += Duration::from_millis(u64::from(op[0]));
        if op[1] & 1 == 0 {
            let seq = u16::from_be_bytes([op[2], op[3]]);
            let ts = u32::from_be_bytes([op[4], op[5], op[6], op[7]]);
            // Payload sizes 0..=3048 reach past the 1500-byte limit.
            let payload = vec![op[7]; usize::from(op[1] >> 1) * 24];
            jb.push(now, seq, ts, &payload);
        } else {
            let packet = matches!(jb.pop(now), voxgate::media::jitter::Playout::Packet(_));
            // The caller's verdict on the decoded frame: drop it as silence.
            if packet && op[2] & 1 == 1 && jb.wants_quiet_skip() {
                jb.quiet_skipped();
            }
        }
        assert!(jb.stats().depth <= 64);
    }
});
