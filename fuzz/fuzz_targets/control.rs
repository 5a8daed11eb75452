#![no_main]
//! Control-stream frames: any bytes, decoded frame by frame.
use libfuzzer_sys::fuzz_target;
use voxgate::proto::control;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = control::decode_frame(rest) {
        let mut buf = [0u8; 4096];
        let n = control::encode(&msg, &mut buf).expect("decoded message re-encodes");
        let (again, _) = control::decode_frame(&buf[..n]).unwrap().unwrap();
        assert_eq!(msg, again);
        rest = &rest[used..];
    }
});
