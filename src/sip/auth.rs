//! Server-side HTTP digest authentication for SIP (RFC 3261 22, RFC 7616,
//! RFC 8760), SHA-256 and MD5, `qop=auth`.
//!
//! Guarantees:
//! - only HA1 material is ever needed ([`Ha1Pair`]); a password appears only
//!   in [`Ha1Pair::derive`], which provisioning calls once;
//! - nonces are stateless: `hex(seconds since epoch) || hex(salt) ||
//!   hex(HMAC-SHA256(key, seconds || salt || source IP)[..16])` under a
//!   per-boot key, so they expire (`stale=true` when the answer was right
//!   but the nonce old) and are bound to the source address that was
//!   challenged; the salt comes from the challenged request, so two
//!   requests challenged in the same second get different nonces (each
//!   answer starts its count at 1);
//! - responses are compared in constant time (ring HMAC verification of both
//!   values under a per-boot key);
//! - an unknown user and a wrong password yield the same [`AuthOutcome`]
//!   (`Failed` with [`FailReason::BadCredentials`]) after the same work (the
//!   digest is computed against a dummy HA1), so nothing downstream can tell
//!   them apart;
//! - the `Authorization` parser is bounded ([`MAX_AUTH_PARAMS`], [`MAX_AUTH_VALUE`]);
//! - a wrong or malformed answer is [`AuthOutcome::Failed`] only when it
//!   carries a fresh nonce this server issued to the request's source (the
//!   sender then receives our replies: it is not a forged source address);
//!   anything else is [`AuthOutcome::Unproven`], for a fresh challenge that
//!   counts toward nothing;
//! - a (nonce, nc) pair authenticates at most one request
//!   ([`AuthOutcome::Replayed`] after that, `super::replay`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::{digest, hmac, rand};

use super::header::split_outside;
use super::replay::SeenNonces;
use super::uri::{Method, SipUri};

/// Most parameters accepted in one Authorization header.
pub const MAX_AUTH_PARAMS: usize = 16;
/// Most bytes of one parameter value.
pub const MAX_AUTH_VALUE: usize = 512;

/// Digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-256 (RFC 7616, RFC 8760).
    Sha256,
    /// MD5 (RFC 2617), for phones that know nothing else.
    Md5,
}

impl Algorithm {
    /// Hex digest of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Sha256 => hex(digest::digest(&digest::SHA256, data).as_ref()),
            Algorithm::Md5 => hex(&md5::compute(data).0),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[usize::from(x >> 4)] as char);
        s.push(H[usize::from(x & 15)] as char);
    }
    s
}

/// The stored secret of one extension: HA1 = H(user:realm:password) for both
/// algorithms, as lower-case hex.
#[derive(Clone, PartialEq, Eq)]
pub struct Ha1Pair {
    /// HA1 with SHA-256 (64 hex digits).
    pub sha256: String,
    /// HA1 with MD5 (32 hex digits).
    pub md5: String,
}

impl std::fmt::Debug for Ha1Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ha1Pair(<redacted>)")
    }
}

impl Ha1Pair {
    /// Derives both HA1 values; the only place a password is used.
    pub fn derive(user: &str, realm: &str, password: &str) -> Ha1Pair {
        let a1 = format!("{user}:{realm}:{password}");
        Ha1Pair {
            sha256: Algorithm::Sha256.hex(a1.as_bytes()),
            md5: Algorithm::Md5.hex(a1.as_bytes()),
        }
    }

    fn get(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Md5 => &self.md5,
        }
    }
}

/// The `response` value for `qop=auth` (RFC 7616 3.4.1).
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    alg: Algorithm,
    ha1_hex: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hex(format!("{method}:{uri}").as_bytes());
    alg.hex(format!("{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}").as_bytes())
}

/// Parsed `Authorization: Digest ...` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// username
    pub username: String,
    /// realm
    pub realm: String,
    /// nonce
    pub nonce: String,
    /// uri (digest-uri)
    pub uri: String,
    /// response (hex)
    pub response: String,
    /// algorithm (absent means MD5)
    pub algorithm: Option<String>,
    /// cnonce
    pub cnonce: Option<String>,
    /// qop
    pub qop: Option<String>,
    /// nc
    pub nc: Option<String>,
}

impl Credentials {
    /// Parses one Authorization value; `None` when it is not a well-formed,
    /// bounded Digest header with the mandatory parameters.
    pub fn parse(v: &str) -> Option<Credentials> {
        let v = v.trim();
        let scheme = v.get(..6)?;
        if !scheme.eq_ignore_ascii_case("digest") || !v[6..].starts_with([' ', '\t']) {
            return None;
        }
        let parts = split_outside(&v[6..], b',')?;
        if parts.len() > MAX_AUTH_PARAMS {
            return None;
        }
        let mut c = Credentials::default();
        for p in parts {
            let (k, val) = p.split_once('=')?;
            let (k, val) = (k.trim(), val.trim());
            let val = match val.strip_prefix('"') {
                Some(q) => q.strip_suffix('"')?,
                None => val,
            };
            if val.len() > MAX_AUTH_VALUE {
                return None;
            }
            let val = val.to_string();
            match k.to_ascii_lowercase().as_str() {
                "username" => c.username = val,
                "realm" => c.realm = val,
                "nonce" => c.nonce = val,
                "uri" => c.uri = val,
                "response" => c.response = val,
                "algorithm" => c.algorithm = Some(val),
                "cnonce" => c.cnonce = Some(val),
                "qop" => c.qop = Some(val),
                "nc" => c.nc = Some(val),
                _ => {}
            }
        }
        let ok = !c.username.is_empty() && !c.nonce.is_empty() && !c.uri.is_empty();
        ok.then_some(c)
    }
}

/// Why an answer to a challenge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Unknown user or wrong password (deliberately one reason).
    BadCredentials,
    /// Unparseable Authorization, unsupported algorithm/qop, wrong realm or a
    /// digest-uri that is not the Request-URI.
    Malformed,
}

/// Result of checking a request's Authorization header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// No Authorization header for our realm: the normal first challenge.
    NoCredentials,
    /// Right answer to a fresh nonce we issued to this source.
    Ok {
        /// The authenticated user (extension).
        user: String,
    },
    /// Right answer to an expired or foreign nonce: challenge again with
    /// `stale=true` (not a failure).
    Stale {
        /// The user who answered.
        user: String,
    },
    /// Right answer, but this (nonce, nc) pair already authenticated a
    /// request: a replay. Challenge again with `stale=true` (a client that
    /// reused its count gets a new nonce; not a failure).
    Replayed {
        /// The user who answered.
        user: String,
    },
    /// Wrong or malformed answer to a fresh nonce we issued to this source:
    /// a failure (counts toward a ban).
    Failed {
        /// The user name that was tried (for the audit trail).
        user: String,
        /// Why.
        reason: FailReason,
    },
    /// Wrong, malformed or unparseable answer that does not carry a fresh
    /// nonce we issued to this source: nothing proves the sender receives
    /// our replies (its source address may be forged). Challenge again,
    /// count nothing.
    Unproven {
        /// The user name that was tried, if any (for the audit trail).
        user: String,
    },
}

/// Issues challenges and checks answers for one realm.
pub struct DigestServer {
    realm: String,
    nonce_key: hmac::Key,
    cmp_key: hmac::Key,
    epoch: Instant,
    nonce_ttl: Duration,
    algorithms: Vec<Algorithm>,
    seen: SeenNonces,
}

impl std::fmt::Debug for DigestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestServer")
            .field("realm", &self.realm)
            .field("nonce_ttl", &self.nonce_ttl)
            .finish_non_exhaustive()
    }
}

/// 32 bytes from the system CSPRNG (a per-boot nonce secret).
pub fn random_secret() -> Result<[u8; 32], ring::error::Unspecified> {
    rand::generate::<[u8; 32]>(&rand::SystemRandom::new()).map(|k| k.expose())
}

impl DigestServer {
    /// `secret`: per-boot random bytes ([`random_secret`]); `epoch`: any
    /// instant before the first `now` passed in (nonce timestamps count from it).
    pub fn new(realm: &str, secret: &[u8; 32], epoch: Instant, nonce_ttl: Duration) -> Self {
        let nonce_key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        // A separate key for comparisons, derived so the two never coincide.
        let cmp = hmac::sign(&nonce_key, b"voxgate sip digest compare");
        DigestServer {
            realm: realm.to_string(),
            nonce_key,
            cmp_key: hmac::Key::new(hmac::HMAC_SHA256, cmp.as_ref()),
            epoch,
            nonce_ttl,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            seen: SeenNonces::default(),
        }
    }

    /// Challenge with (and accept) only `algs`, in this order of preference
    /// (default: SHA-256, then MD5). Some older clients (libre-based ones
    /// such as baresip 1.x) abort on any challenge that is not MD5 even when
    /// an MD5 one is offered too; a box serving them can be set to MD5 alone.
    pub fn with_algorithms(mut self, algs: &[Algorithm]) -> Self {
        if !algs.is_empty() {
            self.algorithms = algs.to_vec();
        }
        self
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How long a nonce stays fresh.
    pub fn nonce_ttl(&self) -> Duration {
        self.nonce_ttl
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn mac(&self, secs: u64, salt: u64, src: IpAddr) -> String {
        let mut ctx = hmac::Context::with_key(&self.nonce_key);
        ctx.update(&secs.to_be_bytes());
        ctx.update(&salt.to_be_bytes());
        match src {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        hex(&ctx.sign().as_ref()[..16])
    }

    /// A fresh nonce for `src` (salt 0).
    pub fn nonce(&self, now: Instant, src: IpAddr) -> String {
        self.salted_nonce(now, src, 0)
    }

    /// A fresh nonce for `src` with `salt` (from the challenged request).
    pub fn salted_nonce(&self, now: Instant, src: IpAddr, salt: u64) -> String {
        let secs = self.secs(now);
        format!("{secs:016x}{salt:016x}{}", self.mac(secs, salt, src))
    }

    /// `Some((issued, true))` fresh, `Some((issued, false))` ours but
    /// expired, `None` not issued by us to `src`.
    fn check_nonce(&self, nonce: &str, now: Instant, src: IpAddr) -> Option<(u64, bool)> {
        if nonce.len() != 64 || !nonce.is_ascii() {
            return None;
        }
        let secs = u64::from_str_radix(&nonce[..16], 16).ok()?;
        let salt = u64::from_str_radix(&nonce[16..32], 16).ok()?;
        if !self.equal(&nonce[32..], &self.mac(secs, salt, src)) {
            return None;
        }
        let now_secs = self.secs(now);
        if secs > now_secs {
            return None;
        }
        Some((secs, now_secs - secs <= self.nonce_ttl.as_secs()))
    }

    /// Constant-time equality of two strings.
    fn equal(&self, a: &str, b: &str) -> bool {
        let tag = hmac::sign(&self.cmp_key, b.as_bytes());
        hmac::verify(&self.cmp_key, a.as_bytes(), tag.as_ref()).is_ok()
    }

    /// The `WWW-Authenticate` values to send, most preferred first.
    pub fn challenges(&self, now: Instant, src: IpAddr, stale: bool, salt: u64) -> Vec<String> {
        let nonce = self.salted_nonce(now, src, salt);
        let one = |alg: Algorithm| {
            let mut s = format!(
                "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                self.realm,
                alg.name()
            );
            if stale {
                s.push_str(", stale=true");
            }
            s
        };
        self.algorithms.iter().map(|&a| one(a)).collect()
    }

    /// Checks the Authorization header(s) of a request. `lookup` returns the
    /// HA1 pair of a user, `None` for an unknown user. A right answer to a
    /// fresh nonce is remembered, so the same (nonce, nc) is refused next time.
    pub fn verify<'a>(
        &mut self,
        now: Instant,
        src: IpAddr,
        method: &Method,
        request_uri: &SipUri,
        authorization: impl Iterator<Item = &'a str>,
        lookup: impl FnOnce(&str) -> Option<Ha1Pair>,
    ) -> AuthOutcome {
        // Use the first Digest header for our realm; ignore the others.
        let mut malformed = false;
        let mut creds = None;
        for v in authorization.take(4) {
            match Credentials::parse(v) {
                Some(c) if c.realm == self.realm => {
                    creds = Some(c);
                    break;
                }
                Some(_) => {}
                None => malformed = true,
            }
        }
        let Some(c) = creds else {
            // Unparseable: no nonce of ours in it, so nothing is proven.
            return match malformed {
                true => AuthOutcome::Unproven {
                    user: String::new(),
                },
                false => AuthOutcome::NoCredentials,
            };
        };
        let nonce = self.check_nonce(&c.nonce, now, src);
        let fresh = nonce.is_some_and(|(_, fresh)| fresh);
        let fail = |reason| match fresh {
            true => AuthOutcome::Failed {
                user: c.username.clone(),
                reason,
            },
            false => AuthOutcome::Unproven {
                user: c.username.clone(),
            },
        };
        let alg = match c.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("MD5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Algorithm::Sha256,
            Some(_) => return fail(FailReason::Malformed),
        };
        if !self.algorithms.contains(&alg) {
            return fail(FailReason::Malformed);
        }
        let (Some(qop), Some(nc), Some(cnonce)) = (&c.qop, &c.nc, &c.cnonce) else {
            return fail(FailReason::Malformed);
        };
        let count = (nc.len() == 8)
            .then(|| u32::from_str_radix(nc, 16).ok())
            .flatten();
        let Some(count) = count.filter(|_| qop.eq_ignore_ascii_case("auth") && !cnonce.is_empty())
        else {
            return fail(FailReason::Malformed);
        };
        let uri_ok = SipUri::parse(&c.uri).is_ok_and(|u| u == *request_uri)
            || c.uri == request_uri.to_string();
        if !uri_ok {
            return fail(FailReason::Malformed);
        }
        // Same work for unknown users: digest against a dummy HA1.
        let found = lookup(&c.username);
        let dummy = Ha1Pair::derive("", "", "");
        let ha1 = found.as_ref().unwrap_or(&dummy).get(alg);
        let expected =
            digest_response(alg, ha1, &c.nonce, nc, cnonce, qop, method.as_str(), &c.uri);
        let right = self.equal(&c.response.to_ascii_lowercase(), &expected) && found.is_some();
        if !right {
            return fail(FailReason::BadCredentials);
        }
        match nonce {
            Some((issued, true)) => {
                let (now_s, ttl) = (self.secs(now), self.nonce_ttl.as_secs());
                if self.seen.first_use(&c.nonce, count, issued, now_s, ttl) {
                    AuthOutcome::Ok { user: c.username }
                } else {
                    AuthOutcome::Replayed { user: c.username }
                }
            }
            _ => AuthOutcome::Stale { user: c.username },
        }
    }
}

/// Alphabet for generated passwords: no look-alikes (0/O, 1/l/I), no
/// characters that need quoting on a phone's web form or keypad.
const PASSWORD_ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ";

/// A strong SIP password: 22 characters from a 56-symbol alphabet (about
/// 127 bits), drawn from `rng` by rejection sampling (no modulo bias). The
/// one generator of phone passwords (`voxgate phones add` and `rotate`);
/// the password and the random bytes it came from are wiped when dropped.
pub fn generate_password(
    rng: &dyn rand::SecureRandom,
) -> Result<zeroize::Zeroizing<String>, ring::error::Unspecified> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(22));
    let limit = 256 - (256 % PASSWORD_ALPHABET.len());
    while out.len() < 22 {
        let mut buf = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(&mut buf[..])?;
        for &b in buf.iter() {
            if usize::from(b) < limit && out.len() < 22 {
                out.push(PASSWORD_ALPHABET[usize::from(b) % PASSWORD_ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
