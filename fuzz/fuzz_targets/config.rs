#![no_main]
//! Gateway and relay TOML configs.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voxgate::config::GatewayConfig::parse("fuzz.toml".as_ref(), text);
        let _ = voxgate::config::RelayConfig::parse("fuzz.toml".as_ref(), text);
    }
});
