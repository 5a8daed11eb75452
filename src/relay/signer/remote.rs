//! The relay's side of the signer process: each signing is one request over
//! the unix socket, answered within [`TIMEOUT`]. The relay knows the issuing
//! CA (fingerprint and certificate, for anchors and chains) but not its key.

use super::proto::{self, Answer, Kind, Request};
use super::{FleetSigner, IssuingRef, SignedCert, intermediates};
use crate::relay::ca::CaError;
use rustls::pki_types::CertificateDer;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Longest wait for the signer's answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Signs through the signer process.
#[derive(Debug)]
pub struct RemoteSigner {
    /// The connection; `None` after it broke (a unit's socket is
    /// connected again at the next request).
    stream: Mutex<Option<UnixStream>>,
    /// The signer unit's socket; `None` for a child's socket pair.
    socket: Option<PathBuf>,
    issuing: RwLock<IssuingRef>,
}

fn timeouts(stream: UnixStream) -> std::io::Result<UnixStream> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

impl RemoteSigner {
    /// Sign over `stream` (a child's socket pair) with issuing CA `issuing`.
    pub fn new(stream: UnixStream, issuing: IssuingRef) -> std::io::Result<RemoteSigner> {
        Ok(RemoteSigner {
            stream: Mutex::new(Some(timeouts(stream)?)),
            socket: None,
            issuing: RwLock::new(issuing),
        })
    }

    /// Sign through the signer unit listening on `socket`; connected now,
    /// and again whenever the connection breaks (the unit restarted).
    pub fn connect(socket: PathBuf, issuing: IssuingRef) -> std::io::Result<RemoteSigner> {
        let stream = timeouts(UnixStream::connect(&socket)?)?;
        Ok(RemoteSigner {
            stream: Mutex::new(Some(stream)),
            socket: Some(socket),
            issuing: RwLock::new(issuing),
        })
    }

    /// One request and its answer's body, on the connection as it is.
    fn exchange(&self, slot: &mut Option<UnixStream>, out: &[u8]) -> std::io::Result<Vec<u8>> {
        if slot.is_none()
            && let Some(path) = &self.socket
        {
            *slot = Some(timeouts(UnixStream::connect(path)?)?);
        }
        let s = slot
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the signer process has stopped"))?;
        let result = (|| {
            s.write_all(out)?;
            let mut prefix = [0u8; 2];
            s.read_exact(&mut prefix)?;
            let n = proto::body_len(prefix).map_err(std::io::Error::other)?;
            let mut body = vec![0u8; n];
            s.read_exact(&mut body)?;
            Ok(body)
        })();
        if result.is_err() {
            // A half-read answer leaves the stream out of step: never reuse it.
            *slot = None;
        }
        result
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
        let mut slot = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = self.exchange(&mut slot, &out);
        if body.is_err() && self.socket.is_some() {
            // Once more on a new connection: the unit may have restarted
            // (after a rotation to a key it is given at start).
            body = self.exchange(&mut slot, &out);
        }
        drop(slot);
        let body = body.map_err(|e| match &self.socket {
            None => CaError::Signer(format!(
                "the signer process does not answer ({e}); enrollments and renewals fail until the relay is restarted (`systemctl restart voxgate-relay`); its log says why the signer stopped"
            )),
            Some(path) => CaError::Signer(format!(
                "the signer at {} does not answer ({e}); enrollments and renewals fail until it does: `systemctl status voxgate-signer`",
                path.display()
            )),
        })?;
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
