//! API keys of the operator API, sans-IO: the token format, its checksum
//! and the scopes.
//!
//! A key reads `vgk_<id>_<secret>_<crc>`: the prefix `vgk_` (a scanner's
//! pattern), a 10-character key id (public: `api-key list` shows it), a
//! 40-character secret (about 238 bits) and 6 characters of CRC-32 over
//! everything before it, all base62. A scanner recognises a leaked key by
//! the pattern and the checksum alone, without the registry
//! ([`parse`] is that check). The registry stores the id and the SHA-256 of
//! the secret, never the secret ([`secret_hash`]); a presented key is
//! compared with that hash in constant time.

use std::fmt;

/// The prefix every key starts with.
pub const PREFIX: &str = "vgk_";
/// Characters of a key id.
pub const ID_LEN: usize = 10;
/// Characters of a secret.
pub const SECRET_LEN: usize = 40;
/// Characters of the checksum.
pub const CRC_LEN: usize = 6;
/// Characters of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + 1 + SECRET_LEN + 1 + CRC_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key's parts, checked: what [`parse`] returns.
#[derive(PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The key id.
    pub id: &'a str,
    /// The secret (never formatted: `Debug` redacts it).
    pub secret: &'a str,
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Why a string is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not `vgk_` and the right length.
    #[error("not a voxgate API key (vgk_...)")]
    Shape,
    /// A character outside base62 where one belongs.
    #[error("an API key holds base62 characters only")]
    Alphabet,
    /// The checksum does not match: a typo or a truncated copy.
    #[error("the API key's checksum does not match (a typo or a truncated copy)")]
    Checksum,
}

fn base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Check a presented key's shape and checksum (no registry needed).
pub fn parse(key: &str) -> Result<ParsedKey<'_>, KeyFormatError> {
    if key.len() != KEY_LEN || !key.is_ascii() || !key.starts_with(PREFIX) {
        return Err(KeyFormatError::Shape);
    }
    let body = &key[PREFIX.len()..];
    let id = &body[..ID_LEN];
    let secret = &body[ID_LEN + 1..ID_LEN + 1 + SECRET_LEN];
    let crc = &body[ID_LEN + 1 + SECRET_LEN + 1..];
    if body.as_bytes()[ID_LEN] != b'_' || body.as_bytes()[ID_LEN + 1 + SECRET_LEN] != b'_' {
        return Err(KeyFormatError::Shape);
    }
    if !(base62(id) && base62(secret) && base62(crc)) {
        return Err(KeyFormatError::Alphabet);
    }
    let signed = &key[..key.len() - CRC_LEN - 1];
    if checksum(signed) != crc {
        return Err(KeyFormatError::Checksum);
    }
    Ok(ParsedKey { id, secret })
}

/// Whether `id` has the shape of a key id.
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_LEN && base62(id)
}

/// A new key from `random` bytes (at least [`ID_LEN`] + [`SECRET_LEN`]
/// usable ones; the caller draws more when [`from_random`] says `None`).
pub fn from_random(random: &[u8]) -> Option<(String, String)> {
    // Rejection sampling: bytes of 248 and above would bias `% 62`.
    let mut chars = random
        .iter()
        .filter(|&&b| b < 248)
        .map(|&b| BASE62[usize::from(b % 62)] as char);
    let id: String = chars.by_ref().take(ID_LEN).collect();
    let secret: String = chars.take(SECRET_LEN).collect();
    if id.len() != ID_LEN || secret.len() != SECRET_LEN {
        return None;
    }
    let key = compose(&id, &secret);
    Some((id, key))
}

/// The key of `id` and `secret` (with its checksum): what
/// [`from_random`] makes; a test forges a wrong secret for a real id with
/// it.
pub fn compose(id: &str, secret: &str) -> String {
    let signed = format!("{PREFIX}{id}_{secret}");
    format!("{signed}_{}", checksum(&signed))
}

/// SHA-256 of a key's secret: what the registry stores.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// CRC-32 (IEEE) of `s` as 6 base62 characters.
fn checksum(s: &str) -> String {
    let mut crc = !0u32;
    for &b in s.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    let mut v = u64::from(!crc);
    let mut out = [b'0'; CRC_LEN];
    for c in out.iter_mut().rev() {
        *c = BASE62[(v % 62) as usize];
        v /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One permission of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Start calls.
    CallsCreate,
    /// List, read and hang up calls.
    CallsAdmin,
    /// List and read devices.
    DevicesRead,
    /// Revoke devices.
    DevicesWrite,
    /// Create, list and revoke enrollment tokens.
    TokensWrite,
    /// List, download and delete recordings.
    RecordingsRead,
    /// Webhook endpoints and deliveries.
    WebhooksManage,
    /// Read the audit log.
    AuditRead,
    /// Manage API keys.
    KeysManage,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 9] = [
        Scope::CallsCreate,
        Scope::CallsAdmin,
        Scope::DevicesRead,
        Scope::DevicesWrite,
        Scope::TokensWrite,
        Scope::RecordingsRead,
        Scope::WebhooksManage,
        Scope::AuditRead,
        Scope::KeysManage,
    ];

    /// Its name (`devices:read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::CallsCreate => "calls:create",
            Scope::CallsAdmin => "calls:admin",
            Scope::DevicesRead => "devices:read",
            Scope::DevicesWrite => "devices:write",
            Scope::TokensWrite => "tokens:write",
            Scope::RecordingsRead => "recordings:read",
            Scope::WebhooksManage => "webhooks:manage",
            Scope::AuditRead => "audit:read",
            Scope::KeysManage => "keys:manage",
        }
    }

    /// The scope named `s`.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Scopes {
    /// Space-separated names, in [`Scope::ALL`]'s order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(" "))
    }
}

impl Scopes {
    /// Whether `s` is in the set.
    pub fn has(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    /// The set with `s` added.
    pub fn with(self, s: Scope) -> Scopes {
        Scopes(self.0 | s.bit())
    }

    /// Its scopes, in [`Scope::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.has(*s))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Parse names separated by spaces or commas; the unknown name is the
    /// error.
    pub fn parse(s: &str) -> Result<Scopes, String> {
        let mut out = Scopes::default();
        for name in s.split([' ', ',']).filter(|n| !n.is_empty()) {
            out = out.with(Scope::parse(name).ok_or_else(|| name.to_string())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_and_a_typo_fails_its_checksum() {
        let random: Vec<u8> = (0..=255u8).cycle().skip(7).take(80).collect();
        let (id, key) = from_random(&random).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        let p = parse(&key).unwrap();
        assert_eq!(p.id, id);
        assert!(!format!("{p:?}").contains(p.secret), "Debug redacts");
        let mut typo = key.clone().into_bytes();
        typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(parse(&typo), Err(KeyFormatError::Checksum));
        assert_eq!(parse(&key[..KEY_LEN - 1]), Err(KeyFormatError::Shape));
        assert_eq!(
            parse(&key.replace("vgk_", "vgx_")),
            Err(KeyFormatError::Shape)
        );
        let mut bad = key.into_bytes();
        bad[8] = b'-';
        assert_eq!(
            parse(std::str::from_utf8(&bad).unwrap()),
            Err(KeyFormatError::Alphabet)
        );
        assert_eq!(parse("vgk_é"), Err(KeyFormatError::Shape));
    }

    #[test]
    fn checksum_is_crc32() {
        // CRC-32 of "123456789" is 0xCBF43926 = 3421780262.
        let mut v = 3_421_780_262u64;
        let mut want = [0u8; 6];
        for c in want.iter_mut().rev() {
            *c = BASE62[(v % 62) as usize];
            v /= 62;
        }
        assert_eq!(checksum("123456789").as_bytes(), want);
    }

    #[test]
    fn scopes_round_trip() {
        let s = Scopes::parse("devices:read,keys:manage audit:read").unwrap();
        assert!(s.has(Scope::DevicesRead) && s.has(Scope::KeysManage));
        assert!(!s.has(Scope::CallsCreate));
        assert_eq!(s.to_string(), "devices:read audit:read keys:manage");
        assert_eq!(Scopes::parse(&s.to_string()), Ok(s));
        assert_eq!(Scopes::parse("devices:root"), Err("devices:root".into()));
        for sc in Scope::ALL {
            assert_eq!(Scope::parse(sc.as_str()), Some(sc));
        }
    }
}
