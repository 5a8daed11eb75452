#![no_main]
//! The API's rate-limit inputs: `X-Forwarded-For` headers (the client is
//! the socket's peer or an address the header names, never a panic),
//! route classes of any path, windows from config text, and a limiter fed
//! any sequence of requests.
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use voxgate::config::{LimitPer, LimitRule, parse_window};
use voxgate::relay::api::limits::{Limiter, client_addr, route_class};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let headers: Vec<&str> = s.split('\n').collect();
    let c = client_addr(peer, headers.iter().copied(), &trusted);
    assert!(c == peer || s.contains(&c.to_string()) || s.contains(':'));
    let _ = route_class(&axum::http::Method::POST, s);
    let _ = parse_window(s);
    let rule = LimitRule {
        route: "*".into(),
        per: LimitPer::Address,
        count: 3,
        window: std::time::Duration::from_secs(10),
    };
    let mut l = Limiter::new(2, &[rule]);
    for pair in data.chunks(2) {
        let (who, t) = (pair[0] % 4, i64::from(*pair.get(1).unwrap_or(&0)));
        let addr = IpAddr::from([192, 0, 2, who]);
        let _ = l.admit("devices.list", addr, "k", t);
        let _ = l.auth_failed(addr, t);
        let _ = l.auth_blocked(addr, t);
    }
    let _ = l.take_dirty(300);
});
