//! The device's verifier of the relay: WebPKI against the fleet roots the
//! device holds, swapped when a root rotation adds a root or ends its
//! overlap ([`crate::pki::roots`]). A handshake takes the roots of the
//! moment; connections already up are not touched.

use super::tls::{TlsError, provider, roots};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, RwLock};

/// Verifies the relay against the roots the device holds now.
#[derive(Debug)]
pub struct RelayVerifier {
    inner: RwLock<(Vec<CertificateDer<'static>>, Arc<WebPkiServerVerifier>)>,
}

impl RelayVerifier {
    /// Trust relays whose chain leads to one of `ca`.
    pub fn new(ca: &[CertificateDer<'static>]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(RelayVerifier {
            inner: RwLock::new((ca.to_vec(), Self::webpki(ca)?)),
        }))
    }

    fn webpki(ca: &[CertificateDer<'static>]) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))
    }

    /// The roots trusted now.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Trust `ca` from the next handshake on.
    pub fn set_roots(&self, ca: &[CertificateDer<'static>]) -> Result<(), TlsError> {
        let v = Self::webpki(ca)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = (ca.to_vec(), v);
        Ok(())
    }

    fn current(&self) -> Arc<WebPkiServerVerifier> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }
}

impl ServerCertVerifier for RelayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
