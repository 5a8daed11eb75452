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
    /// Withdrawn with `relay token revoke`.
    Revoked,
    /// Bound to another device id.
    WrongDevice,
    /// The id is enrolled and the token is not a re-enrollment token.
    AlreadyEnrolled,
    /// Already redeemed, and now presented with another key than the one
    /// its certificate was issued to (a copied token: misuse).
    OtherKey,
}

impl TokenRejection {
    /// Audit log wording.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown token",
            TokenRejection::Used => "token already used",
            TokenRejection::Expired => "token expired",
            TokenRejection::Revoked => "token revoked",
            TokenRejection::WrongDevice => "token is bound to another device id",
            TokenRejection::AlreadyEnrolled => {
                "device id already enrolled and the token is not a re-enrollment token"
            }
            TokenRejection::OtherKey => {
                "token already used, now presented with another key than the one it enrolled"
            }
        }
    }
}

/// A token accepted for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redeemed {
    /// A re-enrollment: the device's earlier certificates are replaced.
    pub reenroll: bool,
}

/// What a repeated enrollment with a spent token gets
/// ([`Registry::repeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repeat {
    /// The same device, the same key, within the token's lifetime, and the
    /// certificate is still the device's current one: the same
    /// certificate again (DER, expiry).
    Same {
        /// The certificate the token paid for.
        der: Vec<u8>,
        /// Its expiry, Unix seconds.
        not_after: i64,
    },
    /// The token's certificate was issued to another key.
    OtherKey,
    /// Nothing to repeat: the token stays refused as used.
    No,
}

/// A token as `relay token create` made it: the secret (shown once) and
/// its public id (the first 8 hex digits of its hash), which `token list`
/// shows and `token revoke` takes.
#[derive(Debug)]
pub struct NewToken {
    /// The token itself; the registry keeps only its hash.
    pub secret: Secret<String>,
    /// Its public id.
    pub id: String,
}

/// A row of `relay token list`: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id.
    pub id: String,
    /// The device id it is bound to (`None`: a token of a release before
    /// binding, usable for one id that is not enrolled).
    pub device: Option<String>,
    /// A re-enrollment token.
    pub reenroll: bool,
    /// Creation, Unix seconds.
    pub created: i64,
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// When it was redeemed, and by which device.
    pub used: Option<(i64, String)>,
    /// When it was revoked.
    pub revoked: Option<i64>,
    /// The operator's note.
    pub note: String,
}

impl TokenRow {
    /// `unused`, `used`, `expired` or `revoked`, at `at`.
    pub fn state(&self, at: i64) -> &'static str {
        match (&self.used, self.revoked) {
            (Some(_), _) => "used",
            (None, Some(_)) => "revoked",
            (None, None) if self.expires <= at => "expired",
            _ => "unused",
        }
    }
}

fn token_hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.trim().as_bytes()).as_ref().to_vec()
}

/// The public id of a token hash.
fn token_id(hash: &[u8]) -> String {
    crate::pki::name::hex(&hash[..4])
}

impl Registry {
    /// Create a single-use token for `device`, valid for `ttl`. An enrolled
    /// id needs `reenroll`; an id with an unused token of its own gets no
    /// second one (revoke the first). The returned secret is the only
    /// copy; the registry keeps its hash.
    pub fn create_token(
        &self,
        device: &str,
        reenroll: bool,
        ttl: Duration,
        note: &str,
    ) -> Result<NewToken, RegistryError> {
        if !crate::pki::name::valid_device_id(device) {
            return Err(RegistryError::BadDeviceId(device.into()));
        }
        self.atomically(|tx| {
            let t = now();
            if !reenroll && tx.is_enrolled(device)? {
                return Err(RegistryError::Enrolled(device.into()));
            }
            let outstanding: Option<Vec<u8>> = tx
                .db
                .query_row(
                    "SELECT hash FROM tokens WHERE device = ?1 AND used_at IS NULL
                     AND revoked_at IS NULL AND expires > ?2",
                    params![device, t],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(hash) = outstanding {
                return Err(RegistryError::TokenOutstanding {
                    device: device.into(),
                    id: token_id(&hash),
                });
            }
            let mut raw = [0u8; 20];
            SystemRandom::new()
                .fill(&mut raw)
                .map_err(|_| RegistryError::Random)?;
            // Base32 without padding: 32 characters, easy to read out by phone.
            let secret = Secret::new(base32(&raw));
            let hash = token_hash(secret.expose());
            tx.db.execute(
                "INSERT INTO tokens (hash, created, expires, note, device, reenroll)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hash, t, t + ttl.as_secs() as i64, note, device, reenroll],
            )?;
            let id = token_id(&hash);
            let kind = if reenroll {
                "re-enrollment"
            } else {
                "enrollment"
            };
            tx.audit(
                "token_created",
                "",
                device,
                &format!("{kind} token {id}, expires in {} s", ttl.as_secs()),
            )?;
            Ok(NewToken { secret, id })
        })
    }

    /// Redeem `token` for `device`: succeeds once, before expiry, for the
    /// id it is bound to, and for an enrolled id only if it is a
    /// re-enrollment token. Call it inside [`Registry::atomically`] with the
    /// enrollment it pays for: a rejection leaves the token as it was only
    /// because the caller rolls back.
    pub fn redeem(
        &self,
        token: &str,
        device: &str,
        at: i64,
    ) -> Result<Result<Redeemed, TokenRejection>, RegistryError> {
        let hash = token_hash(token);
        type Row = (Option<i64>, i64, Option<i64>, Option<String>, bool);
        let row: Option<Row> = self
            .db
            .query_row(
                "SELECT used_at, expires, revoked_at, device, reenroll FROM tokens WHERE hash = ?1",
                params![hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((used, expires, revoked, bound, reenroll)) = row else {
            return Ok(Err(TokenRejection::Unknown));
        };
        let rejection = if used.is_some() {
            Some(TokenRejection::Used)
        } else if revoked.is_some() {
            Some(TokenRejection::Revoked)
        } else if expires <= at {
            Some(TokenRejection::Expired)
        } else if bound.as_deref().is_some_and(|b| b != device) {
            Some(TokenRejection::WrongDevice)
        } else if !reenroll && self.is_enrolled(device)? {
            Some(TokenRejection::AlreadyEnrolled)
        } else {
            None
        };
        if let Some(r) = rejection {
            return Ok(Err(r));
        }
        // Conditional, so that two redemptions racing past the checks in
        // two processes cannot both win.
        let changed = self.db.execute(
            "UPDATE tokens SET used_at = ?2, used_by = ?3 WHERE hash = ?1 AND used_at IS NULL",
            params![hash, at, device],
        )?;
        if changed != 1 {
            return Ok(Err(TokenRejection::Used));
        }
        Ok(Ok(Redeemed { reenroll }))
    }

    /// Record the certificate `token` paid for (after [`Registry::redeem`],
    /// in the same transaction), for [`Registry::repeat`].
    pub fn record_issued(
        &self,
        token: &str,
        serial: &str,
        der: &[u8],
    ) -> Result<(), RegistryError> {
        self.db.execute(
            "UPDATE tokens SET issued_serial = ?2, issued_cert = ?3 WHERE hash = ?1",
            params![token_hash(token), serial, der],
        )?;
        Ok(())
    }

    /// A spent `token` presented again by `device` with the key whose SPKI
    /// hashes to `spki`: the same certificate when it is the same device
    /// and key, the token has not expired (its lifetime bounds the
    /// repeat), was not withdrawn, and the certificate is still the
    /// device's current one on a device that is not revoked (a renewal or
    /// a revocation since ends the repeat). [`Repeat::OtherKey`] when the
    /// certificate was issued to another key.
    pub fn repeat(
        &self,
        token: &str,
        device: &str,
        spki: &[u8; 32],
        at: i64,
    ) -> Result<Repeat, RegistryError> {
        type Row = (
            Option<String>,
            i64,
            Option<i64>,
            Option<String>,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .db
            .query_row(
                "SELECT used_by, expires, revoked_at, issued_serial, issued_cert
                 FROM tokens WHERE hash = ?1 AND used_at IS NOT NULL",
                params![token_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        let Some((Some(used_by), expires, None, Some(serial), Some(der))) = row else {
            return Ok(Repeat::No);
        };
        if used_by != device || expires <= at {
            return Ok(Repeat::No);
        }
        let cert: Option<(Option<Vec<u8>>, i64)> = self
            .db
            .query_row(
                "SELECT spki, not_after FROM certificates WHERE serial = ?1 AND device = ?2",
                params![serial, device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((Some(issued_spki), not_after)) = cert else {
            return Ok(Repeat::No);
        };
        if issued_spki.as_slice() != spki.as_slice() {
            return Ok(Repeat::OtherKey);
        }
        if self.current_serial(device)?.as_deref() != Some(serial.as_str())
            || self.is_revoked(device)?
        {
            return Ok(Repeat::No);
        }
        Ok(Repeat::Same { der, not_after })
    }

    /// Every token, newest first (never a secret: the registry has none).
    pub fn tokens(&self) -> Result<Vec<TokenRow>, RegistryError> {
        let mut q = self.db.prepare(
            "SELECT hash, device, reenroll, created, expires, used_at, used_by, revoked_at, note
             FROM tokens ORDER BY created DESC, rowid DESC",
        )?;
        let rows = q.query_map([], |r| {
            let hash: Vec<u8> = r.get(0)?;
            let used_at: Option<i64> = r.get(5)?;
            let used_by: Option<String> = r.get(6)?;
            Ok(TokenRow {
                id: token_id(&hash),
                device: r.get(1)?,
                reenroll: r.get(2)?,
                created: r.get(3)?,
                expires: r.get(4)?,
                used: used_at.map(|t| (t, used_by.unwrap_or_default())),
                revoked: r.get(7)?,
                note: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke the unused tokens whose id is `id`, or which are bound to the
    /// device id `id`. Returns the ids revoked (none: nothing matched an
    /// unused token).
    pub fn revoke_token(&self, id: &str) -> Result<Vec<String>, RegistryError> {
        let id = id.trim().to_ascii_lowercase();
        self.atomically(|tx| {
            let t = now();
            let mut hit = Vec::new();
            for row in tx.tokens()? {
                let matches = row.id == id || row.device.as_deref() == Some(id.as_str());
                if matches && row.used.is_none() && row.revoked.is_none() {
                    hit.push(row);
                }
            }
            for row in &hit {
                tx.db.execute(
                    "UPDATE tokens SET revoked_at = ?2 WHERE substr(hex(hash), 1, 8) = upper(?1)
                     AND used_at IS NULL AND revoked_at IS NULL",
                    params![row.id, t],
                )?;
                tx.audit(
                    "token_revoked",
                    "",
                    row.device.as_deref().unwrap_or(""),
                    &format!("token {}", row.id),
                )?;
            }
            Ok(hit.into_iter().map(|r| r.id).collect())
        })
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
