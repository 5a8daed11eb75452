#![no_main]
//! Opus packet TOC/framing parser.
use libfuzzer_sys::fuzz_target;
use voxgate::codec::opus_packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(n) = opus_packet::packet_samples(data) {
        assert!(n > 0 && n <= 5760);
    }
});
