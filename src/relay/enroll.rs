//! Enrollment on the relay (ALPN `voxgate-enroll/1`): a device with no
//! certificate presents a one-time token and a CSR signed by its new key;
//! the relay checks the source's limits, redeems the token, verifies the
//! CSR, and returns a short-lived certificate naming the device.
//!
//! Every refusal is audited with its real reason; the device only learns
//! "refused", so a scanner cannot tell an unknown token from a used one.
//!
//! Registry writes (redeem + device + certificate + audit of one enrollment
//! in one savepoint, and the audit lines of refusals) go through
//! [`GroupCommit`] on the blocking pool: concurrent enrollments share one
//! journal sync, and no async worker ever waits for the disk.

use super::commit::GroupCommit;
use super::limiter::Limiter;
use super::registry::{Registry, now};
use crate::transport::control::{Enrolled, ErrorMsg, Message};
use crate::transport::framed::{self, FrameReader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SerialNumber};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use x509_parser::prelude::FromDer as _;

/// What enrollment needs: the registry, the CA, the limiter, the lifetime.
pub struct Enroller {
    /// The device registry.
    pub registry: Arc<Mutex<Registry>>,
    issuer: Issuer<'static, KeyPair>,
    writes: GroupCommit,
    limiter: Mutex<Limiter>,
    origin: Instant,
    /// Certificate lifetime.
    pub lifetime: Duration,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Enroller {
    /// Build from the CA certificate PEM and its key.
    pub fn new(
        registry: Arc<Mutex<Registry>>,
        ca_pem: &str,
        ca_key: KeyPair,
        lifetime: Duration,
    ) -> Result<Self, rcgen::Error> {
        Ok(Enroller {
            writes: GroupCommit::new(registry.clone()),
            registry,
            issuer: Issuer::from_ca_cert_pem(ca_pem, ca_key)?,
            limiter: Mutex::default(),
            origin: Instant::now(),
            lifetime,
        })
    }

    /// Append an audit line (group-committed, off the async workers).
    async fn audit(
        self: &Arc<Self>,
        event: &'static str,
        source: &str,
        device: &str,
        detail: &str,
    ) {
        let this = self.clone();
        let (source, device, detail) = (source.to_string(), device.to_string(), detail.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            this.writes
                .run(move |r| r.audit(event, &source, &device, &detail))
        })
        .await;
    }

    /// Serve one enrollment connection.
    pub async fn handle(self: Arc<Self>, conn: quinn::Connection) {
        let source = conn.remote_address().ip();
        let t = self.origin.elapsed();
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.attempt(source, t))
            .map_err(|_| ());
        if let Ok(Err(why)) = allowed {
            // Audited before the device learns of it (as every refusal).
            self.audit(
                "enroll_limited",
                &source.to_string(),
                "",
                &format!("{why:?}"),
            )
            .await;
            warn!(%source, reason = ?why, "enrollment attempt refused by rate limit");
            conn.close(4u32.into(), b"too many enrollment attempts; wait and retry");
            return;
        }
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            self.exchange(&conn, &source.to_string()),
        )
        .await;
        let failed = !matches!(result, Ok(Ok(())));
        if failed && let Ok(mut l) = self.limiter.lock() {
            l.failed(source, self.origin.elapsed());
        }
        if let Ok(Err(e)) | Err(e) = result.map_err(|_| "timed out".to_string()) {
            info!(%source, error = %e, "enrollment failed");
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        source: &str,
    ) -> Result<(), String> {
        let (mut send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(recv);
        let request = reader
            .next(|m| match m {
                Message::Enroll(e) => Ok((
                    zeroize::Zeroizing::new(e.token.to_string()),
                    e.device.to_string(),
                    e.csr.to_string(),
                )),
                _ => Err("expected an enroll message".to_string()),
            })
            .await
            .map_err(|e| e.to_string())??;
        let (token, device, csr) = request;
        let outcome = {
            let this = self.clone();
            let (device, source) = (device.clone(), source.to_string());
            tokio::task::spawn_blocking(move || this.issue(&token, &device, &csr, &source))
                .await
                .unwrap_or_else(|e| Err(format!("enrollment task failed: {e}")))
        };
        match outcome {
            Ok((der, not_after)) => {
                let cert = B64.encode(&der);
                framed::send(
                    &mut send,
                    &Message::Enrolled(Enrolled {
                        cert: &cert,
                        not_after,
                    }),
                )
                .await
                .map_err(|e| e.to_string())?;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                Ok(())
            }
            Err(why) => {
                self.audit("enroll_rejected", source, &device, &why).await;
                let _ = framed::send(
                    &mut send,
                    &Message::Error(ErrorMsg {
                        code: "refused",
                        message: "enrollment refused; ask the relay operator for a new token",
                    }),
                )
                .await;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                Err(why)
            }
        }
    }

    /// Check everything, then issue (blocking: the registry commit).
    /// Returns the certificate DER and expiry.
    fn issue(
        self: &Arc<Self>,
        token: &str,
        device: &str,
        csr_b64: &str,
        source: &str,
    ) -> Result<(Vec<u8>, i64), String> {
        if !crate::config::valid_device_id(device) {
            return Err("invalid device id".into());
        }
        let csr = check_csr(csr_b64)?;
        let this = self.clone();
        let token = zeroize::Zeroizing::new(token.to_string());
        let (dev, src) = (device.to_string(), source.to_string());
        // One savepoint: the token is spent only together with the device,
        // its certificate and the audit line.
        let (der, not_after, hex) = self
            .writes
            .run(move |tx| {
                tx.redeem(&token, &dev, now())?
                    .map_err(|why| Why(why.as_str().to_string()))?;
                let (der, not_after, hex) = this.sign(tx, &dev, &csr).map_err(Why)?;
                tx.audit("enrolled", &src, &dev, &hex)?;
                Ok::<_, Why>((der, not_after, hex))
            })
            .map_err(|w| w.0)?;
        info!(%device, %source, serial = %hex, "device enrolled");
        Ok((der, not_after))
    }

    /// Renew the certificate of `device`, authenticated by its current
    /// certificate on a live session: a new certificate for the CSR's key.
    /// Revoked devices are refused (their sessions are cut anyway).
    pub fn renew(
        &self,
        device: &str,
        csr_b64: &str,
        source: &str,
    ) -> Result<(Vec<u8>, i64), String> {
        let csr = check_csr(csr_b64);
        let registry = self
            .registry
            .lock()
            .map_err(|_| "registry lock".to_string())?;
        let refused = |why: String| {
            let _ = registry.audit("renew_rejected", source, device, &why);
            why
        };
        let csr = csr.map_err(refused)?;
        if registry.is_revoked(device).map_err(|e| e.to_string())? {
            return Err(refused("device is revoked".into()));
        }
        let (der, not_after, hex) = registry
            .atomically(|tx| {
                let (der, not_after, hex) = self.sign(tx, device, &csr).map_err(Why)?;
                tx.audit("renewed", source, device, &hex)?;
                Ok::<_, Why>((der, not_after, hex))
            })
            .map_err(|w| w.0)?;
        info!(%device, %source, serial = %hex, "device certificate renewed");
        Ok((der, not_after))
    }

    /// Issue a certificate naming `device` for the CSR's key, record it.
    fn sign(
        &self,
        registry: &Registry,
        device: &str,
        csr: &rcgen::CertificateSigningRequestParams,
    ) -> Result<(Vec<u8>, i64, String), String> {
        let mut p = CertificateParams::default();
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| "random".to_string())?;
        serial[0] = (serial[0] & 0x7f) | 0x01;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.distinguished_name.push(DnType::CommonName, device);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
        p.not_before = start;
        p.not_after = start + time::Duration::seconds(self.lifetime.as_secs() as i64 + 300);
        let cert = p
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| format!("signing failed: {e}"))?;
        let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        let not_after = p.not_after.unix_timestamp();
        registry
            .record_certificate(device, &hex, p.not_before.unix_timestamp(), not_after)
            .map_err(|e| e.to_string())?;
        Ok((cert.der().to_vec(), not_after, hex))
    }
}

/// Why an enrollment or renewal failed, inside a registry transaction.
struct Why(String);

impl From<super::registry::RegistryError> for Why {
    fn from(e: super::registry::RegistryError) -> Self {
        Why(e.to_string())
    }
}

/// Decode a CSR and verify its self-signature.
fn check_csr(csr_b64: &str) -> Result<rcgen::CertificateSigningRequestParams, String> {
    let csr_der = B64
        .decode(csr_b64)
        .map_err(|_| "CSR is not base64".to_string())?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
        .map_err(|_| "CSR does not parse".to_string())?;
    req.verify_signature()
        .map_err(|_| "CSR signature does not verify".to_string())?;
    rcgen::CertificateSigningRequestParams::from_der(&csr_der.clone().into())
        .map_err(|e| format!("CSR not usable: {e}"))
}
