#![no_main]
//! The recorder fed arbitrary (seq, timestamp, payload) packets.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::recorder::OggOpusRecorder;

fuzz_target!(|data: &[u8]| {
    let Ok(mut rec) = OggOpusRecorder::new(Vec::new(), 1, "fuzz") else { return };
    for chunk in data.chunks(8) {
        if chunk.len() < 7 {
            break;
        }
        let seq = u16::from_be_bytes([chunk[0], chunk[1]]);
        let ts = u32::from_be_bytes([chunk[2], chunk[3], chunk[4], chunk[5]]);
        let _ = rec.push(seq, ts.wrapping_mul(960), &chunk[6..]);
    }
    let _ = rec.finish();
});
