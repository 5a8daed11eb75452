//! The backup file, sans-IO: [`Archive::encode`] and [`Archive::parse`].
//!
//! Layout, version 1:
//!
//! ```text
//! 0  8  magic "VXBACKUP"
//! 8  1  version (1)
//! 9  .. sections, each: 4-byte ASCII tag, u32 big-endian length, bytes
//! .. 32 SHA-256 of every byte before it
//! ```
//!
//! | tag | what | |
//! | --- | --- | --- |
//! | `META` | TOML: [`Meta`] | required |
//! | `CACR` | the fleet CA certificate, PEM (`ca.pem`) | required |
//! | `RLCR` | the relay's certificate chain, PEM (`relay.pem`) | required |
//! | `REGY` | the registry, a self-contained SQLite database | required |
//! | `KEYS` | the keys: a [`crate::pki::passphrase`] file whose plaintext is [`encode_keys`] | with `--with-keys` only |
//!
//! Each tag appears at most once, in this order when written; an unknown
//! tag is refused (a new section is a new version). The digest catches a
//! damaged file before anything is restored; it does not authenticate
//! (the keys' own AEAD does, and the certificates are checked against
//! them).

use super::keys::KeyMaterial;
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

/// File magic.
pub const MAGIC: &[u8; 8] = b"VXBACKUP";
/// The version this build writes and reads.
pub const VERSION: u8 = 1;
/// Largest backup file: the registry of a large fleet with years of audit
/// trail is far smaller.
pub const MAX_FILE: usize = 1 << 30;
const META_MAX: usize = 64 << 10;
const CERT_MAX: usize = 1 << 20;
const KEYS_MAX: usize = crate::pki::passphrase::MIN_LEN + crate::pki::passphrase::MAX_PAYLOAD;

const META: [u8; 4] = *b"META";
const CA_CERT: [u8; 4] = *b"CACR";
const RELAY_CERT: [u8; 4] = *b"RLCR";
const REGISTRY: [u8; 4] = *b"REGY";
const KEYS: [u8; 4] = *b"KEYS";
const CA_KEY: [u8; 4] = *b"CAKY";
const RELAY_KEY: [u8; 4] = *b"RLKY";
const ISSUING_CERT: [u8; 4] = *b"ISCR";
const AUDIT_KEY: [u8; 4] = *b"AUKY";
const ROOT_KEY: [u8; 4] = *b"ROKY";

/// What the backup is of, in words an operator can read with `head -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The voxgate release that made it.
    pub voxgate_version: String,
    /// The registry's schema version.
    pub schema_version: i64,
    /// Devices in the registry.
    pub devices: i64,
    /// When, Unix seconds.
    pub created: i64,
    /// When, RFC 3339 UTC (for people).
    pub created_utc: String,
    /// The host it was made on.
    pub source_host: String,
    /// The fleet CA's fingerprint (what devices pin).
    pub ca_fingerprint: String,
    /// Whether it holds the keys (encrypted to a passphrase).
    pub with_keys: bool,
}

/// A relay backup.
#[derive(Clone, PartialEq, Eq)]
pub struct Archive {
    /// What it is of.
    pub meta: Meta,
    /// `ca.pem`.
    pub ca_cert: Vec<u8>,
    /// `relay.pem`.
    pub relay_cert: Vec<u8>,
    /// The registry database.
    pub registry: Vec<u8>,
    /// The keys, passphrase-encrypted.
    pub keys: Option<Vec<u8>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("meta", &self.meta)
            .field("registry_bytes", &self.registry.len())
            .field("keys", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

/// A backup file that cannot be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    /// Not a voxgate backup.
    #[error("not a voxgate relay backup (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error(
        "backup format version {0} is not supported by this voxgate (made by a newer release?)"
    )]
    UnknownVersion(u8),
    /// Cut short.
    #[error("the backup is truncated ({0} bytes)")]
    Truncated(usize),
    /// The digest does not match.
    #[error(
        "the backup is damaged: its checksum does not match (changed or cut short in transfer or on disk)"
    )]
    Digest,
    /// Larger than any backup.
    #[error("the backup is {0} bytes, more than {MAX_FILE}")]
    TooLarge(usize),
    /// A section is malformed.
    #[error("the backup is malformed: {0}")]
    Malformed(String),
    /// The metadata does not parse.
    #[error("the backup's metadata does not parse: {0}")]
    Meta(String),
}

fn malformed(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed(what.into())
}

fn tag_name(tag: [u8; 4]) -> String {
    tag.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// A section: its tag and its bytes.
type Section<'a> = ([u8; 4], &'a [u8]);

fn put(out: &mut Vec<u8>, tag: [u8; 4], data: &[u8]) {
    out.extend_from_slice(&tag);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Split `body` into sections; `allowed` gives each known tag and its
/// size bound. Duplicates, unknown tags and oversize sections are refused.
fn sections<'a>(
    mut body: &'a [u8],
    allowed: &[([u8; 4], usize)],
) -> Result<Vec<Section<'a>>, ArchiveError> {
    let mut out: Vec<Section<'a>> = Vec::new();
    while !body.is_empty() {
        if body.len() < 8 {
            return Err(malformed("a section header is cut short"));
        }
        let tag = [body[0], body[1], body[2], body[3]];
        let len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
        let Some(&(_, max)) = allowed.iter().find(|(t, _)| *t == tag) else {
            return Err(malformed(format!("unknown section `{}`", tag_name(tag))));
        };
        if len > max {
            return Err(malformed(format!(
                "section `{}` of {len} bytes exceeds {max}",
                tag_name(tag)
            )));
        }
        if body.len() - 8 < len {
            return Err(malformed(format!(
                "section `{}` is cut short",
                tag_name(tag)
            )));
        }
        if out.iter().any(|(t, _)| *t == tag) {
            return Err(malformed(format!(
                "section `{}` appears twice",
                tag_name(tag)
            )));
        }
        out.push((tag, &body[8..8 + len]));
        body = &body[8 + len..];
    }
    Ok(out)
}

fn find<'a>(s: &[Section<'a>], tag: [u8; 4]) -> Option<&'a [u8]> {
    s.iter().find(|(t, _)| *t == tag).map(|(_, d)| *d)
}

fn required<'a>(s: &[Section<'a>], tag: [u8; 4]) -> Result<&'a [u8], ArchiveError> {
    find(s, tag).ok_or_else(|| malformed(format!("section `{}` is missing", tag_name(tag))))
}

impl Archive {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let meta = toml::to_string(&self.meta).expect("Meta serializes");
        let mut out = Vec::with_capacity(
            128 + meta.len() + self.ca_cert.len() + self.relay_cert.len() + self.registry.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put(&mut out, META, meta.as_bytes());
        put(&mut out, CA_CERT, &self.ca_cert);
        put(&mut out, RELAY_CERT, &self.relay_cert);
        put(&mut out, REGISTRY, &self.registry);
        if let Some(k) = &self.keys {
            put(&mut out, KEYS, k);
        }
        let sum = digest(&SHA256, &out);
        out.extend_from_slice(sum.as_ref());
        out
    }

    /// Parse and check a backup file: magic, version, digest, sections,
    /// metadata, and that the metadata says what the sections hold.
    pub fn parse(file: &[u8]) -> Result<Archive, ArchiveError> {
        if file.len() > MAX_FILE {
            return Err(ArchiveError::TooLarge(file.len()));
        }
        let head = file.len().min(MAGIC.len());
        if file[..head] != MAGIC[..head] {
            return Err(ArchiveError::BadMagic);
        }
        if file.len() < MAGIC.len() + 1 {
            return Err(ArchiveError::Truncated(file.len()));
        }
        if file[8] != VERSION {
            return Err(ArchiveError::UnknownVersion(file[8]));
        }
        if file.len() < 9 + SHA256_OUTPUT_LEN {
            return Err(ArchiveError::Truncated(file.len()));
        }
        let (signed, sum) = file.split_at(file.len() - SHA256_OUTPUT_LEN);
        if digest(&SHA256, signed).as_ref() != sum {
            return Err(ArchiveError::Digest);
        }
        let s = sections(
            &signed[9..],
            &[
                (META, META_MAX),
                (CA_CERT, CERT_MAX),
                (RELAY_CERT, CERT_MAX),
                (REGISTRY, MAX_FILE),
                (KEYS, KEYS_MAX),
            ],
        )?;
        let meta = std::str::from_utf8(required(&s, META)?)
            .map_err(|_| ArchiveError::Meta("not UTF-8".into()))?;
        let meta: Meta =
            toml::from_str(meta).map_err(|e| ArchiveError::Meta(e.message().into()))?;
        let keys = find(&s, KEYS).map(<[u8]>::to_vec);
        if meta.with_keys != keys.is_some() {
            return Err(malformed(if meta.with_keys {
                "the metadata says it holds keys, but it has none"
            } else {
                "it holds keys, but the metadata says it has none"
            }));
        }
        Ok(Archive {
            meta,
            ca_cert: required(&s, CA_CERT)?.to_vec(),
            relay_cert: required(&s, RELAY_CERT)?.to_vec(),
            registry: required(&s, REGISTRY)?.to_vec(),
            keys,
        })
    }
}

/// The plaintext of the `KEYS` section: the two PKCS#8 keys as sections
/// `CAKY` and `RLKY`, in zeroizing memory.
pub fn encode_keys(keys: &KeyMaterial) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(16 + keys.ca.len() + keys.relay.len()));
    put(&mut out, CA_KEY, &keys.ca);
    put(&mut out, RELAY_KEY, &keys.relay);
    if let Some(c) = &keys.issuing_cert {
        put(&mut out, ISSUING_CERT, c);
    }
    if let Some(k) = &keys.audit {
        put(&mut out, AUDIT_KEY, k);
    }
    if let Some(k) = &keys.root {
        put(&mut out, ROOT_KEY, k);
    }
    out
}

/// The keys out of [`encode_keys`]' bytes.
pub fn decode_keys(plain: &[u8]) -> Result<KeyMaterial, ArchiveError> {
    let bound = crate::pki::passphrase::MAX_PAYLOAD;
    let s = sections(
        plain,
        &[
            (CA_KEY, bound),
            (RELAY_KEY, bound),
            (ISSUING_CERT, bound),
            (AUDIT_KEY, bound),
            (ROOT_KEY, bound),
        ],
    )?;
    Ok(KeyMaterial {
        ca: Zeroizing::new(required(&s, CA_KEY)?.to_vec()),
        relay: Zeroizing::new(required(&s, RELAY_KEY)?.to_vec()),
        issuing_cert: find(&s, ISSUING_CERT).map(<[u8]>::to_vec),
        audit: find(&s, AUDIT_KEY).map(|k| Zeroizing::new(k.to_vec())),
        root: find(&s, ROOT_KEY).map(|k| Zeroizing::new(k.to_vec())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(keys: bool) -> Archive {
        Archive {
            meta: Meta {
                voxgate_version: "0.1.0".into(),
                schema_version: 1,
                devices: 3,
                created: 1_765_000_000,
                created_utc: "2025-12-06T05:46:40Z".into(),
                source_host: "relay \"one\"".into(),
                ca_fingerprint: "SHA256:00".into(),
                with_keys: keys,
            },
            ca_cert: b"ca pem".to_vec(),
            relay_cert: b"relay pem".to_vec(),
            registry: vec![9u8; 5000],
            keys: keys.then(|| b"VXPASS1\n...".to_vec()),
        }
    }

    #[test]
    fn round_trip_and_readable_metadata() {
        for keys in [false, true] {
            let a = sample(keys);
            let bytes = a.encode();
            assert_eq!(&bytes[..8], MAGIC);
            assert_eq!(Archive::parse(&bytes).unwrap(), a);
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("schema_version = 1"), "{text}");
            assert_eq!(text.contains("KEYS"), keys);
        }
    }

    #[test]
    fn damage_is_found_before_anything_is_read() {
        let bytes = sample(true).encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let e = Archive::parse(&bad).unwrap_err();
            match i {
                0..8 => assert_eq!(e, ArchiveError::BadMagic),
                8 => assert_eq!(e, ArchiveError::UnknownVersion(VERSION ^ 0x20)),
                _ => assert_eq!(e, ArchiveError::Digest, "byte {i}"),
            }
        }
        for n in [0, 3, 8, 9, 40, bytes.len() - 1] {
            assert!(Archive::parse(&bytes[..n]).is_err(), "{n}");
        }
        assert_eq!(
            Archive::parse(b"hello").unwrap_err(),
            ArchiveError::BadMagic
        );
    }

    /// A section table that is wrong although the digest matches.
    fn resigned(body: &[u8]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.push(VERSION);
        f.extend_from_slice(body);
        let sum = digest(&SHA256, &f);
        f.extend_from_slice(sum.as_ref());
        f
    }

    #[test]
    fn sections_are_checked() {
        let a = sample(false);
        let meta = toml::to_string(&a.meta).unwrap();
        let mut body = Vec::new();
        put(&mut body, META, meta.as_bytes());
        put(&mut body, CA_CERT, b"x");
        let e = Archive::parse(&resigned(&body)).unwrap_err();
        assert!(e.to_string().contains("`RLCR` is missing"), "{e}");
        put(&mut body, CA_CERT, b"y");
        let e = Archive::parse(&resigned(&body)).unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let mut body2 = Vec::new();
        put(&mut body2, *b"EVIL", b"");
        let e = Archive::parse(&resigned(&body2)).unwrap_err();
        assert!(e.to_string().contains("unknown section `EVIL`"), "{e}");
        let mut cut = Vec::new();
        put(&mut cut, META, meta.as_bytes());
        cut.truncate(cut.len() - 1);
        let e = Archive::parse(&resigned(&cut)).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        let mut big = Vec::new();
        big.extend_from_slice(&META);
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = Archive::parse(&resigned(&big)).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        // Metadata that claims keys the file does not hold.
        let mut lying = sample(false);
        lying.meta.with_keys = true;
        let e = Archive::parse(&lying.encode()).unwrap_err();
        assert!(e.to_string().contains("says it holds keys"), "{e}");
    }

    #[test]
    fn key_bundle_round_trips() {
        let k = KeyMaterial {
            ca: Zeroizing::new(vec![1u8; 138]),
            relay: Zeroizing::new(vec![2u8; 138]),
            issuing_cert: Some(b"issuing".to_vec()),
            audit: Some(Zeroizing::new(vec![3u8; 32])),
            root: None,
        };
        let plain = encode_keys(&k);
        let back = decode_keys(&plain).unwrap();
        assert_eq!(back.ca, k.ca);
        assert_eq!(back.issuing_cert, k.issuing_cert);
        assert_eq!(back.audit, k.audit);
        assert!(back.root.is_none());
        assert_eq!(back.relay, k.relay);
        assert!(decode_keys(&plain[..plain.len() - 1]).is_err());
        assert!(decode_keys(b"").is_err());
    }
}
