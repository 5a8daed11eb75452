//! The relay's side of the signer process: each signing is one request over
//! the unix socket, answered within [`TIMEOUT`]. The relay knows the issuing
//! CA (fingerprint and certificate, for anchors and chains) but not its key.

use super::proto::{self, Answer, Kind, Request};
use super::{FleetSigner, IssuingRef, SignedCert, intermediates};
use crate::relay::ca::CaError;
use rustls::pki_types::CertificateDer;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Longest wait for the signer's answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Signs through the signer process.
#[derive(Debug)]
pub struct RemoteSigner {
    stream: Mutex<UnixStream>,
    issuing: RwLock<IssuingRef>,
}

impl RemoteSigner {
    /// Sign over `stream` with issuing CA `issuing`.
    pub fn new(stream: UnixStream, issuing: IssuingRef) -> std::io::Result<RemoteSigner> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(RemoteSigner {
            stream: Mutex::new(stream),
            issuing: RwLock::new(issuing),
        })
    }

    fn request(
        &self,
        kind: Kind,
        name: &str,
        spki: &[u8],
        lifetime: Duration,
    ) -> Result<(Vec<u8>, IssuingRef), CaError> {
        let issuing = self.issuing();
        let mut out = Vec::with_capacity(512);
        proto::encode_request(
            &Request {
                kind,
                issuer: &issuing.fingerprint,
                name,
                spki,
                lifetime_s: lifetime.as_secs(),
            },
            &mut out,
        )
        .map_err(|e| CaError::Signer(e.to_string()))?;
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let io = |e: std::io::Error| {
            CaError::Signer(format!(
                "the signer process does not answer ({e}); enrollments and renewals fail until the relay is restarted (`systemctl restart voxgate-relay`); its log says why the signer stopped"
            ))
        };
        s.write_all(&out).map_err(io)?;
        let mut prefix = [0u8; 2];
        s.read_exact(&mut prefix).map_err(io)?;
        let n = proto::body_len(prefix).map_err(|e| CaError::Signer(e.to_string()))?;
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).map_err(io)?;
        drop(s);
        match proto::decode_answer(&body).map_err(|e| CaError::Signer(e.to_string()))? {
            Answer::Signed(der) => Ok((der, issuing)),
            Answer::Refused(why) => Err(CaError::Signer(format!("the signer refused: {why}"))),
        }
    }
}

impl FleetSigner for RemoteSigner {
    fn issuing(&self) -> IssuingRef {
        self.issuing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn switch_to(
        &self,
        state_dir: &Path,
        _material: &crate::pki::sealed::Material,
        fingerprint: &str,
    ) -> Result<(), CaError> {
        let (cert_path, _) = crate::relay::authority::issuing_paths(state_dir, fingerprint);
        let cert = crate::pki::files::read_certs(&cert_path)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Missing(state_dir.to_path_buf()))?;
        *self.issuing.write().unwrap_or_else(|p| p.into_inner()) = IssuingRef {
            fingerprint: fingerprint.to_string(),
            cert,
        };
        Ok(())
    }

    fn sign_device(
        &self,
        spki: &[u8],
        device: &str,
        lifetime: Duration,
    ) -> Result<SignedCert, CaError> {
        let (der, issuing) = self.request(Kind::Device, device, spki, lifetime)?;
        let (_, x) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| CaError::Signer("the signer's certificate does not parse".into()))?;
        if x.public_key().raw != spki {
            return Err(CaError::Signer("the signer certified another key".into()));
        }
        Ok(SignedCert {
            not_before: x.validity().not_before.timestamp(),
            not_after: x.validity().not_after.timestamp(),
            der,
            issuer: issuing.fingerprint,
        })
    }

    fn sign_relay_cert(
        &self,
        spki: &[u8],
        server_name: &str,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let (der, issuing) = self.request(Kind::Relay, server_name, spki, lifetime)?;
        let mut chain = vec![CertificateDer::from(der)];
        chain.extend(intermediates(&issuing.cert));
        Ok(chain)
    }
}
