//! Data encrypted under an operator's passphrase: the key material of a
//! relay backup (`voxgate relay backup --with-keys`), and whatever else must
//! leave its machine readable only by whoever knows the passphrase. Unlike
//! [`super::sealed`], nothing of the machine goes into the key: the file
//! opens anywhere, for the passphrase alone.
//!
//! Layout, version 1 (lengths fixed and checked before any byte is read):
//!
//! ```text
//! 0   8  magic "VXPASS1\n"
//! 8   1  version (1: PBKDF2-HMAC-SHA256, AES-256-GCM)
//! 9   4  PBKDF2 iterations, big-endian u32
//! 13 32  salt (random, per file)
//! 45 12  nonce (random, per file)
//! 57  n  ciphertext + 16-byte tag        (n <= MAX_PAYLOAD)
//! .. 32  SHA-256 of every byte before it
//! ```
//!
//! The key is `PBKDF2-HMAC-SHA256(passphrase, salt, iterations)`, 32 bytes;
//! the 57 header bytes are the AEAD's additional data, so a changed header
//! (a lowered iteration count, another salt) fails authentication. Writers
//! use [`ITERATIONS`] (about half a second of one core of the machine this
//! was tuned on, in a release build); readers take the count from the
//! header within [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`], so a later release
//! can raise it and older files still open.
//!
//! The trailing SHA-256 is no authentication (anyone can recompute it; the
//! GCM tag is what authenticates): it tells a damaged file
//! ([`PassphraseError::Corrupt`]) from a wrong passphrase
//! ([`PassphraseError::WrongPassphrase`]), which AES-GCM alone cannot, and
//! it is checked before the key derivation, so a damaged file costs no
//! half second. Sans-IO: [`seal`] and [`open`] work on bytes; plaintext
//! only ever lives in [`Zeroizing`] buffers.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;
use thiserror::Error;
use zeroize::Zeroizing;

/// File magic.
pub const MAGIC: &[u8; 8] = b"VXPASS1\n";
/// The format version this build writes (and the only one it reads).
pub const VERSION: u8 = 1;
const SALT_LEN: usize = 32;
/// Header length (the AEAD's additional data).
pub const HEADER_LEN: usize = 8 + 1 + 4 + SALT_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;
const DIGEST_LEN: usize = SHA256_OUTPUT_LEN;
/// Smallest file: header, an empty payload's tag, the digest.
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN + DIGEST_LEN;
/// Largest payload (keys, a few certificates: far less).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// PBKDF2 iterations of a new file: about 0.5 s on one core of the
/// project's 2-core build machine (ring, release build: 215 ns each).
pub const ITERATIONS: u32 = 2_300_000;
/// Fewest iterations a file may state (and [`seal_with`] accepts).
pub const MIN_ITERATIONS: u32 = 1_000;
/// Most iterations a file may state: a header cannot make a reader spend
/// more than about half a minute.
pub const MAX_ITERATIONS: u32 = 100_000_000;
/// Longest passphrase (bytes).
pub const MAX_PASSPHRASE: usize = 1024;
/// Shortest passphrase for a new file (bytes; [`Passphrase::check_new`]).
pub const MIN_NEW_PASSPHRASE: usize = 12;

/// An operator's passphrase: bytes in zeroizing memory, never formatted.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase([redacted])")
    }
}

impl Passphrase {
    /// A passphrase of 1..=[`MAX_PASSPHRASE`] bytes, taken as given (no
    /// trimming, no normalisation: what was typed is what opens the file).
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Result<Self, PassphraseRule> {
        if bytes.is_empty() {
            return Err(PassphraseRule::Empty);
        }
        if bytes.len() > MAX_PASSPHRASE {
            return Err(PassphraseRule::TooLong);
        }
        Ok(Passphrase(bytes))
    }

    /// Whether this passphrase may protect a new file: at least
    /// [`MIN_NEW_PASSPHRASE`] bytes. (Opening an existing file takes any.)
    pub fn check_new(&self) -> Result<(), PassphraseRule> {
        if self.0.len() < MIN_NEW_PASSPHRASE {
            return Err(PassphraseRule::TooShort);
        }
        Ok(())
    }

    /// The bytes. Call sites must not log or format them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// A passphrase that breaks a rule.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PassphraseRule {
    /// Nothing was given.
    #[error("the passphrase is empty")]
    Empty,
    /// Longer than [`MAX_PASSPHRASE`].
    #[error("the passphrase is longer than {MAX_PASSPHRASE} bytes")]
    TooLong,
    /// Shorter than [`MIN_NEW_PASSPHRASE`], for a new file.
    #[error(
        "the passphrase must be at least {MIN_NEW_PASSPHRASE} characters (it protects the keys against offline guessing)"
    )]
    TooShort,
}

/// How a passphrase-encrypted file is damaged.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Shorter than a header, tag and digest.
    #[error("truncated ({0} bytes)")]
    Truncated(usize),
    /// The payload is larger than any this format holds.
    #[error("its payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// The trailing digest does not match: bytes were changed or lost.
    #[error("its checksum does not match (changed or cut short in transfer or on disk)")]
    Digest,
    /// The iteration count is outside what any writer uses.
    #[error("its iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
}

/// Why a passphrase-encrypted file could not be written or opened.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PassphraseError {
    /// Not this format at all.
    #[error("not a voxgate passphrase-encrypted file (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error(
        "passphrase-encrypted file version {0} is not supported by this voxgate (written by a newer release?)"
    )]
    UnknownVersion(u8),
    /// The file is damaged.
    #[error("passphrase-encrypted file is damaged: {0}")]
    Corrupt(Corruption),
    /// The file is intact, but the passphrase does not open it.
    #[error("wrong passphrase (the file is intact, but this passphrase does not open it)")]
    WrongPassphrase,
    /// [`seal`] was given more than [`MAX_PAYLOAD`] bytes.
    #[error("a payload of {0} bytes exceeds {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// [`seal_with`] was given an iteration count out of range.
    #[error("{0} PBKDF2 iterations is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// The parsed header of a passphrase-encrypted file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Plaintext length.
    pub payload_len: usize,
}

fn key(passphrase: &Passphrase, salt: &[u8], iterations: NonZeroU32) -> LessSafeKey {
    let mut k = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase.expose(),
        &mut k[..],
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).expect("32 bytes is an AES-256 key"))
}

/// Encrypt `plaintext` under `passphrase` with [`ITERATIONS`].
pub fn seal(passphrase: &Passphrase, plaintext: &[u8]) -> Result<Vec<u8>, PassphraseError> {
    seal_with(passphrase, plaintext, ITERATIONS)
}

/// Encrypt `plaintext` under `passphrase` with `iterations` (tests, and a
/// later release that raises the count).
pub fn seal_with(
    passphrase: &Passphrase,
    plaintext: &[u8],
    iterations: u32,
) -> Result<Vec<u8>, PassphraseError> {
    if plaintext.len() > MAX_PAYLOAD {
        return Err(PassphraseError::TooLarge(plaintext.len()));
    }
    let rounds = NonZeroU32::new(iterations)
        .filter(|_| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations))
        .ok_or(PassphraseError::Iterations(iterations))?;
    let rng = SystemRandom::new();
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| PassphraseError::Random)?;
    rng.fill(&mut nonce).map_err(|_| PassphraseError::Random)?;
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&iterations.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut body = Zeroizing::new(plaintext.to_vec());
    let tag = key(passphrase, &salt, rounds)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&out[..HEADER_LEN]),
            &mut body[..],
        )
        .map_err(|_| PassphraseError::Random)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(tag.as_ref());
    let sum = digest(&SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    Ok(out)
}

/// Check a file's magic, version, lengths, digest and iteration count,
/// without the passphrase (and without its cost).
pub fn parse_header(file: &[u8]) -> Result<Header, PassphraseError> {
    let head = file.len().min(MAGIC.len());
    if file[..head] != MAGIC[..head] {
        return Err(PassphraseError::BadMagic);
    }
    if file.len() < MAGIC.len() + 1 {
        return Err(PassphraseError::Corrupt(Corruption::Truncated(file.len())));
    }
    if file[8] != VERSION {
        return Err(PassphraseError::UnknownVersion(file[8]));
    }
    if file.len() < MIN_LEN {
        return Err(PassphraseError::Corrupt(Corruption::Truncated(file.len())));
    }
    let payload_len = file.len() - MIN_LEN;
    if payload_len > MAX_PAYLOAD {
        return Err(PassphraseError::Corrupt(Corruption::TooLarge(payload_len)));
    }
    let (body, sum) = file.split_at(file.len() - DIGEST_LEN);
    // Not a secret: a plain comparison.
    if digest(&SHA256, body).as_ref() != sum {
        return Err(PassphraseError::Corrupt(Corruption::Digest));
    }
    let iterations = u32::from_be_bytes([file[9], file[10], file[11], file[12]]);
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(PassphraseError::Corrupt(Corruption::Iterations(iterations)));
    }
    Ok(Header {
        iterations,
        payload_len,
    })
}

/// Decrypt a file with `passphrase`.
pub fn open(passphrase: &Passphrase, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, PassphraseError> {
    let header = parse_header(file)?;
    let rounds = NonZeroU32::new(header.iterations)
        .ok_or(PassphraseError::Corrupt(Corruption::Iterations(0)))?;
    let salt = &file[13..13 + SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&file[13 + SALT_LEN..HEADER_LEN]);
    let mut body = Zeroizing::new(file[HEADER_LEN..file.len() - DIGEST_LEN].to_vec());
    let plain_len = key(passphrase, salt, rounds)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&file[..HEADER_LEN]),
            &mut body[..],
        )
        .map_err(|_| PassphraseError::WrongPassphrase)?
        .len();
    body.truncate(plain_len);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(s.as_bytes().to_vec())).unwrap()
    }

    /// Tests derive with the fewest iterations a file may state.
    fn sealed(p: &Passphrase, data: &[u8]) -> Vec<u8> {
        seal_with(p, data, MIN_ITERATIONS).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let p = pass("correct horse battery staple");
        let secret = b"-----PKCS8 bytes-----".to_vec();
        let file = sealed(&p, &secret);
        assert_eq!(&file[..8], MAGIC);
        assert_eq!(file[8], VERSION);
        assert_eq!(file.len(), MIN_LEN + secret.len());
        assert!(!file.windows(secret.len()).any(|w| w == secret));
        assert_eq!(
            parse_header(&file).unwrap(),
            Header {
                iterations: MIN_ITERATIONS,
                payload_len: secret.len()
            }
        );
        assert_eq!(open(&p, &file).unwrap().as_slice(), secret.as_slice());
        // Fresh salt and nonce every time.
        assert_ne!(sealed(&p, &secret), file);
        // An empty payload round-trips too.
        assert!(open(&p, &sealed(&p, b"")).unwrap().is_empty());
    }

    #[test]
    fn wrong_passphrase_is_told_from_damage() {
        let p = pass("correct horse battery staple");
        let file = sealed(&p, &[7u8; 121]);
        assert_eq!(
            open(&pass("correct horse battery stapler"), &file).unwrap_err(),
            PassphraseError::WrongPassphrase
        );
        // Every flipped bit: the header's magic and version are named as
        // such, anything else is damage, never a wrong passphrase.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let e = open(&p, &bad).unwrap_err();
            match i {
                0..8 => assert_eq!(e, PassphraseError::BadMagic, "byte {i}"),
                8 => assert_eq!(e, PassphraseError::UnknownVersion(VERSION ^ 1)),
                _ => assert_eq!(e, PassphraseError::Corrupt(Corruption::Digest), "byte {i}"),
            }
        }
        // A forger who also recomputes the digest still fails the tag:
        // the header is the AEAD's additional data.
        for i in [12, 13, 20, 50, HEADER_LEN, file.len() - DIGEST_LEN - 1] {
            let mut forged = file[..file.len() - DIGEST_LEN].to_vec();
            forged[i] ^= 0x01;
            let sum = digest(&SHA256, &forged);
            forged.extend_from_slice(sum.as_ref());
            let e = open(&p, &forged).unwrap_err();
            assert!(
                matches!(
                    e,
                    PassphraseError::WrongPassphrase
                        | PassphraseError::Corrupt(Corruption::Iterations(_))
                ),
                "byte {i}: {e}"
            );
        }
        for n in [0, 5, 8, 9, 40, MIN_LEN - 1] {
            let e = open(&p, &file[..n]).unwrap_err();
            assert_eq!(e, PassphraseError::Corrupt(Corruption::Truncated(n)), "{n}");
        }
        assert_eq!(
            parse_header(b"VXSEAL1\n\x01").unwrap_err(),
            PassphraseError::BadMagic
        );
        assert_eq!(
            parse_header(b"hello").unwrap_err(),
            PassphraseError::BadMagic
        );
    }

    #[test]
    fn iteration_counts_are_bounded_both_ways() {
        let p = pass("correct horse battery staple");
        for bad in [0, 1, MIN_ITERATIONS - 1, MAX_ITERATIONS + 1, u32::MAX] {
            assert_eq!(
                seal_with(&p, b"x", bad).unwrap_err(),
                PassphraseError::Iterations(bad)
            );
        }
        // A header that asks for more work than any writer uses is refused
        // before any derivation.
        let file = sealed(&p, b"x");
        let mut greedy = file[..file.len() - DIGEST_LEN].to_vec();
        greedy[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        let sum = digest(&SHA256, &greedy);
        greedy.extend_from_slice(sum.as_ref());
        let t = std::time::Instant::now();
        assert_eq!(
            open(&p, &greedy).unwrap_err(),
            PassphraseError::Corrupt(Corruption::Iterations(u32::MAX))
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            seal(&p, &vec![0u8; MAX_PAYLOAD + 1]).unwrap_err(),
            PassphraseError::TooLarge(MAX_PAYLOAD + 1)
        );
    }

    #[test]
    fn the_default_count_costs_about_half_a_second_in_release() {
        // The header carries the count, so any value opens; this guards
        // against an accidental edit of the constant by orders of magnitude.
        assert!((1_000_000..=10_000_000).contains(&ITERATIONS));
        let p = pass("correct horse battery staple");
        let file = seal(&p, b"k").unwrap();
        assert_eq!(parse_header(&file).unwrap().iterations, ITERATIONS);
        assert_eq!(open(&p, &file).unwrap().as_slice(), b"k");
    }

    #[test]
    fn passphrase_rules_and_redaction() {
        assert_eq!(
            Passphrase::new(Zeroizing::new(Vec::new())).unwrap_err(),
            PassphraseRule::Empty
        );
        assert_eq!(
            Passphrase::new(Zeroizing::new(vec![b'a'; MAX_PASSPHRASE + 1])).unwrap_err(),
            PassphraseRule::TooLong
        );
        assert_eq!(
            pass("short").check_new().unwrap_err(),
            PassphraseRule::TooShort
        );
        pass("twelve chars").check_new().unwrap();
        let p = pass("hunter2-hunter2");
        assert!(!format!("{p:?}").contains("hunter2"));
        let file = sealed(&p, b"SECRETKEYMATERIAL");
        let e = open(&pass("another passphrase"), &file).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("SECRET"));
        assert!(!format!("{e} {e:?}").contains("hunter2"));
    }
}
