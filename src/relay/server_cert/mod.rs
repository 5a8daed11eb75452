//! The relay's own TLS certificate, and its renewal.
//!
//! `relay init` issues it from the fleet CA (`[ca] relay_cert_days`, one
//! year by default). The running relay presents it through a
//! [`ServerCertHolder`]: every handshake takes the current certificate and
//! key, and connections already up keep theirs, so a swap drops nothing.
//!
//! At two thirds of the certificate's lifetime the relay renews it
//! ([`ServerCert::renew`]): a fresh P-256 key, a certificate for the same
//! server name with a new random serial, signed through
//! [`FleetSigner`] (the signer process, which holds the issuing key). The
//! chain is checked as a device checks it (the fleet CA as the only root,
//! the server name) before anything is written, so a renewed certificate
//! is one every device already accepts. Then, in the state directory:
//! `relay.pem.new`, the new key sealed to `relay.key.sealed` (written
//! beside it and renamed over it), `relay.pem.new` renamed over
//! `relay.pem`; and the holder is swapped. A stop between the two renames
//! leaves the new key with `relay.pem.new`, which [`ServerCert::load`]
//! moves into place on the next start.
//!
//! A fresh key rather than the same one: the relay hands its certificate
//! to anyone who connects, so with a reused key a key stolen once would be
//! good for every later certificate; with a fresh key it is good until the
//! certificate it belonged to expires. The sealing inputs (`[ca]
//! machine_id`, serial) are read once before the privilege drop and kept
//! in memory, as the device's renewal does; the state directory is in the
//! relay's Landlock write rules, and rename is on its seccomp allow-list.
//!
//! [`ServerCert::maintain`] runs once a second: it renews when due (and at
//! once at start for a certificate past two thirds, or expired: a relay
//! that was down for months comes back by itself), retries a failed
//! renewal with a doubling backoff (5 s to 10 min) and an error each time,
//! sets `voxgate_relay_cert_expiry_seconds`, and warns once a day while
//! fewer than 14 days are left (for a certificate shorter than 42 days,
//! whose renewal point falls inside those 14 days, from the renewal point
//! on: a healthy relay never warns).

use super::ca::{self, CaError};
use super::ca_key::{HeldKey, KeyStore};
use super::registry::Registry;
use super::signer::FleetSigner;
use crate::pki::files::{self, FileError, pem, write_file};
use crate::pki::issue::BACKDATE;
use crate::pki::name::hex;
use crate::pki::sealed::{self, BindingError, MachineBinding, SealError};
use crate::telemetry::metrics::Gauge;
use crate::transport::tls::{self, ServerCertHolder, TlsError};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tracing::{error, info, warn};

/// How often [`ServerCert::maintain`] looks at the clock.
pub const TICK: Duration = Duration::from_secs(1);
/// First retry after a failed renewal; doubled each time up to [`MAX_BACKOFF_S`].
pub const MIN_BACKOFF_S: i64 = 5;
/// Longest wait between renewal attempts.
pub const MAX_BACKOFF_S: i64 = 600;
/// The expiry warning starts this long before notAfter (at the latest).
pub const WARN_BEFORE_S: i64 = 14 * 86_400;
/// One warning per this period.
const WARN_EVERY_S: i64 = 86_400;

/// Why the relay certificate could not be loaded or renewed.
#[derive(Debug, Error)]
pub enum ServerCertError {
    /// The CA refused, or a CA file is missing.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A certificate file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The sealing inputs could not be read.
    #[error("relay TLS key: {0}")]
    Binding(#[from] BindingError),
    /// The new key could not be sealed.
    #[error("cannot seal the new relay TLS key: {0}")]
    Seal(#[source] SealError),
    /// A new key could not be made.
    #[error("cannot make the new relay TLS key: {0}")]
    Key(#[source] rcgen::Error),
    /// The chain does not hold as a device checks it, or rustls refuses it.
    #[error("relay certificate: {0}")]
    Tls(#[from] TlsError),
    /// A certificate does not parse.
    #[error("{0}: the relay certificate does not parse")]
    Unreadable(PathBuf),
    /// `relay.pem` is not for `relay.key.sealed`.
    #[error(
        "{cert} does not certify the key in {key} (and no renewed certificate for it waits in relay.pem.new)"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The sealed key file.
        key: PathBuf,
    },
    /// The signer answered with a certificate for another key.
    #[error("the CA returned a certificate for another key; not using it")]
    OtherKey,
    /// A file could not be moved into place.
    #[error("cannot move {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The file moved.
        from: PathBuf,
        /// Where to.
        to: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking renewal task failed.
    #[error("renewal task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What the relay serves now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// When it was issued (notBefore without the clock-skew backdate),
    /// Unix seconds.
    pub issued: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl Served {
    fn of(der: &[u8], path: &Path) -> Result<Self, ServerCertError> {
        let (_, x) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| ServerCertError::Unreadable(path.to_path_buf()))?;
        let not_before = x.validity().not_before.timestamp();
        let not_after = x.validity().not_after.timestamp();
        Ok(Served {
            serial: hex(x.tbs_certificate.raw_serial()),
            issued: issued_at(not_before, not_after),
            not_after,
        })
    }

    /// When it is due for renewal: two thirds into its lifetime.
    pub fn due(&self) -> i64 {
        self.issued + (self.not_after - self.issued).max(0) * 2 / 3
    }

    /// From when on the daily expiry warning is logged: 14 days before
    /// notAfter, or the renewal point if that is later.
    pub fn warn_from(&self) -> i64 {
        (self.not_after - WARN_BEFORE_S).max(self.due())
    }
}

/// When a certificate valid from `not_before` was issued: every relay
/// certificate is backdated by [`BACKDATE`] for clock skew, which is not
/// part of its lifetime (it is most of a 30-second test certificate's).
pub fn issued_at(not_before: i64, not_after: i64) -> i64 {
    (not_before + BACKDATE.whole_seconds()).min(not_after)
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The relay's certificate: what it serves, and how it renews it.
pub struct ServerCert {
    state_dir: PathBuf,
    server_name: String,
    lifetime: Duration,
    signer: Arc<dyn FleetSigner>,
    material: sealed::Material,
    /// Where renewed keys are made (where the current one is).
    store: KeyStore,
    roots: Mutex<Roots>,
    /// One change of the served chain at a time (a renewal, new roots).
    changing: Mutex<()>,
    holder: Arc<ServerCertHolder>,
    served: Mutex<Served>,
    registry: Option<Arc<Mutex<Registry>>>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("state_dir", &self.state_dir)
            .field("server_name", &self.server_name)
            .field("lifetime", &self.lifetime)
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

/// Where a renewal runs: the state directory, the names, the signer.
#[derive(Debug)]
pub struct Settings<'a> {
    /// The relay's state directory (`relay.pem`, `relay.key.sealed`, `ca.pem`).
    pub state_dir: &'a Path,
    /// What the sealed key is bound to.
    pub binding: &'a MachineBinding,
    /// The relay's key, unsealed or in its TPM ([`ca::load_relay_key`]).
    pub key: HeldKey,
    /// The DNS name the certificate names.
    pub server_name: &'a str,
    /// Lifetime of renewed certificates.
    pub lifetime: Duration,
    /// The CA that signs them.
    pub signer: Arc<dyn FleetSigner>,
    /// The registry for the audit trail (`relay_cert_renewed`).
    pub registry: Option<Arc<Mutex<Registry>>>,
}

/// The fleet roots the relay's chain leads to.
#[derive(Debug, Clone)]
struct Roots {
    /// Each root a device may have pinned: the chain must hold for every
    /// one of them alone.
    anchors: Vec<CertificateDer<'static>>,
    /// What follows the relay's own certificates in the chain it serves
    /// (cross certificates, then the roots).
    tail: Vec<CertificateDer<'static>>,
}

/// The relay's own part of a served chain: its certificate, and the CA
/// that signed it unless that is a root.
fn own_part(chain: &[CertificateDer<'static>]) -> Vec<CertificateDer<'static>> {
    let mut own: Vec<_> = chain.iter().take(1).cloned().collect();
    if let (Some(leaf), Some(ca)) = (chain.first(), chain.get(1)) {
        let signed_by = match (
            x509_parser::parse_x509_certificate(leaf),
            x509_parser::parse_x509_certificate(ca),
        ) {
            (Ok((_, l)), Ok((_, c))) => {
                l.issuer().as_raw() == c.subject().as_raw()
                    && c.subject().as_raw() != c.issuer().as_raw()
            }
            _ => false,
        };
        if signed_by {
            own.push(ca.clone());
        }
    }
    own
}

/// Check `chain` as each device checks it: against each root alone.
fn verify_for_every_root(
    anchors: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    server_name: &str,
) -> Result<(), TlsError> {
    for a in anchors {
        tls::verify_relay_chain(std::slice::from_ref(a), chain, server_name)?;
    }
    Ok(())
}

/// What a renewal did.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// The certificate served before.
    pub previous: Served,
    /// The certificate served now.
    pub served: Served,
}

impl ServerCert {
    /// Load the certificate that goes with the relay's key (blocking;
    /// before the privilege drop). A renewal that stopped between
    /// replacing the key and moving the certificate is finished.
    pub fn load(s: Settings<'_>) -> Result<Arc<Self>, ServerCertError> {
        let dir = s.state_dir;
        let material = s.binding.material()?;
        let key = s.key;
        let ca = files::read_certs(&dir.join(ca::CA_CERT))?;
        let cert_path = dir.join(ca::RELAY_CERT);
        let pending = dir.join(ca::RELAY_CERT_PENDING);
        let chain = files::read_certs(&cert_path)?;
        let store = KeyStore::of_relay(dir)?;
        let certified = match key.certified(chain) {
            Ok(certified) => {
                // A renewal that stopped before the key was replaced: its
                // certificate is for a key that was never stored.
                let _ = std::fs::remove_file(&pending);
                let _ = std::fs::remove_file(tmp_path(&dir.join(ca::RELAY_KEY_SEALED)));
                certified
            }
            Err(_) => {
                let certified = files::read_certs(&pending)
                    .ok()
                    .and_then(|c| key.certified(c).ok())
                    .ok_or_else(|| ServerCertError::Mismatch {
                        cert: cert_path.clone(),
                        key: dir.join(ca::RELAY_KEY_SEALED),
                    })?;
                rename(&pending, &cert_path)?;
                sync_dir(dir);
                warn!(cert = %cert_path.display(), "finished a relay certificate renewal interrupted by a stop");
                certified
            }
        };
        let served = Served::of(&certified.cert[0], &cert_path)?;
        if crate::pki::name::common_name(&certified.cert[0]).as_deref() != Some(s.server_name) {
            warn!(cert = %cert_path.display(), server_name = s.server_name,
                  "the relay certificate does not name the configured server_name; its renewal will");
        }
        Ok(Arc::new(ServerCert {
            store,
            state_dir: dir.to_path_buf(),
            server_name: s.server_name.to_string(),
            lifetime: s.lifetime,
            signer: s.signer,
            material,
            roots: Mutex::new(Roots {
                tail: ca.clone(),
                anchors: ca,
            }),
            changing: Mutex::new(()),
            holder: ServerCertHolder::new(Arc::new(certified)),
            served: Mutex::new(served),
            registry: s.registry,
        }))
    }

    /// The resolver the TLS server asks for the certificate.
    pub fn holder(&self) -> Arc<ServerCertHolder> {
        self.holder.clone()
    }

    /// The fleet roots the chain leads to (`ca.pem` at load).
    pub fn ca(&self) -> Vec<CertificateDer<'static>> {
        self.lock_roots().anchors.clone()
    }

    fn lock_roots(&self) -> std::sync::MutexGuard<'_, Roots> {
        self.roots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serve the relay's certificate with `tail` after it (a root
    /// rotation's cross certificate and roots); later renewals are checked
    /// against each of `anchors`, as a device pinning it would check them.
    /// The key and the relay's own certificates do not change; `relay.pem`
    /// is rewritten to the chain served (blocking).
    pub fn set_roots(
        &self,
        anchors: Vec<CertificateDer<'static>>,
        tail: Vec<CertificateDer<'static>>,
    ) -> Result<(), ServerCertError> {
        let _one = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.holder.get();
        let mut chain = own_part(&current.cert);
        chain.extend(tail.iter().cloned());
        // The certificate served now may predate the new root (its
        // renewal from the new issuing CA follows): it must hold for one
        // root; a renewal makes it hold for each.
        let mut last = Ok(());
        for a in &anchors {
            last = tls::verify_relay_chain(std::slice::from_ref(a), &chain, &self.server_name);
            if last.is_ok() {
                break;
            }
        }
        last?;
        if current.cert == chain {
            *self.lock_roots() = Roots { anchors, tail };
            return Ok(());
        }
        let cert_path = self.state_dir.join(ca::RELAY_CERT);
        let text: String = chain.iter().map(|c| pem(c, "CERTIFICATE")).collect();
        let tmp = tmp_path(&cert_path);
        write_file(&tmp, text.as_bytes(), 0o644)?;
        rename(&tmp, &cert_path)?;
        self.holder.set(Arc::new(rustls::sign::CertifiedKey::new(
            chain,
            current.key.clone(),
        )));
        *self.lock_roots() = Roots { anchors, tail };
        Ok(())
    }

    /// What the relay serves now.
    pub fn served(&self) -> Served {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Issue, store and serve a new certificate with a fresh key (blocking:
    /// key generation, sealing, file IO).
    pub fn renew(&self) -> Result<Renewed, ServerCertError> {
        let _one = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        // A key kept as a systemd credential is made by root only: the
        // certificate is renewed for the same key (systemd gave it to the
        // unit), and no key file changes.
        let (key, key_file, ext) = match self.store {
            KeyStore::Creds => (
                super::ca_key::load_relay(&self.state_dir, &self.material)?,
                Vec::new(),
                "cred",
            ),
            _ => self
                .store
                .new_key(super::ca_key::Sealing::Held(&self.material))?,
        };
        let spki = key.spki();
        let signed = self
            .signer
            .sign_relay_cert(&spki, &self.server_name, self.lifetime)?;
        let leaf = signed.first().cloned().ok_or(ServerCertError::OtherKey)?;
        let cert_path = self.state_dir.join(ca::RELAY_CERT);
        {
            let (_, x) = x509_parser::parse_x509_certificate(&leaf)
                .map_err(|_| ServerCertError::Unreadable(cert_path.clone()))?;
            if x.public_key().raw != spki.as_slice() {
                return Err(ServerCertError::OtherKey);
            }
        }
        let roots = self.lock_roots().clone();
        let mut chain = signed.clone();
        chain.extend(roots.tail.iter().cloned());
        // What every device does with it: refuse anything that would not
        // chain to the root it pinned under the server name.
        verify_for_every_root(&roots.anchors, &chain, &self.server_name)?;
        let text: String = chain.iter().map(|c| pem(c, "CERTIFICATE")).collect();
        let certified = key.certified(chain)?;
        let served = Served::of(&leaf, &cert_path)?;

        // 1. The certificate beside the old one.
        let pending = self.state_dir.join(ca::RELAY_CERT_PENDING);
        write_file(&pending, text.as_bytes(), 0o644)?;
        // 2. The key (sealed, or the TPM's blob), replaced by rename.
        if ext != "cred" {
            let key_path = super::ca_key::relay_key_path(&self.state_dir, ext);
            let key_tmp = tmp_path(&key_path);
            let _ = std::fs::remove_file(&key_tmp);
            write_file(&key_tmp, &key_file, 0o600)?;
            rename(&key_tmp, &key_path)?;
        }
        // 3. The certificate into place.
        rename(&pending, &cert_path)?;
        sync_dir(&self.state_dir);

        self.holder.set(Arc::new(certified));
        let previous = std::mem::replace(
            &mut *self.served.lock().unwrap_or_else(|p| p.into_inner()),
            served.clone(),
        );
        if let Some(Ok(r)) = self.registry.as_ref().map(|r| r.lock()) {
            let _ = r.audit("relay_cert_renewed", "", &self.server_name, &served.serial);
        }
        Ok(Renewed { previous, served })
    }

    /// Keep the certificate current until the task is dropped: see
    /// [`ServerCert::step`], once every [`TICK`].
    pub async fn maintain(self: Arc<Self>, expiry: Arc<Gauge>) {
        self.maintain_from(Upkeep::default(), expiry).await
    }

    /// [`ServerCert::maintain`], going on from the steps taken so far.
    pub async fn maintain_from(self: Arc<Self>, mut state: Upkeep, expiry: Arc<Gauge>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.step(&mut state, &expiry).await;
        }
    }

    /// Renew if due (unless a retry is pending), set the expiry metric,
    /// and warn if the daily warning is due.
    pub async fn step(self: &Arc<Self>, st: &mut Upkeep, expiry: &Gauge) {
        let t = now();
        if t >= self.served().due() && t >= st.retry_at {
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.renew())
                .await
                .map_err(ServerCertError::Task)
                .and_then(|r| r);
            match result {
                Ok(r) => {
                    info!(serial = %r.served.serial, previous = %r.previous.serial,
                          expires_in_s = r.served.not_after - now(),
                          due_in_s = r.served.due() - now(),
                          "relay certificate renewed");
                    st.backoff = 0;
                    st.retry_at = 0;
                }
                Err(e) => {
                    let wait = st.backoff.clamp(MIN_BACKOFF_S, MAX_BACKOFF_S);
                    let served = self.served();
                    error!(error = %e, retry_in_s = wait, expires_in_s = served.not_after - t,
                           "relay certificate renewal failed");
                    st.retry_at = t + wait;
                    st.backoff = (wait * 2).min(MAX_BACKOFF_S);
                }
            }
        }
        let served = self.served();
        let t = now();
        let left = served.not_after - t;
        expiry.set(left as f64);
        if t >= served.warn_from() && st.last_warned.is_none_or(|w| t - w >= WARN_EVERY_S) {
            if left > 0 {
                warn!(serial = %served.serial, expires_in_s = left,
                      "the relay certificate expires in {}; devices cannot connect once it has",
                      human(left));
            } else {
                warn!(serial = %served.serial, expired_s_ago = -left,
                      "the relay certificate has expired; devices cannot connect");
            }
            st.last_warned = Some(t);
        }
    }
}

/// The maintenance task's memory between steps.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// No renewal attempt before this (Unix seconds).
    retry_at: i64,
    /// The next wait after a failure (seconds; 0: none yet).
    backoff: i64,
    /// When the expiry warning was last logged.
    last_warned: Option<i64>,
}

/// `d days`, `h h`, `m min` or `s s`.
fn human(s: i64) -> String {
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 7_200 => format!("{} h", s / 3_600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// `<path>.tmp`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// rename(2), atomic within the state directory.
fn rename(from: &Path, to: &Path) -> Result<(), ServerCertError> {
    std::fs::rename(from, to).map_err(|source| ServerCertError::Rename {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        source,
    })
}

/// Make the renames in `dir` durable (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests;
