//! Enrollment tokens: created once, stored as hashes, redeemed once.

use super::{Registry, RegistryError, now};
use crate::telemetry::Secret;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{OptionalExtension, params};
use std::time::Duration;

/// Why a token was not accepted. The device is told only "rejected"; the
/// reason goes to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    /// No token with this hash.
    Unknown,
    /// Already redeemed.
    Used,
    /// Past its expiry.
    Expired,
}

impl TokenRejection {
    /// Audit log wording.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown token",
            TokenRejection::Used => "token already used",
            TokenRejection::Expired => "token expired",
        }
    }
}

fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.trim().as_bytes()).as_ref().to_vec()
}

impl Registry {
    /// Create a single-use token valid for `ttl`. The returned secret is the
    /// only copy; the registry keeps its hash.
    pub fn create_token(&self, ttl: Duration, note: &str) -> Result<Secret<String>, RegistryError> {
        let mut raw = [0u8; 20];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| RegistryError::Random)?;
        // Base32 without padding: 32 characters, easy to read out by phone.
        let token = Secret::new(base32(&raw));
        let t = now();
        // The token and its audit row commit together.
        self.atomically(|r| {
            r.db.execute(
                "INSERT INTO tokens (hash, created, expires, note) VALUES (?1, ?2, ?3, ?4)",
                params![
                    token_hash(token.expose()),
                    t,
                    t + ttl.as_secs() as i64,
                    note
                ],
            )?;
            r.audit(
                "token_created",
                "",
                "",
                &format!("expires in {} s", ttl.as_secs()),
            )
        })?;
        Ok(token)
    }

    /// Redeem `token` for `device`: succeeds once, before expiry.
    pub fn redeem(
        &self,
        token: &str,
        device: &str,
        at: i64,
    ) -> Result<Result<(), TokenRejection>, RegistryError> {
        let hash = token_hash(token);
        let changed = self.db.execute(
            "UPDATE tokens SET used_at = ?2, used_by = ?3
             WHERE hash = ?1 AND used_at IS NULL AND expires > ?2",
            params![hash, at, device],
        )?;
        if changed == 1 {
            return Ok(Ok(()));
        }
        let row: Option<(Option<i64>, i64)> = self
            .db
            .query_row(
                "SELECT used_at, expires FROM tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(Err(match row {
            None => TokenRejection::Unknown,
            Some((Some(_), _)) => TokenRejection::Used,
            Some((None, _)) => TokenRejection::Expired,
        }))
    }
}

/// RFC 4648 base32 (uppercase, no padding).
pub(super) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}
