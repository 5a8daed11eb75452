#![no_main]
//! Sealed key files: header parsing and opening arbitrary bytes.
use libfuzzer_sys::fuzz_target;
use voxgate::pki::sealed::{Material, parse_header, unseal};

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data);
    let m = Material::new("0123456789abcdef0123456789abcdef", None).unwrap();
    assert!(unseal(&m, data).is_err() || data.len() >= 70);
});
