//! Where an issuing CA's key lives: sealed to the machine (a software key,
//! `issuing-<fp>.key.sealed`), or inside a TPM (`issuing-<fp>.key.tpm`: the
//! TPM's wrapped blob, usable only by that TPM, behind a one-line header
//! that names the TPM). With a TPM the key never exists outside it: the
//! signer process signs through the TPM.
//!
//! A new issuing CA's key goes where the current one's is ([`KeyStore::follow`]),
//! so a fleet whose issuing key is in a TPM keeps it there across
//! rotations; `voxgate relay init --issuing-key-tpm SPEC` puts the first one
//! there.

use super::ca::CaError;
use crate::identity::tpm::{KeyBlob, Tpm, TpmKey, TpmOptions, TpmSpec};
use crate::pki::sealed::{self, Material};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SignatureAlgorithm};
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The first line of a `.key.tpm` file, before the TPM's spec.
const TPM_HEADER: &str = "voxgate-tpm-key v1 ";

/// An issuing CA's signing key (one per issuing CA, held for the
/// process's life: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum CaKey {
    /// In this process's memory (unsealed).
    Soft(KeyPair),
    /// In a TPM.
    Tpm(TpmKey),
}

impl std::fmt::Debug for CaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaKey::Soft(_) => "CaKey::Soft",
            CaKey::Tpm(_) => "CaKey::Tpm",
        })
    }
}

impl rcgen::PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            CaKey::Soft(k) => k.der_bytes(),
            CaKey::Tpm(k) => k.der_bytes(),
        }
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            CaKey::Soft(k) => k.algorithm(),
            CaKey::Tpm(k) => rcgen::PublicKeyData::algorithm(k),
        }
    }
}

impl rcgen::SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::Soft(k) => k.sign(msg),
            CaKey::Tpm(k) => rcgen::SigningKey::sign(k, msg),
        }
    }
}

/// Where new keys are made.
#[derive(Debug, Clone)]
pub enum KeyStore {
    /// A software key, sealed to this machine.
    Sealed,
    /// A key made inside this TPM.
    Tpm(TpmSpec),
}

impl KeyStore {
    /// Where the current issuing CA's key is (`Sealed` when there is none
    /// yet, or it is sealed).
    pub fn follow(state_dir: &Path, current_fp: Option<&str>) -> Result<KeyStore, CaError> {
        let Some(fp) = current_fp else {
            return Ok(KeyStore::Sealed);
        };
        let path = tpm_path(state_dir, fp);
        if !path.exists() {
            return Ok(KeyStore::Sealed);
        }
        let file = std::fs::read(&path).map_err(super::ca::io(&path))?;
        Ok(KeyStore::Tpm(parse_tpm_file(&path, &file)?.0))
    }

    /// A new key here, and the file that keeps it (its bytes, and the
    /// extension of `issuing-<fp>.key.*`).
    pub fn new_key(
        &self,
        material: &dyn Fn() -> Result<Material, CaError>,
    ) -> Result<(CaKey, Vec<u8>, &'static str), CaError> {
        match self {
            KeyStore::Sealed => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
                let pkcs8 = Zeroizing::new(key.serialize_der());
                let file = sealed::seal(&material()?, &pkcs8).map_err(CaError::Seal)?;
                Ok((CaKey::Soft(key), file, "sealed"))
            }
            KeyStore::Tpm(spec) => {
                let tpm = open(spec)?;
                let blob = tpm
                    .create_device_key()
                    .map_err(|e| CaError::Tpm(e.to_string()))?;
                let mut file = format!("{TPM_HEADER}{spec}\n").into_bytes();
                file.extend_from_slice(&blob.to_bytes());
                Ok((CaKey::Tpm(TpmKey::new(tpm, blob)), file, "tpm"))
            }
        }
    }
}

fn open(spec: &TpmSpec) -> Result<Arc<Tpm>, CaError> {
    // The signer and the operator's commands use the TPM in turn: a
    // simulator serves one connection at a time.
    let options = TpmOptions {
        shared: matches!(spec, TpmSpec::Simulator(_)),
        ..TpmOptions::recommended(spec)
    };
    Tpm::open_with(spec.clone(), options)
        .map(Arc::new)
        .map_err(|e| CaError::Tpm(format!("{spec}: {e}")))
}

/// The `.key.tpm` file of issuing CA `fp`.
pub fn tpm_path(state_dir: &Path, fp: &str) -> std::path::PathBuf {
    let (_, sealed) = super::authority::issuing_paths(state_dir, fp);
    sealed.with_extension("tpm")
}

fn parse_tpm_file(path: &Path, file: &[u8]) -> Result<(TpmSpec, KeyBlob), CaError> {
    let bad = |what: &str| CaError::Tpm(format!("{}: {what}", path.display()));
    let nl = file
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line"))?;
    let header = std::str::from_utf8(&file[..nl]).map_err(|_| bad("header is not text"))?;
    let spec: TpmSpec = header
        .strip_prefix(TPM_HEADER)
        .ok_or_else(|| bad("not a voxgate TPM key file"))?
        .parse()
        .map_err(|e: crate::identity::tpm::TpmError| bad(&e.to_string()))?;
    let blob = KeyBlob::from_bytes(&file[nl + 1..]).map_err(|e| bad(&e.to_string()))?;
    Ok((spec, blob))
}

/// The key of issuing CA `fp`: from the TPM its `.key.tpm` file names, or
/// unsealed from `.key.sealed`.
pub fn load(state_dir: &Path, material: &Material, fp: &str) -> Result<CaKey, CaError> {
    let tpm_file = tpm_path(state_dir, fp);
    if tpm_file.exists() {
        let file = std::fs::read(&tpm_file).map_err(super::ca::io(&tpm_file))?;
        let (spec, blob) = parse_tpm_file(&tpm_file, &file)?;
        let tpm = open(&spec)?;
        // Loading the blob proves it belongs to this TPM.
        tpm.public_key(&blob)
            .map_err(|e| CaError::Tpm(format!("{}: {e}", tpm_file.display())))?;
        return Ok(CaKey::Tpm(TpmKey::new(tpm, blob)));
    }
    let (_, key_path) = super::authority::issuing_paths(state_dir, fp);
    let file = std::fs::read(&key_path).map_err(super::ca::io(&key_path))?;
    let pkcs8 = sealed::unseal(material, &file).map_err(|e| CaError::Sealed {
        path: key_path.clone(),
        what: e.to_string(),
    })?;
    let key = KeyPair::try_from(&rustls::pki_types::PrivatePkcs8KeyDer::from(&pkcs8[..]))
        .map_err(|_| CaError::KeyFormat(key_path.clone()))?;
    Ok(CaKey::Soft(key))
}

/// The TPM device the current issuing key needs (kept writable by the
/// signer's sandbox), if it is in one.
pub fn tpm_device(state_dir: &Path, fp: &str) -> Option<std::path::PathBuf> {
    match KeyStore::follow(state_dir, Some(fp)) {
        Ok(KeyStore::Tpm(TpmSpec::Device(p))) => Some(p),
        _ => None,
    }
}
