#![no_main]
//! SIP over a stream: split any bytes into frames; never past the buffer.
use libfuzzer_sys::fuzz_target;
use voxgate::sip::framing::{Frame, next_frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(frame) = next_frame(rest) {
        let used = match frame {
            Frame::Incomplete => break,
            Frame::KeepAlive { used, .. } => used,
            Frame::Message { used, .. } => used,
        };
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
