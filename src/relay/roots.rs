//! Root rotation: a new fleet root, vouched for by the old one.
//!
//! `voxgate relay ca rotate-root` makes a new root and a cross certificate
//! (the new root's name and key, signed by the old root, valid until the
//! overlap ends), a new issuing CA under the new root, and records both in
//! the registry's `roots` table. Until `retire_at`:
//!
//! - the relay serves `leaf, issuing CA, cross certificate, new root, old
//!   root`, so a device that pinned the old root follows the cross
//!   certificate to it, and `voxgate setup` with either fingerprint finds its
//!   root in the chain;
//! - every session is told of the new root ([`RootNotice`], the control
//!   message `trust_root`), and the device adds it to its bundle only if the
//!   cross certificate verifies under a root it already trusts
//!   ([`crate::pki::roots`]);
//! - devices renew onto the new issuing CA (`renew_now`), as after an
//!   issuing-CA rotation.
//!
//! From `retire_at` the old root is dropped everywhere: from `ca.pem`, from
//! the relay's chain and anchors, and, told `only`, from every device's
//! bundle. The cross certificate expires then too, so a device that still
//! has only the old root can no longer verify the relay at all.
//!
//! One rotation at a time: a second one waits until the first one's overlap
//! is over, so that a device always needs one cross certificate, never a
//! chain of them.

use super::authority::{self, ROOT_DAYS, ROOT_KEY_SEALED, RootKeyIn, RootKeyOut};
use super::ca::{self, CaError};
use super::registry::{Registry, now};
use crate::pki::files;
use crate::pki::name::fingerprint;
use crate::pki::sealed::{self, MachineBinding};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// What devices are told of the fleet's roots (base64 DER, as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootNotice {
    /// The current root.
    pub root: String,
    /// Its cross certificate from the previous root; empty with `only`.
    pub cross: String,
    /// The overlap is over: trust only `root`.
    pub only: bool,
}

/// The fleet's roots at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetRoots {
    /// The roots trusted now, current first.
    pub live: Vec<CertificateDer<'static>>,
    /// The cross certificates from older live roots to the current one.
    pub crosses: Vec<CertificateDer<'static>>,
    /// What devices are told; `None` before the first root rotation.
    pub notice: Option<RootNotice>,
    /// When this changes by itself next (an older root's retirement).
    pub next_change: Option<i64>,
}

impl FleetRoots {
    /// What the relay appends to its certificate and issuing CA: the cross
    /// certificates, then the live roots.
    pub fn tail(&self) -> Vec<CertificateDer<'static>> {
        self.crosses.iter().chain(&self.live).cloned().collect()
    }
}

/// The fleet's roots at `at`: the registry's after a root rotation, else
/// `ca.pem`'s.
pub fn fleet_roots(state_dir: &Path, registry: &Registry, at: i64) -> Result<FleetRoots, CaError> {
    let rows = registry.roots()?;
    let Some(current) = rows.iter().find(|r| r.current) else {
        return Ok(FleetRoots {
            live: authority::roots(state_dir)?,
            ..FleetRoots::default()
        });
    };
    let live: Vec<_> = rows.iter().filter(|r| r.current || r.live(at)).collect();
    // Each live root's cross certificate, but the oldest's (its signer is
    // retired).
    let crosses = live[..live.len() - 1]
        .iter()
        .filter_map(|r| r.cross.clone().map(CertificateDer::from))
        .collect();
    let overlap = live.len() > 1;
    let notice = RootNotice {
        root: B64.encode(&current.cert),
        cross: match (&current.cross, overlap) {
            (Some(c), true) => B64.encode(c),
            _ => String::new(),
        },
        only: !overlap,
    };
    Ok(FleetRoots {
        live: live
            .iter()
            .map(|r| CertificateDer::from(r.cert.clone()))
            .collect(),
        crosses,
        notice: Some(notice),
        next_change: rows
            .iter()
            .filter_map(|r| r.retire_at)
            .filter(|&t| t > at)
            .min(),
    })
}

/// Make `ca.pem` hold `live` (current first); `true` when it changed.
pub fn sync_ca_pem(state_dir: &Path, live: &[CertificateDer<'static>]) -> Result<bool, CaError> {
    if live.is_empty() || authority::roots(state_dir).is_ok_and(|have| have == live) {
        return Ok(false);
    }
    let text: String = live.iter().map(|c| files::pem(c, "CERTIFICATE")).collect();
    ca::replace(&state_dir.join(ca::CA_CERT), text.as_bytes(), 0o644)?;
    Ok(true)
}

/// What a root rotation made.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new root's fingerprint: what new devices pin.
    pub root: String,
    /// The new issuing CA's fingerprint.
    pub issuing: String,
    /// Where the new root's key went (`None`: sealed on the relay).
    pub key_out: Option<PathBuf>,
}

/// Rotate the fleet root: a new root, its cross certificate from the old
/// root (valid until `retire_at`), a new issuing CA under it; the old root
/// and every earlier issuing CA are trusted until `retire_at`. The new
/// root's key goes where `out` says (never the old key's file).
pub fn rotate_root(
    state_dir: &Path,
    binding: &MachineBinding,
    registry: &Registry,
    old_key: RootKeyIn<'_>,
    out: RootKeyOut<'_>,
    retire_at: i64,
) -> Result<Rotated, CaError> {
    let t = now();
    if retire_at < t {
        return Err(CaError::RetireInPast);
    }
    if let Some(r) = registry.roots()?.iter().find(|r| !r.current && r.live(t)) {
        return Err(CaError::RootOverlap(r.fingerprint.clone()));
    }
    let old = authority::root_issuer(state_dir, binding, old_key)?;
    let old_der = authority::roots(state_dir)?
        .into_iter()
        .next()
        .ok_or_else(|| CaError::Missing(state_dir.to_path_buf()))?;
    let old_not_after = x509_parser::parse_x509_certificate(&old_der)
        .map(|(_, x)| x.validity().not_after.timestamp())
        .map_err(|_| CaError::KeyFormat(state_dir.join(ca::CA_CERT)))?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        authority::ca_params(&authority::stamped("voxgate fleet root CA"), 1, ROOT_DAYS);
    params.serial_number = Some(authority::random_serial()?);
    let root = params.self_signed(&key)?;
    // The cross certificate: the same name and key, vouched for by the old
    // root until the overlap ends (and never past the old root's own end).
    let mut cross_params = params.clone();
    cross_params.serial_number = Some(authority::random_serial()?);
    cross_params.not_after = OffsetDateTime::from_unix_timestamp(retire_at.min(old_not_after))
        .map_err(|_| CaError::RetireInPast)?;
    let cross = cross_params.signed_by(&key, &old)?;
    let root_fp = fingerprint(root.der());

    let key_out = match out {
        RootKeyOut::Keep => {
            let pkcs8 = Zeroizing::new(key.serialize_der());
            let sealed_key = sealed::seal(&binding.material()?, &pkcs8).map_err(CaError::Seal)?;
            ca::replace(&state_dir.join(ROOT_KEY_SEALED), &sealed_key, 0o600)?;
            None
        }
        export => {
            let written = authority::store_root_key(state_dir, binding, &key, export)?;
            // The old root's key, if it was kept here, goes: the new root
            // is the one that signs, and its key is off the machine.
            authority::shred(&state_dir.join(ROOT_KEY_SEALED))?;
            written
        }
    };
    let new_root = Issuer::new(params, key);
    let issuing =
        authority::install_issuing(state_dir, binding, registry, &new_root, Some(retire_at))?;
    for i in registry.issuers()? {
        if !i.current && i.retire_at.is_none_or(|r| r > retire_at) {
            registry.retire_issuer(&i.fingerprint, retire_at)?;
        }
    }
    registry.rotate_root(
        (&fingerprint(&old_der), &old_der),
        (&root_fp, root.der(), cross.der()),
        retire_at,
    )?;
    sync_ca_pem(state_dir, &fleet_roots(state_dir, registry, now())?.live)?;
    Ok(Rotated {
        root: root_fp,
        issuing: issuing.fingerprint().to_string(),
        key_out,
    })
}

#[cfg(test)]
mod tests;
