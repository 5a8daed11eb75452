#![no_main]
//! Ogg Opus files given to the relay as downlink sources.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::audio_file::OggOpusReader;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = OggOpusReader::open(data) {
        for _ in 0..10_000 {
            match r.next_packet() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
