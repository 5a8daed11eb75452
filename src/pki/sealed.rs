//! The sealed key file: a PKCS#8 private key encrypted with AES-256-GCM under
//! a key derived from material bound to this box.
//!
//! Layout (all lengths fixed, checked before any byte is read):
//!
//! ```text
//! 0   8  magic "VXSEAL1\n"
//! 8   1  version (1)
//! 9   1  binding: bit 0 = machine-id, bit 1 = SoC serial
//! 10 32  salt (random, per file)
//! 42 12  nonce (random, per write)
//! 54  n  ciphertext + 16-byte tag   (n <= 65536: a key, or the phone store)
//! ```
//!
//! The sealing key is `HKDF-SHA256(ikm = machine-id || serial, salt, info =
//! "voxgate sealed key v1")`; the 54 header bytes are the AEAD's additional
//! data, so any change to the header or the body fails authentication. A
//! copy on another machine derives another key and fails the same way; the
//! error says which inputs were used so an operator can tell a moved file
//! from a damaged one. Sans-IO: [`seal`] and [`unseal`] work on bytes.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// File magic.
pub const MAGIC: &[u8; 8] = b"VXSEAL1\n";
const VERSION: u8 = 1;
const SALT_LEN: usize = 32;
/// Header length (the AEAD's additional data).
pub const HEADER_LEN: usize = 8 + 1 + 1 + SALT_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
/// Largest sealed payload.
pub const MAX_PAYLOAD: usize = 65_536;
const INFO: &[u8] = b"voxgate sealed key v1";

/// Which device-bound inputs went into the sealing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// `/etc/machine-id` was used.
    pub machine_id: bool,
    /// The SoC serial number was used.
    pub serial: bool,
}

impl Binding {
    fn bits(self) -> u8 {
        u8::from(self.machine_id) | (u8::from(self.serial) << 1)
    }
    fn from_bits(b: u8) -> Option<Self> {
        (b & !0b11 == 0 && b != 0).then_some(Binding {
            machine_id: b & 1 != 0,
            serial: b & 2 != 0,
        })
    }
}

/// The device-bound material (secret-ish: the machine-id is readable by
/// every local user, so this binds a file to a box, it does not hide it).
pub struct Material {
    ikm: Zeroizing<Vec<u8>>,
    /// What was used.
    pub binding: Binding,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// Combine a machine id and an optional SoC serial. Both are trimmed;
    /// an empty machine id is refused.
    pub fn new(machine_id: &str, serial: Option<&str>) -> Result<Self, SealError> {
        let machine_id = machine_id.trim();
        if machine_id.len() < 16 {
            return Err(SealError::NoMachineId);
        }
        let serial = serial.map(|s| s.trim_matches(|c: char| c.is_whitespace() || c == '\0'));
        let serial = serial.filter(|s| !s.is_empty());
        let mut ikm = Zeroizing::new(Vec::with_capacity(128));
        ikm.extend_from_slice(b"machine-id\0");
        ikm.extend_from_slice(machine_id.as_bytes());
        if let Some(s) = serial {
            ikm.extend_from_slice(b"\0serial\0");
            ikm.extend_from_slice(s.as_bytes());
        }
        Ok(Material {
            ikm,
            binding: Binding {
                machine_id: true,
                serial: serial.is_some(),
            },
        })
    }

    fn key(&self, salt: &[u8]) -> LessSafeKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.ikm);
        let okm = prk
            .expand(&[INFO], &AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF output length");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// The files a box's sealing material is read from: the machine id and,
/// where the board has one, the SoC serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineBinding {
    /// The machine id file.
    pub machine_id: PathBuf,
    /// The SoC serial file; used when it exists.
    pub serial: Option<PathBuf>,
}

/// The machine id file of a systemd system.
pub const MACHINE_ID: &str = "/etc/machine-id";
/// The SoC serial of Raspberry Pi and other device-tree boards (readable
/// under `ProcSubset=pid`).
pub const SOC_SERIAL: &str = "/sys/firmware/devicetree/base/serial-number";

impl Default for MachineBinding {
    /// `/etc/machine-id`, and the device-tree serial when the board has one.
    fn default() -> Self {
        let serial = PathBuf::from(SOC_SERIAL);
        MachineBinding {
            machine_id: PathBuf::from(MACHINE_ID),
            serial: serial.exists().then_some(serial),
        }
    }
}

impl MachineBinding {
    /// Read the sealing inputs.
    pub fn material(&self) -> Result<Material, BindingError> {
        material(&self.machine_id, self.serial.as_deref())
    }
}

/// The sealing inputs could not be read.
#[derive(Debug, Error)]
pub enum BindingError {
    /// A file could not be read.
    #[error("cannot read {path} (a sealing input): {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The machine id is not usable.
    #[error("{path}: {source}")]
    Unusable {
        /// The machine id file.
        path: PathBuf,
        /// Why.
        source: SealError,
    },
}

/// Read the sealing inputs: the machine id, and the SoC serial if the file
/// exists and reads (a board without one binds to the machine id alone).
pub fn material(machine_id: &Path, serial: Option<&Path>) -> Result<Material, BindingError> {
    let id = std::fs::read_to_string(machine_id).map_err(|source| BindingError::Read {
        path: machine_id.to_path_buf(),
        source,
    })?;
    let serial = serial.and_then(|p| std::fs::read(p).ok());
    let serial = serial.map(|s| String::from_utf8_lossy(&s).into_owned());
    Material::new(&id, serial.as_deref()).map_err(|source| BindingError::Unusable {
        path: machine_id.to_path_buf(),
        source,
    })
}

/// Why a sealed file could not be written or opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    /// The file is shorter than its header and tag.
    #[error("sealed key file is truncated ({0} bytes)")]
    Truncated(usize),
    /// The file is not a voxgate sealed key.
    #[error("not a voxgate sealed key file (bad magic)")]
    BadMagic,
    /// The version is not one this build reads.
    #[error("sealed key file version {0} is not supported")]
    Version(u8),
    /// The binding byte is invalid.
    #[error("sealed key file has an invalid binding field")]
    BadBinding,
    /// The payload is larger than any key.
    #[error("sealed payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// Authentication failed: the file was changed, or it was sealed on
    /// another machine (different machine-id or SoC serial).
    #[error(
        "sealed key file does not open: it was modified, or sealed on another machine ({0}); re-enroll this device (`voxgate setup` with a new token)"
    )]
    Open(String),
    /// The file was sealed with inputs this box does not have.
    #[error(
        "sealed key file was bound to a SoC serial, but this machine has none; re-enroll this device (`voxgate setup` with a new token)"
    )]
    BindingMismatch,
    /// No machine id to bind to.
    #[error(
        "/etc/machine-id is missing or empty; run `systemd-machine-id-setup` (it binds the sealed key to this box)"
    )]
    NoMachineId,
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// Seal `payload` (a PKCS#8 key) to `material`.
pub fn seal(material: &Material, payload: &[u8]) -> Result<Vec<u8>, SealError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(SealError::TooLarge(payload.len()));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| SealError::Random)?;
    rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(material.binding.bits());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(payload.to_vec());
    let tag = material
        .key(&salt)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..HEADER_LEN]),
            &mut body,
        )
        .map_err(|_| SealError::Random)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// The parsed header of a sealed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Inputs the file was sealed with.
    pub binding: Binding,
}

/// Check the header without opening the body.
pub fn parse_header(file: &[u8]) -> Result<Header, SealError> {
    if file.len() < HEADER_LEN + TAG_LEN {
        return Err(SealError::Truncated(file.len()));
    }
    if &file[..8] != MAGIC {
        return Err(SealError::BadMagic);
    }
    if file[8] != VERSION {
        return Err(SealError::Version(file[8]));
    }
    let binding = Binding::from_bits(file[9]).ok_or(SealError::BadBinding)?;
    let payload = file.len() - HEADER_LEN - TAG_LEN;
    if payload > MAX_PAYLOAD {
        return Err(SealError::TooLarge(payload));
    }
    Ok(Header { binding })
}

/// Open a sealed file with this box's `material`.
pub fn unseal(material: &Material, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let header = parse_header(file)?;
    if header.binding.serial && !material.binding.serial {
        return Err(SealError::BindingMismatch);
    }
    let salt = &file[10..10 + SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&file[10 + SALT_LEN..HEADER_LEN]);
    let mut body = Zeroizing::new(file[HEADER_LEN..].to_vec());
    let used = if material.binding.serial {
        "machine-id and SoC serial"
    } else {
        "machine-id"
    };
    let plain_len = material
        .key(salt)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&file[..HEADER_LEN]),
            &mut body,
        )
        .map_err(|_| SealError::Open(format!("this box's {used} do not open it")))?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MID: &str = "5f3c0a1e9b8d4c7e8a6b2d1f0e9c8b7a\n";

    #[test]
    fn round_trip_and_header() {
        let m = Material::new(MID, Some("10000000abcdef01")).unwrap();
        let secret = b"-----PKCS8 bytes-----".to_vec();
        let file = seal(&m, &secret).unwrap();
        assert_eq!(&file[..8], MAGIC);
        assert!(!file.windows(secret.len()).any(|w| w == secret));
        assert_eq!(unseal(&m, &file).unwrap().as_slice(), secret.as_slice());
        assert_eq!(
            parse_header(&file).unwrap().binding,
            Binding {
                machine_id: true,
                serial: true
            }
        );
        // Two seals of the same key differ (fresh salt and nonce).
        assert_ne!(seal(&m, &secret).unwrap(), file);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let m = Material::new(MID, None).unwrap();
        let file = seal(&m, &[7u8; 121]).unwrap();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            assert!(unseal(&m, &bad).is_err(), "flip at byte {i} went unnoticed");
        }
        assert_eq!(
            unseal(&m, &file[..40]).unwrap_err(),
            SealError::Truncated(40)
        );
    }

    #[test]
    fn another_machine_cannot_open_it() {
        let here = Material::new(MID, Some("serial-a")).unwrap();
        let file = seal(&here, b"key").unwrap();
        let other_id = Material::new("00000000000000000000000000000001", Some("serial-a")).unwrap();
        let e = unseal(&other_id, &file).unwrap_err();
        assert!(e.to_string().contains("sealed on another machine"), "{e}");
        assert!(e.to_string().contains("re-enroll this device"), "{e}");
        let other_serial = Material::new(MID, Some("serial-b")).unwrap();
        assert!(matches!(
            unseal(&other_serial, &file),
            Err(SealError::Open(_))
        ));
        let no_serial = Material::new(MID, None).unwrap();
        assert_eq!(
            unseal(&no_serial, &file).unwrap_err(),
            SealError::BindingMismatch
        );
        assert_eq!(
            Material::new("  \n", None).unwrap_err(),
            SealError::NoMachineId
        );
    }

    #[test]
    fn errors_never_contain_key_bytes() {
        let m = Material::new(MID, None).unwrap();
        let file = seal(&m, b"SECRETKEYMATERIAL").unwrap();
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = unseal(&m, &bad).unwrap_err();
        assert!(!format!("{e} {e:?} {m:?}").contains("SECRET"));
        assert!(!format!("{m:?}").contains("5f3c0a"));
    }
}
