//! TLS 1.3 configuration for both ends, with mutual authentication.
//!
//! The device's key sits behind [`DeviceIdentity`]: the TLS stack asks it for
//! a certificate resolver and never sees where the key lives. This release
//! ships [`DevFileIdentity`] (development certificates issued by
//! `voxgate relay dev-cert`); sealed and TPM backends plug in here.

use crate::pki::files::{FileError, read_certs, read_key};
use crate::pki::name::{CertFacts, cert_facts, common_name, fingerprint};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// ALPN of devices holding a certificate.
pub const ALPN: &[u8] = b"voxgate/1";

/// A TLS set-up problem.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A certificate or key file is not usable.
    #[error(transparent)]
    File(#[from] FileError),
    /// A certificate or key does not fit the device.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the TLS configuration.
    #[error("QUIC crypto: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// A device's credentials as the TLS layer sees them.
pub trait DeviceIdentity: Send + Sync + std::fmt::Debug {
    /// The device id its certificate names.
    fn device_id(&self) -> &str;
    /// The resolver rustls asks for the client certificate and signer.
    fn resolver(&self) -> Arc<dyn ResolvesClientCert>;
}

#[derive(Debug)]
struct FixedResolver(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Development identity: certificate and key in PEM files.
#[derive(Debug)]
pub struct DevFileIdentity {
    device_id: String,
    key: Arc<CertifiedKey>,
}

impl DevFileIdentity {
    /// Load the certificate chain and key for `device_id`.
    pub fn load(device_id: &str, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = read_certs(cert)?;
        let der = read_key(key)?;
        let signer =
            rustls::crypto::ring::sign::any_ecdsa_type(&der).map_err(|_| TlsError::Pem {
                path: key.into(),
                what: "is not an ECDSA P-256 PKCS#8 key".into(),
            })?;
        let named = common_name(&chain[0]).unwrap_or_default();
        if named != device_id {
            return Err(TlsError::Pem {
                path: cert.into(),
                what: format!(
                    "names device `{named}`, but the config's device_id is `{device_id}`"
                ),
            });
        }
        Ok(DevFileIdentity {
            device_id: device_id.into(),
            key: Arc::new(CertifiedKey::new(chain, signer)),
        })
    }
}

impl DevFileIdentity {
    /// An identity from a key and chain already in memory (`voxgate
    /// setup`'s round trip, before the identity is installed).
    pub fn from_key(device_id: &str, key: Arc<CertifiedKey>) -> Self {
        DevFileIdentity {
            device_id: device_id.into(),
            key,
        }
    }
}

impl DeviceIdentity for DevFileIdentity {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn resolver(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(FixedResolver(self.key.clone()))
    }
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn roots(ca: &[CertificateDer<'static>]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// QUIC transport settings shared by both ends: datagrams on, and
/// keep-alives so that a dead peer is noticed within [`IDLE_TIMEOUT`].
pub fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(base_transport())
}

fn base_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("small timeout"),
    ));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t.datagram_send_buffer_size(256 * 1024);
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(2u32.into());
    t
}

/// The relay's transport: the device's, without keep-alive PINGs. Devices
/// send their own every [`KEEP_ALIVE`] (or media), and the relay's ACKs of
/// them keep both idle timers fed; the relay's PINGs (two per second per
/// device, each one packet to encrypt and send) only cost it CPU. A dead
/// device is still noticed by the idle timeout.
///
/// Small windows: control frames are at most 2 KiB, so a stream may have
/// [`SERVER_STREAM_WINDOW`] unread and a connection
/// [`SERVER_CONNECTION_WINDOW`] (quinn's defaults, about 1.25 MB and more,
/// let one connection that is not yet authenticated pin megabytes); the
/// relay buffers at most [`SERVER_SEND_WINDOW`] for a device that does
/// not read; and at most [`SERVER_DATAGRAM_BUFFER`] of datagrams wait for
/// the session's media task. Datagrams are not flow-controlled, so media
/// is unaffected.
pub fn server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = base_transport();
    t.keep_alive_interval(None);
    t.stream_receive_window(quinn::VarInt::from_u32(SERVER_STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(SERVER_CONNECTION_WINDOW));
    t.send_window(u64::from(SERVER_SEND_WINDOW));
    t.datagram_receive_buffer_size(Some(SERVER_DATAGRAM_BUFFER));
    Arc::new(t)
}

/// Unread bytes one stream may hold at the relay: two whole control frames.
pub const SERVER_STREAM_WINDOW: u32 = 4 * 1024;
/// Unread bytes one connection may hold at the relay, over its streams.
pub const SERVER_CONNECTION_WINDOW: u32 = 8 * 1024;
/// Bytes the relay buffers towards one device's streams.
pub const SERVER_SEND_WINDOW: u32 = 64 * 1024;
/// Datagrams waiting for one session's media task (about 600 media
/// datagrams, seconds of audio).
pub const SERVER_DATAGRAM_BUFFER: usize = 64 * 1024;
/// Connection attempts the relay's endpoint holds before the accept loop
/// decides on them (each with its first packet), and the bytes of later
/// packets they may buffer, in all: a flood fills these and no more
/// (quinn's defaults are 65,536 and 100 MiB).
pub const SERVER_MAX_INCOMING: usize = 1024;
/// See [`SERVER_MAX_INCOMING`].
pub const SERVER_INCOMING_BYTES: u64 = 4 << 20;

/// Interval of QUIC PINGs on an otherwise idle connection.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A peer silent for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// The device's QUIC client configuration.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    identity: &dyn DeviceIdentity,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_with(super::relay_roots::RelayVerifier::new(ca)?, identity)
}

/// [`client_config`] with roots that a root rotation may change.
pub fn client_config_with(
    relay: Arc<super::relay_roots::RelayVerifier>,
    identity: &dyn DeviceIdentity,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(relay)
        .with_client_cert_resolver(identity.resolver());
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(q));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Why the relay refuses a client certificate that its CA signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The device is revoked.
    Revoked,
    /// A renewal superseded this certificate and the grace is over, or a
    /// re-enrollment replaced it, or the registry never recorded it.
    NotCurrent,
    /// The certificate's serial is the device's but its key is not the
    /// key the registry recorded (a certificate minted with a stolen
    /// issuing key).
    UnknownKey,
    /// No such device in the registry.
    UnknownDevice,
    /// Signed by an issuing CA that was rotated out and whose certificates
    /// are no longer accepted.
    RetiredIssuer,
}

impl Refusal {
    /// The audit log's and the close reason's wording.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Revoked => "device revoked",
            Refusal::NotCurrent => "certificate superseded or replaced",
            Refusal::UnknownKey => "key is not the device's registered key",
            Refusal::UnknownDevice => "device not in the registry",
            Refusal::RetiredIssuer => "certificate of a retired issuing CA",
        }
    }
}

/// The relay's registry as the TLS verifier asks it, after the CA's
/// signature and the validity dates check out: is this certificate, with
/// this key, one the device may use now?
pub trait ClientGate: Send + Sync + std::fmt::Debug {
    /// Admit or refuse a certificate by its facts, offered from `source`
    /// (when the verifier knows it).
    fn check(&self, cert: &CertFacts, source: Option<std::net::IpAddr>) -> Result<(), Refusal>;
}

/// Checks client certificates against the CAs that issue device
/// certificates (its anchors, which the relay replaces when its issuing CA
/// rotates), then asks the relay's [`ClientGate`]: a revoked device, a
/// superseded certificate or a key the registry does not know fails in the
/// handshake itself.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: std::sync::RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    gate: Arc<dyn ClientGate>,
    /// The address of the one handshake this verifier is for.
    source: Option<std::net::IpAddr>,
}

impl ClientVerifier {
    /// A verifier trusting device certificates issued by `anchors`.
    pub fn new(
        anchors: &[CertificateDer<'static>],
        gate: Arc<dyn ClientGate>,
    ) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ClientVerifier {
            inner: std::sync::RwLock::new(Self::webpki(anchors)?),
            gate,
            source: None,
        }))
    }

    /// This verifier, as it is now, for one handshake from `source`: the
    /// gate learns where a refused certificate came from.
    pub fn for_source(&self, source: std::net::IpAddr) -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier {
            inner: std::sync::RwLock::new(self.current()),
            gate: self.gate.clone(),
            source: Some(source),
        })
    }

    fn webpki(
        anchors: &[CertificateDer<'static>],
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        // Optional at the TLS layer so that enrollment (which has no
        // certificate yet) can connect; `voxgate/1` sessions without a
        // certificate are refused right after the handshake.
        Ok(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots(anchors)?), provider())
                .allow_unauthenticated()
                .build()?,
        )
    }

    /// Trust device certificates issued by `anchors` from the next
    /// handshake on.
    pub fn set_anchors(&self, anchors: &[CertificateDer<'static>]) -> Result<(), TlsError> {
        let v = Self::webpki(anchors)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    fn current(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: they would change with the anchors, and devices have
        // one certificate to offer anyway.
        &[]
    }

    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .current()
            .verify_client_cert(end_entity, intermediates, now)?;
        let facts = cert_facts(end_entity).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        self.gate
            .check(&facts, self.source)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked))?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The certificate and signer the relay presents, swapped when the relay
/// renews its certificate: a handshake takes the current pair (one read
/// lock and an `Arc` clone), and connections already up keep the one they
/// were made with.
#[derive(Debug)]
pub struct ServerCertHolder(std::sync::RwLock<Arc<CertifiedKey>>);

impl ServerCertHolder {
    /// Hold `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(ServerCertHolder(std::sync::RwLock::new(key)))
    }

    /// The current certificate chain and signer.
    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Present `key` from the next handshake on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl rustls::server::ResolvesServerCert for ServerCertHolder {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// A certificate chain and key as the relay presents them: the key must
/// be the one the leaf certifies.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    let signer = provider().key_provider.load_private_key(key.clone_key())?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match()?;
    Ok(certified)
}

/// Check the relay's `chain` (leaf first) the way a device checks it: with
/// the fleet `ca` as the only root (what `[relay] ca` gives a gateway, and
/// what a device enrolling by fingerprint pins) and `server_name`, now.
pub fn verify_relay_chain(
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    server_name: &str,
) -> Result<(), TlsError> {
    use rustls::client::danger::ServerCertVerifier as _;
    let (leaf, rest) = chain
        .split_first()
        .ok_or(TlsError::Rustls(rustls::Error::NoCertificatesPresented))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|_| rustls::Error::General(format!("`{server_name}` is not a DNS name")))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    verifier.verify_server_cert(leaf, rest, &name, &[], rustls::pki_types::UnixTime::now())?;
    Ok(())
}

/// The relay's QUIC server configuration: client certificates required,
/// checked against the fleet CA and the relay's [`ClientGate`].
pub fn server_config(
    ca: &[CertificateDer<'static>],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    gate: Arc<dyn ClientGate>,
) -> Result<quinn::ServerConfig, TlsError> {
    let holder = ServerCertHolder::new(Arc::new(certified_key(chain, &key)?));
    server_config_with(holder, ClientVerifier::new(ca, gate)?)
}

/// An HTTPS server's TLS (the operator API): TLS 1.3, HTTP/1.1, no client
/// certificate, presenting what `certificate` resolves.
pub fn https_server_config(
    certificate: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// [`server_config`] presenting whatever `certificate` resolves: the relay
/// passes its [`ServerCertHolder`], which certificate renewal swaps.
pub fn server_config_with(
    certificate: Arc<dyn rustls::server::ResolvesServerCert>,
    verifier: Arc<ClientVerifier>,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate);
    tls.alpn_protocols = vec![ALPN.to_vec(), ALPN_ENROLL.to_vec()];
    // No resumption: a resumed session skips the client certificate check,
    // which would let a revoked device back in. Every handshake is full.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let q = QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(q));
    cfg.transport_config(server_transport());
    cfg.max_incoming(SERVER_MAX_INCOMING)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(SERVER_INCOMING_BYTES);
    Ok(cfg)
}

/// ALPN of enrollment: server-authenticated only; the device proves itself
/// with a one-time token.
pub const ALPN_ENROLL: &[u8] = b"voxgate-enroll/1";

/// Verifies the relay during enrollment against a pinned CA fingerprint
/// (`SHA256:<hex>`) instead of a CA file the device does not have yet: the
/// relay sends its chain with the CA; the CA whose fingerprint matches
/// becomes the only root, and the leaf must chain to it and name the relay.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    found: std::sync::Mutex<Option<CertificateDer<'static>>>,
}

impl PinnedCaVerifier {
    /// Pin `fingerprint` (`SHA256:` + 64 hex digits, case-insensitive).
    pub fn new(fingerprint: &str) -> Result<Arc<Self>, TlsError> {
        let f = fingerprint.trim().to_ascii_lowercase();
        let hex = f.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TlsError::Pem {
                path: PathBuf::from("--ca-fingerprint"),
                what: "must be SHA256: followed by 64 hex digits (as `voxgate relay init` prints)"
                    .into(),
            });
        }
        Ok(Arc::new(PinnedCaVerifier {
            fingerprint: format!("SHA256:{hex}"),
            found: Default::default(),
        }))
    }

    /// The CA certificate that matched, once a handshake verified.
    pub fn ca(&self) -> Option<CertificateDer<'static>> {
        self.found.lock().ok().and_then(|f| f.clone())
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c).eq_ignore_ascii_case(&self.fingerprint))
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let ok = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Ok(mut f) = self.found.lock() {
            *f = Some(ca.clone().into_owned());
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that only checks the relay: ALPN `voxgate/1`,
/// no client certificate (the relay completes the handshake, then closes
/// a session that names no device, before anything is read or recorded),
/// the relay verified by `verifier` (the device's roots in `voxgate check`,
/// a pinned fingerprint in `voxgate setup`). Nothing of the device's
/// identity is sent, so a live session of the same device is not replaced.
pub fn probe_client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<quinn::ClientConfig, TlsError> {
    anonymous_client_config(verifier, ALPN)
}

/// The device's client configuration for enrollment.
pub fn enroll_client_config(
    verifier: Arc<PinnedCaVerifier>,
) -> Result<quinn::ClientConfig, TlsError> {
    anonymous_client_config(verifier, ALPN_ENROLL)
}

/// TLS 1.3 with ALPN `alpn`, the relay checked by `verifier`, and no
/// client certificate.
fn anonymous_client_config(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let q = QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(q));
    cfg.transport_config(transport());
    Ok(cfg)
}
