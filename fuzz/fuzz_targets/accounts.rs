#![no_main]
//! /etc/passwd and /etc/group parsing.
use libfuzzer_sys::fuzz_target;
use voxgate::privilege::accounts::{find_group, find_user};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let name = text.split(':').next().unwrap_or("");
        let _ = find_user(text, name);
        let _ = find_group(text, name);
    }
});
