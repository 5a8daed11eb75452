#![no_main]
//! A `trust_root` announcement as a device reads it: any bytes split into a
//! root and a cross certificate. Against no held root nothing can be
//! taken: every announcement is refused, none panics.
use libfuzzer_sys::fuzz_target;
use voxgate::pki::roots::{Announcement, adopt};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (root, cross) = data.split_at(cut);
    for only in [false, true] {
        let a = Announcement { root, cross, only };
        assert!(adopt(&[], a, 1_800_000_000).is_err());
    }
});
