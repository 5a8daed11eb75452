//! PEM certificate and key files as `pki::files` reads them (rustls-pki-types'
//! parser underneath): any bytes give certificates, a key, or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate::pki::files::{parse_certs, parse_key};

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = parse_certs(data) {
        assert!(!certs.is_empty());
    }
    let _ = parse_key(data);
});
