#![no_main]
//! Request bodies of the operator API: any bytes as each JSON body type
//! (unknown fields refused, never a panic), the scope names of a key body
//! checked as the handler checks them, and a call's numbers given to the
//! switch as `POST /v1/calls` gives them.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::api::{calls, keys, tokens};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<tokens::NewToken>(data);
    let _ = serde_json::from_slice::<keys::Rotate>(data);
    if let Ok(k) = serde_json::from_slice::<keys::NewKey>(data) {
        let _ = keys::scopes_of(&k.scopes);
    }
    if let Ok(c) = serde_json::from_slice::<calls::NewCall>(data) {
        let mut sw = voxgate::relay::switch::Switch::new(0);
        sw.session_up(1);
        let _ = sw.ext_up(1, "201");
        let _ = sw.originate(std::time::Duration::ZERO, &c.from, &c.to);
    }
});
