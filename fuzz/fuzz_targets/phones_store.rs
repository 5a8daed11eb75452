//! The phone store's payload parser (what a sealed phones file decrypts to):
//! arbitrary bytes never panic, and what parses renders back identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxgate::bridge::phone_store::PhoneStore;

fuzz_target!(|data: &[u8]| {
    if let Ok(store) = PhoneStore::parse(data) {
        let again = PhoneStore::parse(&store.render()).expect("rendered store parses");
        assert_eq!(again, store);
    }
});
