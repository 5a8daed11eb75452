#![no_main]
//! The signer's frames: any bytes as a request body and as an answer body;
//! a request that parses re-encodes to the same bytes, and the policy
//! check never panics on it.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::signer::proto;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = proto::decode_request(data) {
        let mut out = Vec::new();
        proto::encode_request(&r, &mut out).expect("a decoded request re-encodes");
        assert_eq!(&out[2..], data);
        let policy = proto::Policy {
            server_name: "relay.test".into(),
            max_device_s: 86_400,
            max_relay_s: 3_600,
        };
        let _ = proto::check(&r, &policy);
    }
    if let Ok(a) = proto::decode_answer(data) {
        let mut out = Vec::new();
        proto::encode_answer(&a, &mut out).expect("a decoded answer re-encodes");
        assert_eq!(proto::decode_answer(&out[2..]).unwrap(), a);
    }
});
