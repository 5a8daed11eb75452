#![no_main]
//! The webhooks' parsers on any text: an endpoint URL (`Target::parse`,
//! then the SSRF guard on its IP literal), a `webhook-signature` header, a
//! `whsec_` secret and a config duration. None panics; a parsed URL is
//! always HTTPS with a host, and its `Host` header value parses back.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::webhooks::policy::{Guard, Target};
use voxgate::relay::webhooks::sign::{WebhookSecret, parse_signatures};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Target::parse(text) {
        assert!(!t.host.is_empty() && t.port > 0 && t.path.starts_with('/'));
        let again = Target::parse(&format!("https://{}{}", t.authority(), t.path)).unwrap();
        assert_eq!(again, t);
        if let Some(ip) = t.ip() {
            let _ = Guard::default().check(&t.host, ip);
        }
    }
    for sig in parse_signatures(text) {
        assert_eq!(sig.len(), 32);
    }
    if let Ok(s) = WebhookSecret::parse(text) {
        let _ = s.verify("msg_x", 1, b"{}", text);
    }
    let _ = voxgate::config::parse_duration(text);
});
