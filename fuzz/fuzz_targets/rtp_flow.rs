#![no_main]
//! RTP-over-QUIC datagrams: decode, and re-encode what decodes.
use libfuzzer_sys::fuzz_target;
use voxgate::media::{flow, rtp};

fuzz_target!(|data: &[u8]| {
    if let Ok((id, p)) = flow::decode(data) {
        let repr = rtp::Repr::parse(&p);
        let mut buf = [0u8; 2048];
        if let Some(n) = flow::encode(id, &repr, p.payload(), &mut buf) {
            let (id2, p2) = flow::decode(&buf[..n]).expect("re-encoded datagram decodes");
            assert_eq!(id, id2);
            assert_eq!(p.payload(), p2.payload());
        }
    }
});
