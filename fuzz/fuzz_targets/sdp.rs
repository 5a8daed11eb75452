#![no_main]
//! SDP bodies: parse, re-encode to an equal session, and answer any offer.
use libfuzzer_sys::fuzz_target;
use voxgate::sip::offer::{self, DEFAULT_PREFERENCE, LocalMedia};
use voxgate::sip::sdp::{MAX_LINES, MAX_SDP, Session};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Session::parse(data) {
        let bytes = s.encode();
        // Encoding writes CRLF and always an s= line, so an input right at
        // the size or line bound can grow past it; everything else must
        // come back equal.
        let lines = bytes.iter().filter(|b| **b == b'\n').count();
        if bytes.len() <= MAX_SDP && lines < MAX_LINES {
            let again = Session::parse(&bytes).expect("encoded SDP parses");
            assert_eq!(again, s);
        }
        let local = LocalMedia {
            addr: [192, 168, 1, 2].into(),
            port: 20000,
            session_id: 1,
            session_version: 1,
        };
        if let Ok((answer, _)) = offer::answer(&s, &local, &DEFAULT_PREFERENCE) {
            Session::parse(&answer.encode()).expect("our answer parses");
        }
        let _ = offer::accept_answer(&s);
    }
});
