//! Rate limits of the API, sans-IO: windows of `[[api.limit]]` rules per
//! client address or per key, and the budget of failed authentications
//! per address; the client's address behind trusted proxies.
//!
//! A window starts at the first request counted in it and lasts the rule's
//! window; past `count` requests the answer is 429 until it ends
//! (`Retry-After` is the time left). Windows that changed are handed to
//! the registry in batches ([`Limiter::take_dirty`]) and read back at start
//! ([`Limiter::restore`]), so a restart resets nobody's window.

use crate::config::{LimitPer, LimitRule};
use crate::relay::registry::RateRow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

/// Windows held at most: past it, ended windows are dropped first, then
/// new subjects are refused as if over their limit.
const MAX_WINDOWS: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: i64,
    count: u32,
}

/// The limiter's rules and windows.
#[derive(Debug)]
pub struct Limiter {
    rules: Vec<LimitRule>,
    names: Vec<String>,
    windows: HashMap<(usize, String), Window>,
    dirty: HashSet<(usize, String)>,
}

/// The index of the failed-authentication rule.
pub const AUTH_FAILURES: usize = 0;

impl Limiter {
    /// The limiter of `rules`, with the budget of `auth_failures_per_minute`
    /// failed authentications per address first.
    pub fn new(auth_failures_per_minute: u32, rules: &[LimitRule]) -> Limiter {
        let mut all = vec![LimitRule {
            route: "auth.failure".into(),
            per: LimitPer::Address,
            count: auth_failures_per_minute,
            window: Duration::from_secs(60),
        }];
        all.extend(rules.iter().cloned());
        let names = all.iter().map(LimitRule::name).collect();
        Limiter {
            rules: all,
            names,
            windows: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// The windows read back from the registry (rows of rules no longer
    /// configured are ignored).
    pub fn restore(&mut self, rows: Vec<RateRow>) {
        for r in rows {
            if let Some(i) = self.names.iter().position(|n| *n == r.rule) {
                self.windows.insert(
                    (i, r.subject),
                    Window {
                        start: r.start,
                        count: r.count,
                    },
                );
            }
        }
    }

    /// Count one request of route class `class` by `addr` with key `key`
    /// at `now` (Unix seconds) under every rule that applies; the seconds
    /// to wait when one of them is over its count (nothing is counted
    /// then).
    pub fn admit(&mut self, class: &str, addr: IpAddr, key: &str, now: i64) -> Result<(), u64> {
        let addr = addr.to_string();
        let hits: Vec<(usize, String)> = (1..self.rules.len())
            .filter(|&i| self.rules[i].applies_to(class))
            .map(|i| {
                let subject = match self.rules[i].per {
                    LimitPer::Address => addr.clone(),
                    LimitPer::Key => key.to_string(),
                };
                (i, subject)
            })
            .collect();
        let mut wait = 0;
        for (i, s) in &hits {
            if let Some(w) = self.over(*i, s, now) {
                wait = wait.max(w);
            }
        }
        if wait > 0 {
            return Err(wait);
        }
        for (i, s) in hits {
            self.count(i, s, now)?;
        }
        Ok(())
    }

    /// Whether `addr` has spent its failed-authentication budget: the
    /// seconds to wait.
    pub fn auth_blocked(&self, addr: IpAddr, now: i64) -> Option<u64> {
        self.over(AUTH_FAILURES, &addr.to_string(), now)
    }

    /// Count a failed authentication by `addr`; whether it was within the
    /// budget (the ones past it are not audited one by one).
    pub fn auth_failed(&mut self, addr: IpAddr, now: i64) -> bool {
        self.count(AUTH_FAILURES, addr.to_string(), now).is_ok()
    }

    fn over(&self, i: usize, subject: &str, now: i64) -> Option<u64> {
        let rule = &self.rules[i];
        let w = self.windows.get(&(i, subject.to_string()))?;
        let end = w.start.saturating_add(rule.window.as_secs() as i64);
        (now < end && w.count >= rule.count).then(|| (end - now).max(1) as u64)
    }

    fn count(&mut self, i: usize, subject: String, now: i64) -> Result<(), u64> {
        let (len, max) = (self.rules[i].window.as_secs() as i64, self.rules[i].count);
        let k = (i, subject);
        if !self.windows.contains_key(&k) && self.windows.len() >= MAX_WINDOWS {
            self.prune(now);
            if self.windows.len() >= MAX_WINDOWS {
                return Err(60);
            }
        }
        let w = self.windows.entry(k.clone()).or_insert(Window {
            start: now,
            count: 0,
        });
        if now >= w.start.saturating_add(len) {
            *w = Window {
                start: now,
                count: 0,
            };
        }
        if w.count >= max {
            return Err((w.start + len - now).max(1) as u64);
        }
        w.count += 1;
        self.dirty.insert(k);
        Ok(())
    }

    /// Drop the windows that ended before `now`.
    pub fn prune(&mut self, now: i64) {
        let rules = &self.rules;
        self.windows
            .retain(|(i, _), w| now < w.start.saturating_add(rules[*i].window.as_secs() as i64));
    }

    /// The windows changed since the last call, and per rule the oldest
    /// start still running (older rows may go).
    pub fn take_dirty(&mut self, now: i64) -> (Vec<RateRow>, Vec<(String, i64)>) {
        let rows = self
            .dirty
            .drain()
            .filter_map(|k| {
                let w = self.windows.get(&k)?;
                Some(RateRow {
                    rule: self.names[k.0].clone(),
                    subject: k.1,
                    start: w.start,
                    count: w.count,
                })
            })
            .collect();
        let expired = self
            .rules
            .iter()
            .zip(&self.names)
            .map(|(r, n)| (n.clone(), now - r.window.as_secs() as i64))
            .collect();
        (rows, expired)
    }
}

/// The client's address: the socket's, unless the socket's peer is a
/// trusted proxy; then `X-Forwarded-For` is read from the right, each hop
/// a trusted proxy added, and the first address that is not a trusted
/// proxy is the client. A malformed entry stops the walk at the proxy
/// that passed it on. The leftmost entry is never believed blindly.
pub fn client_addr<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = forwarded.flat_map(|h| h.split(',')).collect();
    let mut client = peer;
    for e in entries.iter().rev().take(32) {
        let Some(a) = parse_hop(e.trim()) else {
            return client;
        };
        client = a;
        if !is_trusted(&a) {
            return a;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`[v6]:p`,
/// `v4:p`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Some(a);
    }
    s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// The route class of a request: the resource (the path's first segment
/// after `/v1/`) and the action: a literal last segment after an id
/// (`devices.revoke`, `api-keys.rotate`), else by method on the collection
/// (`list`, `create`) or on an item (`get`, `update`, `delete`).
pub fn route_class(method: &axum::http::Method, path: &str) -> String {
    use axum::http::Method;
    let segs: Vec<&str> = path
        .trim_start_matches("/v1/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let Some(resource) = segs.first() else {
        return "root.get".into();
    };
    let param = |s: &&str| s.starts_with('{');
    let last = segs.last().copied().unwrap_or_default();
    let action = if segs.len() > 1 && !param(&last) {
        last
    } else {
        let item = segs.len() > 1;
        match (method, item) {
            (&Method::GET, false) | (&Method::HEAD, false) => "list",
            (&Method::GET, true) | (&Method::HEAD, true) => "get",
            (&Method::POST, _) => "create",
            (&Method::DELETE, _) => "delete",
            _ => "update",
        }
    };
    format!("{resource}.{action}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn rule(route: &str, per: LimitPer, count: u32, secs: u64) -> LimitRule {
        LimitRule {
            route: route.into(),
            per,
            count,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn the_fourth_request_in_the_window_waits_for_its_end_even_after_a_restart() {
        let rules = [rule("calls.create", LimitPer::Address, 3, 86_400)];
        let mut l = Limiter::new(5, &rules);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for t in 0..3 {
            assert_eq!(l.admit("calls.create", a, "k1", 1000 + t), Ok(()));
        }
        assert_eq!(
            l.admit("devices.list", a, "k1", 1003),
            Ok(()),
            "another class"
        );
        let (rows, _) = l.take_dirty(1003);
        let mut again = Limiter::new(5, &rules);
        again.restore(rows);
        assert_eq!(again.admit("calls.create", a, "k2", 1010), Err(86_400 - 10));
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(again.admit("calls.create", b, "k1", 1010), Ok(()));
        assert_eq!(again.admit("calls.create", a, "k1", 1000 + 86_400), Ok(()));
    }

    #[test]
    fn per_key_rules_and_auth_failures() {
        let mut l = Limiter::new(2, &[rule("*", LimitPer::Key, 2, 60)]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(l.admit("devices.list", a, "k1", 0), Ok(()));
        assert_eq!(l.admit("tokens.create", b, "k1", 1), Ok(()));
        assert_eq!(l.admit("devices.list", b, "k1", 2), Err(58));
        assert_eq!(l.admit("devices.list", b, "k2", 2), Ok(()));
        assert!(l.auth_failed(a, 0) && l.auth_failed(a, 1));
        assert_eq!(l.auth_blocked(a, 2), Some(58));
        assert!(!l.auth_failed(a, 3));
        assert_eq!(l.auth_blocked(b, 2), None);
        assert_eq!(l.auth_blocked(a, 61), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let f = |peer: &str, xff: &[&str]| client_addr(ip(peer), xff.iter().copied(), &trusted);
        // An untrusted peer's header is ignored.
        assert_eq!(f("198.51.100.7", &["203.0.113.1"]), ip("198.51.100.7"));
        // Through a trusted proxy: the client it saw.
        assert_eq!(f("10.0.0.2", &["203.0.113.1"]), ip("203.0.113.1"));
        // A client forging the left end gains nothing.
        assert_eq!(f("10.0.0.2", &["1.2.3.4, 203.0.113.1"]), ip("203.0.113.1"));
        // Two trusted hops, two headers.
        assert_eq!(
            f("10.0.0.2", &["1.2.3.4, 203.0.113.1", "10.0.0.3"]),
            ip("203.0.113.1")
        );
        assert_eq!(f("10.0.0.2", &["garbage"]), ip("10.0.0.2"));
        assert_eq!(f("10.0.0.2", &[]), ip("10.0.0.2"));
        assert_eq!(f("10.0.0.2", &["[2001:db8::1]:443"]), ip("2001:db8::1"));
    }

    #[test]
    fn route_classes() {
        let c = |m: Method, p: &str| route_class(&m, p);
        assert_eq!(c(Method::GET, "/v1/devices"), "devices.list");
        assert_eq!(c(Method::GET, "/v1/devices/{id}"), "devices.get");
        assert_eq!(c(Method::POST, "/v1/devices/{id}/revoke"), "devices.revoke");
        assert_eq!(c(Method::POST, "/v1/calls"), "calls.create");
        assert_eq!(
            c(Method::DELETE, "/v1/recordings/{device}/{file}"),
            "recordings.delete"
        );
        assert_eq!(c(Method::PATCH, "/v1/webhooks/{id}"), "webhooks.update");
        assert_eq!(
            c(Method::POST, "/v1/api-keys/{id}/rotate"),
            "api-keys.rotate"
        );
    }
}
