//! Enrollment on the relay (ALPN `voxgate-enroll/1`): a device with no
//! certificate presents a one-time token and a CSR signed by its new key;
//! the relay checks the source's limits, redeems the token, verifies the
//! CSR, and returns a short-lived certificate naming the device.
//!
//! Refusals are audited with their real reason, rate-limited
//! ([`super::audit_limit`]: a flood of refused attempts cannot grow the
//! audit table without bound); the device only learns "refused", so a
//! scanner cannot tell an unknown token from a used one. Sources are
//! counted per IPv4 address or IPv6 prefix; renewals per device per day
//! ([`super::quota`]).
//!
//! Registry writes (redeem + device + certificate + audit of one enrollment
//! in one savepoint, and the audit lines of refusals) go through
//! [`GroupCommit`] on the blocking pool: concurrent enrollments share one
//! journal sync, and no async worker ever waits for the disk.

use super::audit_limit::{AuditBudget, with_left_out};
use super::commit::GroupCommit;
use super::limiter::Limiter;
use super::quota::{DailyQuota, day_of};
use super::registry::{CertRecord, Registry, RegistryError, Repeat, Replace, TokenRejection, now};
use super::signer::FleetSigner;
use super::trust::TrustTable;
use crate::pki::issue::IssueError;
use crate::pki::name::valid_device_id;
use crate::proto::control::{Enrolled, ErrorMsg, Message};
use crate::transport::framed::{self, FrameReader, StreamError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::PublicKeyData as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::{info, warn};
use x509_parser::prelude::FromDer as _;

/// Why an enrollment or a renewal was refused: the audit log's wording (the
/// device learns only that it was refused).
#[derive(Debug, Error)]
pub enum EnrollError {
    /// The device id is not usable in a certificate.
    #[error("invalid device id")]
    BadDeviceId,
    /// The CSR is not usable.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The token was not accepted.
    #[error("{}", .0.as_str())]
    Token(TokenRejection),
    /// A renewal for a revoked device.
    #[error("device is revoked")]
    Revoked,
    /// A renewal from a certificate that is no longer the device's current
    /// one (a copy of the key and certificate, after the real box renewed).
    #[error(
        "renewal from certificate {0}, which is not the device's current certificate (a copy of an old key?)"
    )]
    NotCurrent(String),
    /// The certificate could not be issued.
    #[error(transparent)]
    Issue(#[from] IssueError),
    /// The signer failed or refused.
    #[error(transparent)]
    Ca(#[from] super::ca::CaError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The blocking task that writes the registry failed.
    #[error("enrollment task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The device renewed as often as it may today.
    #[error("{0} renewals today already: the per-device daily quota")]
    Quota(u64),
}

/// Why a CSR was not accepted.
#[derive(Debug, Error)]
pub enum CsrError {
    /// Not base64.
    #[error("CSR is not base64")]
    Base64,
    /// Not a PKCS#10 request.
    #[error("CSR does not parse")]
    Parse,
    /// Its self-signature is wrong.
    #[error("CSR signature does not verify")]
    Signature,
    /// rcgen cannot use its key.
    #[error("CSR not usable: {0}")]
    Unusable(rcgen::Error),
}

/// Why an enrollment connection ended without a certificate (logged).
#[derive(Debug, Error)]
enum ExchangeError {
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("expected an enroll message")]
    Unexpected,
    #[error("refused: {0}")]
    Refused(EnrollError),
    #[error("timed out")]
    TimedOut,
}

/// Limits of enrollment and renewal.
#[derive(Debug, Clone, Copy)]
pub struct EnrollLimits {
    /// Bits of an IPv6 address that name one source.
    pub ipv6_prefix: u8,
    /// Renewals one device may make per day.
    pub renewals_per_day: u64,
}

/// What enrollment needs: the registry, the CA, the limiter, the lifetime.
pub struct Enroller {
    /// The device registry.
    pub registry: Arc<Mutex<Registry>>,
    ca: Arc<dyn FleetSigner>,
    writes: Arc<GroupCommit>,
    limiter: Mutex<Limiter>,
    limits: EnrollLimits,
    renewals: Mutex<DailyQuota>,
    refusals: Mutex<AuditBudget>,
    origin: Instant,
    /// Certificate lifetime.
    pub lifetime: Duration,
    /// The verifier's table, updated right after each commit.
    pub trust: Arc<TrustTable>,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Enroller {
    /// Issue with the fleet CA `ca`.
    pub fn new(
        registry: Arc<Mutex<Registry>>,
        trust: Arc<TrustTable>,
        ca: Arc<dyn FleetSigner>,
        lifetime: Duration,
        limits: EnrollLimits,
    ) -> Self {
        Enroller {
            trust,
            writes: Arc::new(GroupCommit::new(registry.clone())),
            registry,
            ca,
            limiter: Mutex::default(),
            limits,
            renewals: Mutex::new(DailyQuota::new(limits.renewals_per_day)),
            // The cap in all only: the device id of a refused attempt is
            // the sender's choice, and its source is limited already.
            refusals: Mutex::new(AuditBudget::global(super::audit_limit::PER_MINUTE)),
            origin: Instant::now(),
            lifetime,
        }
    }

    /// The group commit the relay's other registry writes share.
    pub fn commits(&self) -> Arc<GroupCommit> {
        self.writes.clone()
    }

    /// The detail of a refusal's audit line, or `None` when the rate limit
    /// (a cap a minute) leaves it out.
    fn refusal_line(&self, key: &str, detail: &str) -> Option<String> {
        let mut b = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        b.admit(key, now()).map(|n| with_left_out(detail, n))
    }

    /// Append the audit line of a refusal, rate-limited (group-committed,
    /// off the async workers).
    /// A webhook event (`security.*`) is written with the line, under the
    /// same rate limit.
    async fn audit(
        self: &Arc<Self>,
        event: &'static str,
        source: &str,
        device: &str,
        detail: &str,
        hook: Option<super::webhooks::Event>,
    ) {
        let key = if device.is_empty() { source } else { device };
        let Some(detail) = self.refusal_line(key, detail) else {
            return;
        };
        let this = self.clone();
        let (source, device) = (source.to_string(), device.to_string());
        let _ = tokio::task::spawn_blocking(move || {
            this.writes.run(move |r| {
                r.audit(event, &source, &device, &detail)?;
                if let Some(hook) = hook {
                    super::webhooks::emit(r, &hook)?;
                }
                Ok::<_, RegistryError>(())
            })
        })
        .await;
    }

    /// Serve one enrollment connection.
    pub async fn handle(self: Arc<Self>, conn: quinn::Connection) {
        let ip = conn.remote_address().ip();
        // Counted per IPv4 address or IPv6 prefix (one host's /64).
        let source = super::admission::Source::of(ip, self.limits.ipv6_prefix).0;
        let t = self.origin.elapsed();
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.attempt(source, t))
            .map_err(|_| ());
        if let Ok(Err(why)) = allowed {
            // Audited before the device learns of it (as every refusal).
            let src = source.to_string();
            self.audit(
                "enroll_limited",
                &src,
                "",
                &format!("{why:?}"),
                Some(super::webhooks::Event::auth_failures(&src, "enrollment", 1)),
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
        if let Ok(Err(e)) | Err(e) = result.map_err(|_| ExchangeError::TimedOut) {
            info!(%source, error = %e, "enrollment failed");
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        source: &str,
    ) -> Result<(), ExchangeError> {
        let (mut send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv);
        let request = reader
            .next(|m| match m {
                Message::Enroll(e) => Ok((
                    zeroize::Zeroizing::new(e.token.to_string()),
                    e.device.to_string(),
                    e.csr.to_string(),
                )),
                _ => Err(ExchangeError::Unexpected),
            })
            .await??;
        let (token, device, csr) = request;
        let outcome = {
            let this = self.clone();
            let (device, source) = (device.clone(), source.to_string());
            tokio::task::spawn_blocking(move || this.issue(&token, &device, &csr, &source))
                .await
                .unwrap_or_else(|e| Err(e.into()))
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
                .await?;
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                Ok(())
            }
            Err(why) => {
                let misuse = match &why {
                    EnrollError::Token(
                        t @ (TokenRejection::Used
                        | TokenRejection::Revoked
                        | TokenRejection::WrongDevice
                        | TokenRejection::AlreadyEnrolled
                        | TokenRejection::OtherKey),
                    ) => Some(super::webhooks::Event::token_misuse(
                        source,
                        &device,
                        t.as_str(),
                    )),
                    _ => None,
                };
                self.audit("enroll_rejected", source, &device, &why.to_string(), misuse)
                    .await;
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
                Err(ExchangeError::Refused(why))
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
    ) -> Result<(Vec<u8>, i64), EnrollError> {
        if !valid_device_id(device) {
            return Err(EnrollError::BadDeviceId);
        }
        let (csr, spki) = check_csr_key(csr_b64)?;
        let this = self.clone();
        let token = zeroize::Zeroizing::new(token.to_string());
        let (dev, src) = (device.to_string(), source.to_string());
        // One savepoint: the token is spent only together with the device,
        // its certificate and the audit line.
        let issued = self.writes.run(move |tx| {
            let redeemed = match tx.redeem(&token, &dev, now())? {
                Ok(r) => r,
                // A spent token again: the same device and key get the
                // same certificate (a setup that stopped after the relay
                // issued it), another key is misuse.
                Err(TokenRejection::Used) => match tx.repeat(&token, &dev, &spki, now())? {
                    Repeat::Same { der, not_after } => {
                        tx.audit("enroll_repeated", &src, &dev, "the same key asked again with its token; the same certificate sent again")?;
                        return Ok(Issue::Repeated(der, not_after));
                    }
                    Repeat::OtherKey => return Err(EnrollError::Token(TokenRejection::OtherKey)),
                    Repeat::No => return Err(EnrollError::Token(TokenRejection::Used)),
                },
                Err(why) => return Err(EnrollError::Token(why)),
            };
            let was_revoked = tx.is_revoked(&dev)?;
            let replace = if redeemed.reenroll {
                Replace::AtOnce
            } else {
                Replace::Grace
            };
            let issued = this.sign(tx, &dev, &csr, replace)?;
            tx.record_issued(&token, &issued.serial, &issued.der)?;
            let (event, detail) = match (redeemed.reenroll, was_revoked) {
                (false, _) => ("enrolled", issued.serial.clone()),
                (true, false) => (
                    "reenrolled",
                    format!("{}; earlier certificates replaced", issued.serial),
                ),
                (true, true) => (
                    "reenrolled",
                    format!(
                        "{}; earlier certificates replaced; revocation undone",
                        issued.serial
                    ),
                ),
            };
            tx.audit(event, &src, &dev, &detail)?;
            // The event commits with the enrollment, or not at all.
            super::webhooks::emit(
                tx,
                &super::webhooks::Event::device_enrolled(&dev, &issued.serial, redeemed.reenroll),
            )?;
            Ok::<_, EnrollError>(Issue::New(issued, replace))
        });
        let (issued, replace) = match issued? {
            Issue::New(issued, replace) => (issued, replace),
            Issue::Repeated(der, not_after) => {
                info!(%device, %source, "enrollment repeated: the same certificate sent again");
                return Ok((der, not_after));
            }
        };
        self.trust.accept(
            device,
            &issued.serial,
            issued.spki,
            replace,
            Some(&issued.issuer),
        );
        info!(%device, %source, serial = %issued.serial, "device enrolled");
        Ok((issued.der, issued.not_after))
    }

    /// [`Enroller::renew`] on the blocking pool: the registry's lock and
    /// its commit never run on an async worker.
    pub async fn renew_off_workers(
        self: &Arc<Self>,
        device: &str,
        from: &str,
        csr_b64: &str,
        source: &str,
    ) -> Result<Signed, EnrollError> {
        let this = self.clone();
        let (device, from, csr, source) = (
            device.to_string(),
            from.to_string(),
            csr_b64.to_string(),
            source.to_string(),
        );
        tokio::task::spawn_blocking(move || this.renew(&device, &from, &csr, &source)).await?
    }

    /// Renew the certificate of `device`, authenticated by its current
    /// certificate (serial `from`) on a live session: a new certificate for
    /// the CSR's key. Revoked devices are refused (their sessions are cut
    /// anyway), and so is a renewal from any certificate but the device's
    /// current one: a copied key cannot renew once the real box has, and
    /// one past the device's daily quota. Blocking (the registry).
    pub fn renew(
        &self,
        device: &str,
        from: &str,
        csr_b64: &str,
        source: &str,
    ) -> Result<Signed, EnrollError> {
        let csr = check_csr(csr_b64);
        // A panic while holding the lock leaves the registry usable: SQLite
        // rolled back whatever was not committed.
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let refused = |why: EnrollError| {
            if let Some(detail) = self.refusal_line(device, &why.to_string()) {
                let _ = registry.audit("renew_rejected", source, device, &detail);
            }
            why
        };
        let csr = csr.map_err(|e| refused(e.into()))?;
        let day = day_of(now());
        let used = {
            let q = self.renewals.lock().unwrap_or_else(|p| p.into_inner());
            (q.used(device, day), q.per_day())
        };
        if used.0 >= used.1 {
            return Err(refused(EnrollError::Quota(used.0)));
        }
        if registry.is_revoked(device)? {
            return Err(refused(EnrollError::Revoked));
        }
        if registry.current_serial(device)?.as_deref() != Some(from) {
            return Err(refused(EnrollError::NotCurrent(from.to_string())));
        }
        let issued = registry.atomically(|tx| {
            let issued = self.sign(tx, device, &csr, Replace::Grace)?;
            tx.audit(
                "renewed",
                source,
                device,
                &format!("{} superseded by {}", from, issued.serial),
            )?;
            Ok::<_, EnrollError>(issued)
        })?;
        self.renewals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(device, day, 1);
        self.trust.accept(
            device,
            &issued.serial,
            issued.spki,
            Replace::Grace,
            Some(&issued.issuer),
        );
        drop(registry);
        info!(%device, %source, serial = %issued.serial, "device certificate renewed");
        Ok(issued)
    }

    /// Issue a certificate naming `device` for the CSR's key, record it
    /// as the device's current one.
    fn sign(
        &self,
        registry: &Registry,
        device: &str,
        csr: &rcgen::CertificateSigningRequestParams,
        replace: Replace,
    ) -> Result<Signed, EnrollError> {
        let issued = self.ca.sign_device(
            &csr.public_key.subject_public_key_info(),
            device,
            self.lifetime,
        )?;
        let facts =
            crate::pki::name::cert_facts(&issued.der).ok_or(EnrollError::Csr(CsrError::Parse))?;
        registry.record_certificate(
            device,
            CertRecord {
                serial: &facts.serial,
                spki: &facts.spki,
                not_before: issued.not_before,
                not_after: issued.not_after,
                issuer: Some(&issued.issuer),
            },
            replace,
        )?;
        Ok(Signed {
            der: issued.der,
            not_after: issued.not_after,
            serial: facts.serial,
            spki: facts.spki,
            issuer: issued.issuer,
        })
    }
}

/// What an enrollment's transaction produced.
enum Issue {
    /// A new certificate, and what became of the device's earlier ones.
    New(Signed, Replace),
    /// The certificate a spent token paid for, again (DER, expiry).
    Repeated(Vec<u8>, i64),
}

/// A certificate the relay issued and recorded.
#[derive(Debug, Clone)]
pub struct Signed {
    /// DER.
    pub der: Vec<u8>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 of its key.
    pub spki: [u8; 32],
    /// Its issuing CA's fingerprint.
    pub issuer: String,
}

/// Decode a CSR and verify its self-signature.
fn check_csr(csr_b64: &str) -> Result<rcgen::CertificateSigningRequestParams, CsrError> {
    check_csr_key(csr_b64).map(|(params, _)| params)
}

/// [`check_csr`], and the SHA-256 of the CSR's SPKI (the key a
/// certificate for it will carry: [`crate::pki::name::CertFacts::spki`]).
fn check_csr_key(
    csr_b64: &str,
) -> Result<(rcgen::CertificateSigningRequestParams, [u8; 32]), CsrError> {
    let csr_der = B64.decode(csr_b64).map_err(|_| CsrError::Base64)?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
        .map_err(|_| CsrError::Parse)?;
    req.verify_signature().map_err(|_| CsrError::Signature)?;
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        req.certification_request_info.subject_pki.raw,
    );
    let mut spki = [0u8; 32];
    spki.copy_from_slice(d.as_ref());
    let params = rcgen::CertificateSigningRequestParams::from_der(&csr_der.clone().into())
        .map_err(CsrError::Unusable)?;
    Ok((params, spki))
}

#[cfg(test)]
#[path = "enroll/tests.rs"]
mod tests;
