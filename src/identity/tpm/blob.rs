//! Key and sealed-data blobs: a TPM object's public area and its
//! TPM-encrypted private area, in a file format of our own.
//!
//! Layout (big-endian; every length checked and bounded before use):
//!
//! ```text
//! 0   8  magic "VXTPMOBJ"
//! 8   1  version (1)
//! 9   1  kind: 1 = ECDSA P-256 signing key, 2 = sealed data
//! 10  1  parent: 1 = owner-hierarchy ECC P-256 storage primary (TCG SRK template)
//! 11  1  reserved (0)
//! 12  2  n = length of the public area   (1..=512)
//! 14  2  m = length of the private area  (1..=512)
//! 16  n  TPMT_PUBLIC, exactly as the TPM returned it
//! .   m  TPM2B_PRIVATE contents: encrypted and HMACed by the parent key
//! ```
//!
//! The private area is opaque: the TPM wrapped it under the storage
//! primary, which is derived from this TPM's owner seed, so no other TPM
//! (and no TPM after `TPM2_Clear`) can load it. The public area is parsed and
//! must describe what voxgate creates (P-256 ECDSA/SHA-256 signing key or a
//! sealed keyed-hash object, both fixedTPM and fixedParent).

pub use super::public::FIXED;
use super::public::{check_public, ecc_point, parse_public};
use thiserror::Error;
use tpm2_protocol::data::{TpmaObject, TpmtPublic};

/// File magic.
pub const MAGIC: &[u8; 8] = b"VXTPMOBJ";
/// Format version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 16;
/// Largest public area accepted.
pub const MAX_PUBLIC: usize = 512;
/// Largest private area accepted.
pub const MAX_PRIVATE: usize = 512;
/// Largest blob accepted.
pub const MAX_BLOB: usize = HEADER_LEN + MAX_PUBLIC + MAX_PRIVATE;
const PARENT_SRK_ECC_P256: u8 = 1;

/// A blob file that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlobError {
    /// Shorter than its header or its declared areas.
    #[error("TPM blob is truncated ({len} bytes, {needed} needed): the file is damaged")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// Longer than any blob voxgate writes, or than its declared areas.
    #[error("TPM blob has {len} bytes, expected {expected}: the file is damaged or not a blob")]
    Length {
        /// Bytes present.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// Not a voxgate TPM blob.
    #[error("not a voxgate TPM blob (bad magic)")]
    BadMagic,
    /// Written by a newer voxgate.
    #[error("TPM blob version {0} is not supported (this voxgate reads version 1)")]
    Version(u8),
    /// A key where sealed data was expected, or the reverse.
    #[error("TPM blob holds {found}, expected {expected}")]
    WrongKind {
        /// What the caller wanted.
        expected: &'static str,
        /// What the blob holds.
        found: &'static str,
    },
    /// A header field with a value this version does not define.
    #[error("TPM blob header field `{field}` has unknown value {value}")]
    Header {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u16,
    },
    /// The public area does not parse or is not what voxgate creates.
    #[error("TPM blob public area: {0}")]
    Public(&'static str),
}

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectKind {
    /// An ECDSA P-256 signing key.
    SigningKey = 1,
    /// A sealed keyed-hash data object.
    Sealed = 2,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            ObjectKind::SigningKey => "a signing key",
            ObjectKind::Sealed => "sealed data",
        }
    }
}

/// A TPM object as stored: its public area (parsed and raw) and its
/// TPM-wrapped private area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Object {
    pub(crate) kind: ObjectKind,
    pub(crate) public: TpmtPublic,
    pub(crate) public_raw: Vec<u8>,
    pub(crate) private: Vec<u8>,
}

impl Object {
    /// Check and wrap what TPM2_Create returned.
    pub(crate) fn new(
        kind: ObjectKind,
        public_raw: &[u8],
        private: &[u8],
    ) -> Result<Self, BlobError> {
        if public_raw.is_empty() || public_raw.len() > MAX_PUBLIC {
            return Err(BlobError::Header {
                field: "public length",
                value: clamp(public_raw.len()),
            });
        }
        if private.is_empty() || private.len() > MAX_PRIVATE {
            return Err(BlobError::Header {
                field: "private length",
                value: clamp(private.len()),
            });
        }
        let public = parse_public(public_raw)?;
        check_public(kind, &public)?;
        Ok(Object {
            kind,
            public,
            public_raw: public_raw.to_vec(),
            private: private.to_vec(),
        })
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.public_raw.len() + self.private.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, self.kind as u8, PARENT_SRK_ECC_P256, 0]);
        // Lengths are bounded by MAX_PUBLIC / MAX_PRIVATE in `new`.
        out.extend_from_slice(&clamp(self.public_raw.len()).to_be_bytes());
        out.extend_from_slice(&clamp(self.private.len()).to_be_bytes());
        out.extend_from_slice(&self.public_raw);
        out.extend_from_slice(&self.private);
        out
    }

    pub(crate) fn from_bytes(expected: ObjectKind, b: &[u8]) -> Result<Self, BlobError> {
        if b.len() > MAX_BLOB {
            return Err(BlobError::Length {
                len: b.len(),
                expected: MAX_BLOB,
            });
        }
        let Some((head, body)) = b.split_first_chunk::<HEADER_LEN>() else {
            return Err(BlobError::Truncated {
                len: b.len(),
                needed: HEADER_LEN,
            });
        };
        if &head[..8] != MAGIC {
            return Err(BlobError::BadMagic);
        }
        if head[8] != VERSION {
            return Err(BlobError::Version(head[8]));
        }
        let kind = match head[9] {
            1 => ObjectKind::SigningKey,
            2 => ObjectKind::Sealed,
            v => {
                return Err(BlobError::Header {
                    field: "kind",
                    value: v.into(),
                });
            }
        };
        if kind != expected {
            return Err(BlobError::WrongKind {
                expected: expected.name(),
                found: kind.name(),
            });
        }
        if head[10] != PARENT_SRK_ECC_P256 {
            return Err(BlobError::Header {
                field: "parent",
                value: head[10].into(),
            });
        }
        if head[11] != 0 {
            return Err(BlobError::Header {
                field: "reserved",
                value: head[11].into(),
            });
        }
        let n = u16::from_be_bytes([head[12], head[13]]);
        let m = u16::from_be_bytes([head[14], head[15]]);
        if n == 0 || usize::from(n) > MAX_PUBLIC {
            return Err(BlobError::Header {
                field: "public length",
                value: n,
            });
        }
        if m == 0 || usize::from(m) > MAX_PRIVATE {
            return Err(BlobError::Header {
                field: "private length",
                value: m,
            });
        }
        let (n, m) = (usize::from(n), usize::from(m));
        let needed = HEADER_LEN + n + m;
        if b.len() < needed {
            return Err(BlobError::Truncated {
                len: b.len(),
                needed,
            });
        }
        if b.len() > needed {
            return Err(BlobError::Length {
                len: b.len(),
                expected: needed,
            });
        }
        let (public_raw, private) = body.split_at(n);
        Object::new(kind, public_raw, private)
    }
}

fn clamp(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A device key: an ECDSA P-256 key whose private part only the TPM that
/// created it can use.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlob {
    pub(crate) obj: Object,
    point: [u8; 65],
}

impl KeyBlob {
    pub(crate) fn new(obj: Object) -> Result<Self, BlobError> {
        let point = ecc_point(&obj.public)?;
        Ok(KeyBlob { obj, point })
    }

    /// Parse a blob file's contents.
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlobError> {
        KeyBlob::new(Object::from_bytes(ObjectKind::SigningKey, b)?)
    }

    /// The file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.obj.to_bytes()
    }

    /// The public key as recorded in the blob: `04 || X || Y`.
    pub fn public_key(&self) -> [u8; 65] {
        self.point
    }

    /// The public area's object attributes (as the TPM set them).
    pub fn attributes(&self) -> TpmaObject {
        self.obj.public.object_attributes
    }

    /// The TPM-wrapped private area (opaque, encrypted under the parent).
    pub fn private_area(&self) -> &[u8] {
        &self.obj.private
    }
}

impl std::fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBlob")
            .field(
                "public_x_prefix",
                &format_args!("{:02x?}", &self.point[1..5]),
            )
            .field("private_len", &self.obj.private.len())
            .finish()
    }
}

/// Data sealed to this TPM (at most 128 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    pub(crate) obj: Object,
}

impl SealedBlob {
    /// Parse a blob file's contents.
    pub fn from_bytes(b: &[u8]) -> Result<Self, BlobError> {
        Ok(SealedBlob {
            obj: Object::from_bytes(ObjectKind::Sealed, b)?,
        })
    }

    /// The file contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.obj.to_bytes()
    }
}

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBlob")
            .field("private_len", &self.obj.private.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tpm::commands::{sealed_template, signing_key_template};
    use tpm2_protocol::basic::TpmBuffer;
    use tpm2_protocol::data::TpmsEccPoint;
    use tpm2_protocol::data::TpmuPublicId;
    use tpm2_protocol::{TpmMarshal, TpmWriter};

    fn marshal(p: &TpmtPublic) -> Vec<u8> {
        let mut buf = [0u8; MAX_PUBLIC];
        let mut w = TpmWriter::new(&mut buf);
        p.marshal(&mut w).unwrap();
        w.as_bytes().to_vec()
    }

    fn key_public(x: &[u8], y: &[u8]) -> Vec<u8> {
        let mut p = signing_key_template();
        p.unique = TpmuPublicId::Ecc(TpmsEccPoint {
            x: TpmBuffer::try_from(x).unwrap(),
            y: TpmBuffer::try_from(y).unwrap(),
        });
        marshal(&p)
    }

    fn key_blob() -> Vec<u8> {
        let public = key_public(&[0x11; 32], &[0x22; 31]);
        let obj = Object::new(ObjectKind::SigningKey, &public, &[0xAB; 126]).unwrap();
        obj.to_bytes()
    }

    #[test]
    fn fixture_layout_and_round_trip() {
        let b = key_blob();
        let public_len = b.len() - HEADER_LEN - 126;
        let mut head = b"VXTPMOBJ\x01\x01\x01\x00".to_vec();
        head.extend_from_slice(&(public_len as u16).to_be_bytes());
        head.extend_from_slice(&126u16.to_be_bytes());
        assert_eq!(&b[..HEADER_LEN], &head[..]);
        let k = KeyBlob::from_bytes(&b).unwrap();
        assert_eq!(k.to_bytes(), b);
        let pk = k.public_key();
        assert_eq!(pk[0], 4);
        assert_eq!(&pk[1..33], &[0x11; 32]);
        // A 31-byte Y is left-padded.
        assert_eq!(pk[33], 0);
        assert_eq!(&pk[34..], &[0x22; 31]);
        assert!(
            k.attributes()
                .contains(FIXED | TpmaObject::SENSITIVE_DATA_ORIGIN)
        );
    }

    #[test]
    fn truncated_and_oversize() {
        let b = key_blob();
        for n in [0, 1, 15, 16, 17, b.len() - 1] {
            assert!(
                matches!(
                    KeyBlob::from_bytes(&b[..n]),
                    Err(BlobError::Truncated { .. })
                ),
                "len {n}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert!(matches!(
            KeyBlob::from_bytes(&long),
            Err(BlobError::Length { .. })
        ));
        let huge = vec![0u8; MAX_BLOB + 1];
        assert!(matches!(
            KeyBlob::from_bytes(&huge),
            Err(BlobError::Length { .. })
        ));
        // Declared lengths beyond the bounds are refused from the header alone.
        let mut bad = b.clone();
        bad[12..14].copy_from_slice(&513u16.to_be_bytes());
        assert!(matches!(
            KeyBlob::from_bytes(&bad),
            Err(BlobError::Header {
                field: "public length",
                value: 513
            })
        ));
        let mut bad = b.clone();
        bad[14..16].copy_from_slice(&0u16.to_be_bytes());
        assert!(matches!(
            KeyBlob::from_bytes(&bad),
            Err(BlobError::Header { .. })
        ));
    }

    #[test]
    fn bad_header_fields() {
        let b = key_blob();
        let mut bad = b.clone();
        bad[0] = b'W';
        assert_eq!(KeyBlob::from_bytes(&bad), Err(BlobError::BadMagic));
        let mut bad = b.clone();
        bad[8] = 2;
        assert_eq!(KeyBlob::from_bytes(&bad), Err(BlobError::Version(2)));
        let mut bad = b.clone();
        bad[10] = 7;
        assert!(matches!(
            KeyBlob::from_bytes(&bad),
            Err(BlobError::Header {
                field: "parent",
                ..
            })
        ));
        let mut bad = b.clone();
        bad[11] = 1;
        assert!(matches!(
            KeyBlob::from_bytes(&bad),
            Err(BlobError::Header { .. })
        ));
        assert!(matches!(
            SealedBlob::from_bytes(&b),
            Err(BlobError::WrongKind { .. })
        ));
    }

    #[test]
    fn public_area_must_be_what_voxgate_creates() {
        // Garbage in the public area.
        let mut bad = key_blob();
        bad[HEADER_LEN] ^= 0xFF;
        assert!(matches!(
            KeyBlob::from_bytes(&bad),
            Err(BlobError::Public(_))
        ));
        // A key without fixedParent.
        let mut p = signing_key_template();
        p.object_attributes = TpmaObject::FIXED_TPM | TpmaObject::SIGN_ENCRYPT;
        p.unique = TpmuPublicId::Ecc(TpmsEccPoint {
            x: TpmBuffer::try_from(&[1u8; 32][..]).unwrap(),
            y: TpmBuffer::try_from(&[1u8; 32][..]).unwrap(),
        });
        let e = Object::new(ObjectKind::SigningKey, &marshal(&p), &[1]).unwrap_err();
        assert_eq!(
            e,
            BlobError::Public("object is not fixedTPM and fixedParent")
        );
        // A key without a point.
        let e = Object::new(ObjectKind::SigningKey, &key_public(&[], &[]), &[1]).unwrap_err();
        assert!(matches!(e, BlobError::Public(_)));
        // A sealed-data public area is not a key, and the reverse.
        let sealed = marshal(&sealed_template());
        assert!(Object::new(ObjectKind::SigningKey, &sealed, &[1]).is_err());
        assert!(Object::new(ObjectKind::Sealed, &sealed, &[1]).is_ok());
        assert!(Object::new(ObjectKind::Sealed, &key_public(&[1; 32], &[1; 32]), &[1]).is_err());
    }
}
