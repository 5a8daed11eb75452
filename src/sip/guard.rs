//! Abuse protection in front of the registrar: source allowlist, a budget of
//! failed authentications per source, bans, and the 401 challenge itself.
//!
//! Guarantees:
//! - a source outside the allowlist, or banned, gets [`Decision::Drop`]: the
//!   shell sends nothing back (no oracle, no amplification); an empty
//!   allowlist admits nobody;
//! - the normal first challenge (a request without credentials) and a
//!   `stale=true` re-challenge are never counted as failures, and neither
//!   is an answer that does not carry a fresh nonce issued to its source
//!   ([`AuthOutcome::Unproven`]): only a sender that receives our replies
//!   can spend a source's budget, so forged REGISTERs "from" a phone's
//!   address cannot get that phone banned;
//! - a correct answer resets no counter (neither its own source's nor any
//!   other's), so one known account cannot be used to keep brute-forcing
//!   others; counters decay when their window ends;
//! - past `max_failures` within `window` the source is banned for `ban`;
//! - more than `max_packets` per `packet_window` from one source are dropped
//!   (flood clipping, reported once per window, never a ban by itself);
//! - the response to an unknown extension and to a wrong password is built
//!   by the same code from the same inputs (request, source, time), so the
//!   bytes are identical; [`AuditEvent`] does not tell them apart either;
//! - IPv4 sources are tracked per address, IPv6 ones per
//!   [`GuardConfig::ipv6_prefix`] (per address by default: on a LAN every
//!   phone shares one /64); at most `max_sources` are tracked, evicting
//!   unbanned ones first, oldest first;
//! - [`Guard::admit`] needs only the source address: the shell runs it
//!   before parsing anything.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::auth::{AuthOutcome, DigestServer, FailReason, Ha1Pair, hex};
use super::message::Message;

/// Why a CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("invalid address in CIDR {0:?}")]
    Address(String),
    /// The prefix length is not a number within the address size.
    #[error("invalid prefix length in CIDR {0:?} (0-32 for IPv4, 0-128 for IPv6)")]
    Prefix(String),
}

/// A subnet such as `192.168.1.0/24` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/len` (a bare address means a single host).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = a.trim().parse().map_err(|_| CidrError::Address(s.into()))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .map_err(|_| CidrError::Prefix(s.into()))?,
            None => max,
        };
        if prefix > max {
            return Err(CidrError::Prefix(s.into()));
        }
        Ok(Cidr { net, prefix })
    }

    /// True when `ip` (IPv4-mapped IPv6 counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Guard settings (validated config).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Subnets allowed to talk SIP to the box; empty admits nobody.
    pub allow: Vec<Cidr>,
    /// Failed authentications allowed per source within `window`.
    pub max_failures: u32,
    /// Window over which failures are counted.
    pub window: Duration,
    /// How long a source is dropped once over budget.
    pub ban: Duration,
    /// Most sources tracked at once.
    pub max_sources: usize,
    /// Packets a source may send per `packet_window` before the excess is
    /// dropped (flood protection; not a ban, since UDP sources can be forged).
    pub max_packets: u32,
    /// Window of `max_packets`.
    pub packet_window: Duration,
    /// IPv6 sources sharing this prefix share one budget and one ban
    /// (128: per address; 64 on an Internet-facing listener).
    pub ipv6_prefix: u8,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            allow: Vec::new(),
            max_failures: 5,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(3600),
            max_sources: 4096,
            max_packets: 200,
            packet_window: Duration::from_secs(1),
            ipv6_prefix: 128,
        }
    }
}

/// What the shell does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send nothing.
    Drop,
    /// Send this response (a 401 challenge).
    Respond(Box<Message>),
    /// The request is authenticated as `user`; go on with it.
    Authenticated {
        /// The extension.
        user: String,
    },
}

/// Security-relevant events, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// A source outside the allowlist was dropped.
    NotAllowed {
        /// Source address.
        src: IpAddr,
    },
    /// A wrong or malformed answer that carries no fresh nonce issued to
    /// its source: challenged again, not counted (the source may be forged).
    AuthUnproven {
        /// Source address.
        src: IpAddr,
        /// User name tried (attacker-controlled: escape before logging).
        user: String,
    },
    /// A right answer whose (nonce, nc) pair was used before: challenged
    /// again with `stale=true`, not counted.
    Replayed {
        /// Source address.
        src: IpAddr,
        /// The user.
        user: String,
    },
    /// A wrong answer to a challenge (unknown user and wrong password alike).
    AuthFailed {
        /// Source address.
        src: IpAddr,
        /// User name tried (attacker-controlled: escape before logging).
        user: String,
        /// Why.
        reason: FailReason,
        /// Failures of this source in the current window.
        failures: u32,
    },
    /// A source sent more than `max_packets` in one window; the excess is
    /// dropped (reported once per window).
    Flood {
        /// Source address.
        src: IpAddr,
    },
    /// A source went over its failure budget and is dropped for `ban`.
    Banned {
        /// Source address.
        src: IpAddr,
        /// Ban length.
        ban: Duration,
    },
    /// A successful authentication.
    Authenticated {
        /// Source address.
        src: IpAddr,
        /// The extension.
        user: String,
    },
}

#[derive(Debug, Clone)]
struct Source {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    last_seen: Instant,
    packets: u32,
    packet_window_start: Instant,
}

/// The guard: owns the digest server and per-source state.
#[derive(Debug)]
pub struct Guard {
    cfg: GuardConfig,
    digest: DigestServer,
    sources: HashMap<IpAddr, Source>,
    dropped: u64,
}

/// The tracking key of a source: its IPv4 address, or its IPv6 address cut
/// to `ipv6_prefix` bits (an IPv4-mapped address counts as IPv4).
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
        v4 => v4,
    }
}

impl Guard {
    /// A guard for `cfg` using `digest` for challenges.
    pub fn new(cfg: GuardConfig, digest: DigestServer) -> Self {
        Guard {
            cfg,
            digest,
            sources: HashMap::new(),
            dropped: 0,
        }
    }

    /// Packets dropped so far (not allowed or banned).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn key(&self, ip: IpAddr) -> IpAddr {
        source_key(ip, self.cfg.ipv6_prefix)
    }

    /// Whether `ip` is inside the allowlist.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.cfg.allow.iter().any(|c| c.contains(ip))
    }

    /// The sources banned at `now` ([`source_key`]s with the end of their
    /// ban), for a shell that screens connections outside the guard's task.
    pub fn bans(&self, now: Instant) -> Vec<(IpAddr, Instant)> {
        self.sources
            .iter()
            .filter_map(|(k, s)| s.banned_until.filter(|t| *t > now).map(|t| (*k, t)))
            .collect()
    }

    /// The digest server (its nonce lifetime).
    pub fn digest(&self) -> &DigestServer {
        &self.digest
    }

    /// Cheap check for every packet, before parsing: `false` means drop it.
    /// Applies the allowlist, bans and the per-source packet rate; returns an
    /// audit event for an outsider or a flood (rate-limit its logging).
    pub fn admit(&mut self, now: Instant, src: IpAddr) -> (bool, Option<AuditEvent>) {
        let (ok, ev) = self.check(now, src);
        if !ok {
            return (ok, ev);
        }
        let max = self.cfg.max_packets;
        let window = self.cfg.packet_window;
        let s = self.entry(now, src);
        if now.saturating_duration_since(s.packet_window_start) >= window {
            s.packets = 0;
            s.packet_window_start = now;
        }
        s.packets = s.packets.saturating_add(1);
        s.last_seen = now;
        if s.packets > max {
            let first = s.packets == max + 1;
            self.dropped += 1;
            return (false, first.then_some(AuditEvent::Flood { src }));
        }
        (true, None)
    }

    /// Allowlist and ban, without counting anything.
    fn check(&mut self, now: Instant, src: IpAddr) -> (bool, Option<AuditEvent>) {
        if !self.allowed(src) {
            self.dropped += 1;
            return (false, Some(AuditEvent::NotAllowed { src }));
        }
        let k = self.key(src);
        if let Some(s) = self.sources.get_mut(&k) {
            match s.banned_until {
                Some(t) if now < t => {
                    self.dropped += 1;
                    return (false, None);
                }
                Some(_) => {
                    s.banned_until = None;
                    s.failures = 0;
                    s.window_start = now;
                }
                None => {}
            }
        }
        (true, None)
    }

    /// The state of `ip`'s source, created (evicting if full) when new.
    fn entry(&mut self, now: Instant, ip: IpAddr) -> &mut Source {
        let k = self.key(ip);
        if !self.sources.contains_key(&k) && self.sources.len() >= self.cfg.max_sources {
            self.evict(now);
        }
        self.sources.entry(k).or_insert(Source {
            failures: 0,
            window_start: now,
            banned_until: None,
            last_seen: now,
            packets: 0,
            packet_window_start: now,
        })
    }

    /// Authenticates a parsed request from `src`. `lookup` maps a user name
    /// to its stored HA1 pair.
    pub fn authenticate(
        &mut self,
        now: Instant,
        src: SocketAddr,
        req: &Message,
        lookup: impl FnOnce(&str) -> Option<Ha1Pair>,
    ) -> (Decision, Vec<AuditEvent>) {
        let ip = src.ip();
        let (admitted, ev) = self.check(now, ip);
        if !admitted {
            return (Decision::Drop, ev.into_iter().collect());
        }
        let (Some(method), Some(uri)) = (req.method(), req.request_uri()) else {
            return (Decision::Drop, Vec::new());
        };
        let outcome = self.digest.verify(
            now,
            ip,
            method,
            uri,
            req.headers.get_all("Authorization"),
            lookup,
        );
        match outcome {
            AuthOutcome::Ok { user } => (
                Decision::Authenticated { user: user.clone() },
                vec![AuditEvent::Authenticated { src: ip, user }],
            ),
            AuthOutcome::NoCredentials => (self.challenge(now, ip, req, false), Vec::new()),
            AuthOutcome::Stale { .. } => (self.challenge(now, ip, req, true), Vec::new()),
            AuthOutcome::Replayed { user } => (
                self.challenge(now, ip, req, true),
                vec![AuditEvent::Replayed { src: ip, user }],
            ),
            AuthOutcome::Unproven { user } => (
                self.challenge(now, ip, req, false),
                vec![AuditEvent::AuthUnproven { src: ip, user }],
            ),
            AuthOutcome::Failed { user, reason } => {
                let failures = self.count_failure(now, ip);
                let mut events = vec![AuditEvent::AuthFailed {
                    src: ip,
                    user,
                    reason,
                    failures,
                }];
                if failures > self.cfg.max_failures {
                    let k = self.key(ip);
                    if let Some(s) = self.sources.get_mut(&k) {
                        // An absurd configured ban saturates instead of overflowing.
                        let until = now
                            .checked_add(self.cfg.ban)
                            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
                            .unwrap_or(now);
                        s.banned_until = Some(until);
                    }
                    events.push(AuditEvent::Banned {
                        src: ip,
                        ban: self.cfg.ban,
                    });
                    self.dropped += 1;
                    return (Decision::Drop, events);
                }
                (self.challenge(now, ip, req, false), events)
            }
        }
    }

    fn count_failure(&mut self, now: Instant, ip: IpAddr) -> u32 {
        let window = self.cfg.window;
        let s = self.entry(now, ip);
        if now.saturating_duration_since(s.window_start) > window {
            s.failures = 0;
            s.window_start = now;
        }
        s.failures = s.failures.saturating_add(1);
        s.last_seen = now;
        s.failures
    }

    fn evict(&mut self, now: Instant) {
        // Expired bans and stale windows first, then the oldest unbanned
        // source, and only when every slot holds a live ban the ban ending
        // soonest.
        let window = self.cfg.window;
        let pw = self.cfg.packet_window;
        self.sources.retain(|_, s| match s.banned_until {
            Some(t) => t > now,
            None => {
                (s.failures > 0 && now.saturating_duration_since(s.window_start) <= window)
                    || now.saturating_duration_since(s.packet_window_start) < pw
            }
        });
        if self.sources.len() < self.cfg.max_sources {
            return;
        }
        let victim = self
            .sources
            .iter()
            .min_by_key(|(_, s)| (s.banned_until.is_some(), s.banned_until, s.last_seen))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            self.sources.remove(&k);
        }
    }

    /// The 401: depends only on the request, the source and the time.
    fn challenge(&self, now: Instant, ip: IpAddr, req: &Message, stale: bool) -> Decision {
        let mut resp = Message::response_to(req, 401);
        let seed = format!(
            "{}\n{}",
            req.call_id().unwrap_or(""),
            req.from()
                .ok()
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
        resp.set_to_tag(&hex(&digest.as_ref()[..8]));
        // Each request its own nonce (the dialog's seed and its CSeq), so
        // two challenges in one second never share a nonce and a count.
        let cseq = req.cseq().map(|c| c.seq).unwrap_or(0);
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&digest.as_ref()[8..16]);
        let salt = u64::from_be_bytes(salt) ^ u64::from(cseq);
        for v in self.digest.challenges(now, ip, stale, salt) {
            resp.headers.push("WWW-Authenticate", v);
        }
        Decision::Respond(Box::new(resp))
    }
}

#[cfg(test)]
mod tests;
