//! Passphrase-encrypted files (`pki::passphrase`): any bytes give a header
//! or a typed error, never a panic; with the checksum made to match, opening
//! reaches the tag check and fails it (only the passphrase's file opens);
//! and the bytes sealed under a passphrase open to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::digest::{SHA256, digest};
use voxgate::pki::passphrase::{
    HEADER_LEN, MIN_ITERATIONS, Passphrase, PassphraseError, open, parse_header, seal_with,
};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let pass = Passphrase::new(Zeroizing::new(b"fuzzing passphrase".to_vec())).unwrap();
    if let Ok(h) = parse_header(data) {
        assert!(h.iterations >= MIN_ITERATIONS);
    }
    assert!(open(&pass, data).is_err());

    // The same bytes with a checksum that matches: the iteration count is
    // held to what a fuzz run can afford.
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(digest(&SHA256, data).as_ref());
    if let Ok(h) = parse_header(&fixed)
        && h.iterations <= 2 * MIN_ITERATIONS
    {
        assert_eq!(
            open(&pass, &fixed).unwrap_err(),
            PassphraseError::WrongPassphrase
        );
    }

    // Sealing derives a key twice: one input in eight, to keep the parser
    // runs fast.
    if data.len() <= 4 * HEADER_LEN && data.first().is_some_and(|b| b % 8 == 0) {
        let file = seal_with(&pass, data, MIN_ITERATIONS).unwrap();
        assert_eq!(open(&pass, &file).unwrap().as_slice(), data);
    }
});
