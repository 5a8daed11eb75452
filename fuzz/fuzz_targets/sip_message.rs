#![no_main]
//! SIP datagrams: parse, and what parses re-encodes to an equal message.
use libfuzzer_sys::fuzz_target;
use voxgate::sip::{Limits, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::parse(data) {
        // Typed accessors never panic either.
        let _ = (
            msg.vias(),
            msg.contacts(),
            msg.routes("Record-Route"),
            msg.expires(),
        );
        let bytes = msg.encode();
        // Canonical names and the added Content-Length may lengthen it (and
        // add one header value).
        let roomy = Limits {
            max_message: 1 << 20,
            max_head: 1 << 20,
            max_header_len: 1 << 16,
            max_headers: Limits::UDP.max_headers + 1,
            ..Limits::STREAM
        };
        let again = Message::parse_limited(&bytes, &roomy).expect("encoded message parses");
        assert_eq!(again.start, msg.start);
        assert_eq!(again.body, msg.body);
        let names = |m: &Message| {
            m.headers
                .iter()
                .filter(|h| h.name != "Content-Length")
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&again), names(&msg));
    }
});
