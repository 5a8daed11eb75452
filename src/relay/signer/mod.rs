//! Who signs certificates for the relay, and the signer process that keeps
//! the issuing CA's key out of the Internet-facing relay.
//!
//! [`FleetSigner`] is the one interface the relay signs through: device
//! certificates (enrollment, renewal) and its own certificate. Two
//! implementations:
//!
//! - [`IssuingCa`](super::ca::IssuingCa): the key in this process. The
//!   operator's commands use it (`relay init`, `relay dev-cert`,
//!   rotations), and tests.
//! - [`remote::RemoteSigner`]: a request over a unix socket to the signer
//!   process (`voxgate relay signer`, [`serve`]), which holds the issuing
//!   key and answers only well-formed device, node and relay certificate
//!   requests ([`proto::check`]). `voxgate relay run` always signs this way:
//!   the QUIC process never loads the issuing key.
//!
//! The signer runs beside the relay as its own unit (`voxgate-signer.service`,
//! its own account, a socket only the relay's account may use), or, started
//! without one, as a child the relay spawns before it drops its privileges
//! (OpenSSH's privilege separation is the model): connected by a socket
//! pair, non-dumpable, in its own sandbox (no network, the state directory
//! read-only), under `[signer] user` when started as root.

pub mod process;
pub mod proto;
pub mod remote;
pub mod serve;

use super::ca::{CaError, IssuingCa};
use crate::pki::issue;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::time::Duration;

/// The issuing CA that signs now, as the relay knows it (no key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuingRef {
    /// `SHA256:` fingerprint of its certificate.
    pub fingerprint: String,
    /// Its certificate.
    pub cert: CertificateDer<'static>,
}

/// A certificate signed for the relay.
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// DER.
    pub der: Vec<u8>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// The issuing CA that signed it.
    pub issuer: String,
}

/// Signs the relay's certificates with the fleet's issuing CA.
pub trait FleetSigner: Send + Sync + std::fmt::Debug {
    /// The issuing CA that signs now.
    fn issuing(&self) -> IssuingRef;

    /// Sign with issuing CA `fingerprint` from now on (a rotation); its
    /// certificate and key are in `state_dir`.
    fn switch_to(
        &self,
        state_dir: &Path,
        material: &crate::pki::sealed::Material,
        fingerprint: &str,
    ) -> Result<(), CaError>;

    /// A client certificate naming `device` for the key `spki` (DER
    /// SubjectPublicKeyInfo), valid `lifetime` from now.
    fn sign_device(
        &self,
        spki: &[u8],
        device: &str,
        lifetime: Duration,
    ) -> Result<SignedCert, CaError>;

    /// The relay's server certificate naming `server_name` for `spki`,
    /// then the CA certificates it is presented with (leaf first).
    fn sign_relay_cert(
        &self,
        spki: &[u8],
        server_name: &str,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError>;
}

/// The intermediates served with a certificate of `ca`: itself, unless
/// it is a root (a single-tier fleet's CA, in `ca.pem` already).
pub(super) fn intermediates(ca: &CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
    if super::authority::is_self_signed(ca) {
        Vec::new()
    } else {
        vec![ca.clone()]
    }
}

pub(super) fn lifetime(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 1_000))
}

impl FleetSigner for IssuingCa {
    fn issuing(&self) -> IssuingRef {
        let ca = self.current();
        IssuingRef {
            fingerprint: ca.fingerprint().to_string(),
            cert: ca.cert().clone(),
        }
    }

    fn switch_to(
        &self,
        state_dir: &Path,
        material: &crate::pki::sealed::Material,
        fingerprint: &str,
    ) -> Result<(), CaError> {
        self.set(super::authority::load_issuing_with(
            state_dir,
            material,
            fingerprint,
        )?);
        Ok(())
    }

    fn sign_device(
        &self,
        spki: &[u8],
        device: &str,
        lifetime_: Duration,
    ) -> Result<SignedCert, CaError> {
        let ca = self.current();
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki)?;
        let issued = issue::device_certificate(ca.issuer(), &key, device, lifetime(lifetime_))?;
        Ok(SignedCert {
            der: issued.cert.der().to_vec(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            issuer: ca.fingerprint().to_string(),
        })
    }

    fn sign_relay_cert(
        &self,
        spki: &[u8],
        server_name: &str,
        lifetime_: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let ca = self.current();
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki)?;
        let issued = issue::relay_certificate(ca.issuer(), &key, server_name, lifetime(lifetime_))?;
        let mut chain = vec![issued.cert.der().clone()];
        chain.extend(intermediates(ca.cert()));
        Ok(chain)
    }
}
