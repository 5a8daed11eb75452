#![no_main]
//! Request bodies of the operator API: any bytes as each JSON body type
//! (unknown fields refused, never a panic), and the scope names of a key
//! body checked as the handler checks them.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::api::{keys, tokens};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<tokens::NewToken>(data);
    let _ = serde_json::from_slice::<keys::Rotate>(data);
    if let Ok(k) = serde_json::from_slice::<keys::NewKey>(data) {
        let _ = keys::scopes_of(&k.scopes);
    }
});
