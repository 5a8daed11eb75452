//! The TPM key backend against a real software TPM (swtpm, Debian packages
//! `swtpm swtpm-tools`): one swtpm per test on free loopback ports, with its
//! state under the target's tmp, killed on drop (`voxgate_testkit::swtpm`).

use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxgate::identity::tpm::{
    KeyBlob, RcKind, SealedBlob, Tpm, TpmError, TpmKey, TpmOptions, TpmSpec, TpmaObject,
};
use voxgate_testkit::swtpm::Swtpm;

/// Forwards simulator frames to swtpm, except that the first connection
/// goes silent at its command number `hang_at` (0-based): it drops its
/// swtpm connection (so swtpm serves the next one, with the objects loaded
/// so far still in memory) and never answers.
fn hanging_proxy(upstream: u16, hang_at: usize) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, down) in listener.incoming().enumerate() {
            let Ok(mut down) = down else { return };
            std::thread::spawn(move || {
                let mut up = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                for i in 0.. {
                    let mut head = [0u8; 4];
                    if down.read_exact(&mut head).is_err() {
                        return;
                    }
                    if u32::from_be_bytes(head) != 8 {
                        let _ = up.write_all(&head); // session end
                        return;
                    }
                    let mut loc_len = [0u8; 5];
                    down.read_exact(&mut loc_len).unwrap();
                    let len = u32::from_be_bytes(loc_len[1..].try_into().unwrap()) as usize;
                    let mut cmd = vec![0u8; len];
                    down.read_exact(&mut cmd).unwrap();
                    if n == 0 && i == hang_at {
                        drop(up);
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    up.write_all(&head).unwrap();
                    up.write_all(&loc_len).unwrap();
                    up.write_all(&cmd).unwrap();
                    let mut rlen = [0u8; 4];
                    up.read_exact(&mut rlen).unwrap();
                    let mut resp = vec![0u8; u32::from_be_bytes(rlen) as usize + 4];
                    up.read_exact(&mut resp).unwrap();
                    down.write_all(&rlen).unwrap();
                    down.write_all(&resp).unwrap();
                }
            });
        }
    });
    addr
}

fn verify(public: &[u8; 65], msg: &[u8], sig: &[u8]) {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &public[..])
        .verify(msg, sig)
        .expect("TPM signature verifies");
}

fn mean(total: Duration, n: u32) -> Duration {
    total / n
}

#[test]
fn sign_after_reopen_verifies_with_ring() {
    let sw = Swtpm::start("sign");
    let blob_path = sw.dir.join("device-key.tpm");
    {
        let tpm = sw.open();
        let t = Instant::now();
        let blob = tpm.create_device_key().unwrap();
        eprintln!("create_device_key: {:?}", t.elapsed());
        std::fs::write(&blob_path, blob.to_bytes()).unwrap();
        assert!(
            blob.to_bytes().len() < 300,
            "{} bytes",
            blob.to_bytes().len()
        );
        assert_eq!(tpm.get_random(48).unwrap().len(), 48);
    } // first connection closed
    let tpm = sw.open();
    let blob = KeyBlob::from_bytes(&std::fs::read(&blob_path).unwrap()).unwrap();
    let public = tpm.public_key(&blob).unwrap();
    assert_eq!(public, blob.public_key());
    let mut total = Duration::ZERO;
    for i in 0..50u32 {
        let msg = format!("message {i}").repeat(i as usize + 1);
        let t = Instant::now();
        let sig = tpm.sign(&blob, msg.as_bytes()).unwrap();
        total += t.elapsed();
        verify(&public, msg.as_bytes(), &sig);
    }
    eprintln!(
        "sign (CreatePrimary+Load+Sign+2 flushes): mean {:?}",
        mean(total, 50)
    );
}

#[test]
fn private_key_cannot_be_read_out() {
    let sw = Swtpm::start("export");
    let tpm = sw.open();
    let blob = tpm.create_device_key().unwrap();
    // The TPM's own view of the loaded object: generated inside the TPM
    // (sensitiveDataOrigin), never duplicable to another TPM or parent
    // (fixedTPM, fixedParent). Such a private key exists outside the TPM only
    // wrapped by its parent.
    let attrs = tpm.key_attributes(&blob).unwrap();
    for (bit, name) in [
        (TpmaObject::FIXED_TPM, "fixedTPM"),
        (TpmaObject::FIXED_PARENT, "fixedParent"),
        (TpmaObject::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (TpmaObject::SIGN_ENCRYPT, "sign"),
    ] {
        assert!(attrs.contains(bit), "{name} not set: {attrs:?}");
    }
    assert!(!attrs.contains(TpmaObject::DECRYPT) && !attrs.contains(TpmaObject::RESTRICTED));
    // TPM2_Duplicate, the only command that exports a private area, is refused.
    let e = tpm.attempt_duplicate(&blob).unwrap_err();
    eprintln!("TPM2_Duplicate refused: {e}");
    assert!(
        matches!(
            e.rc_kind(),
            Some(RcKind::PolicyRequired | RcKind::Attributes)
        ),
        "{e}"
    );
    // On disk: the private area is TPM2B_PRIVATE = integrity HMAC (SHA-256)
    // then the sensitive area encrypted under the storage primary's key.
    let private = blob.private_area();
    assert_eq!(&private[..2], &[0, 32], "integrity digest size");
    assert!(private.len() > 2 + 32 + 16);
    // Two keys from the same template differ (the TPM drew the secrets).
    let other = tpm.create_device_key().unwrap();
    assert_ne!(other.public_key(), blob.public_key());
    assert_ne!(other.private_area(), blob.private_area());
}

#[test]
fn blob_survives_swtpm_restart() {
    let sw = Swtpm::start("restart");
    let blob = sw.open().create_device_key().unwrap();
    let sealed = sw.open().seal(b"0123456789abcdef0123456789abcdef").unwrap();
    let sw = sw.restart();
    let tpm = sw.open();
    let sig = tpm.sign(&blob, b"after restart").unwrap();
    verify(&blob.public_key(), b"after restart", &sig);
    assert_eq!(
        &tpm.unseal(&sealed).unwrap()[..],
        b"0123456789abcdef0123456789abcdef"
    );
}

#[test]
fn blob_from_another_tpm_is_refused_clearly() {
    let a = Swtpm::start("foreign-a");
    let b = Swtpm::start("foreign-b");
    let blob = a.open().create_device_key().unwrap();
    let e = b.open().sign(&blob, b"x").unwrap_err();
    eprintln!("foreign blob: {e}");
    assert_eq!(e.rc_kind(), Some(RcKind::ForeignObject), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("TPM2_Load failed: TPM_RC_INTEGRITY"),
        "{msg}"
    );
    assert!(msg.contains("re-enroll the device"), "{msg}");
}

#[test]
fn seal_unseal_round_trip_and_foreign_unseal_fails() {
    let a = Swtpm::start("seal-a");
    let b = Swtpm::start("seal-b");
    let tpm = a.open();
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5A).collect();
    let t = Instant::now();
    let sealed = tpm.seal(&secret).unwrap();
    eprintln!("seal: {:?}", t.elapsed());
    let bytes = sealed.to_bytes();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == &secret[..]),
        "secret in the clear"
    );
    let sealed = SealedBlob::from_bytes(&bytes).unwrap();
    let t = Instant::now();
    let out = tpm.unseal(&sealed).unwrap();
    eprintln!("unseal: {:?}", t.elapsed());
    assert_eq!(&out[..], &secret[..]);
    // A key blob is not sealed data and the reverse.
    assert!(KeyBlob::from_bytes(&bytes).is_err());
    // Too much to seal.
    assert!(matches!(
        tpm.seal(&[0; 129]),
        Err(TpmError::SealTooLarge { .. })
    ));
    let e = b.open().unseal(&sealed).unwrap_err();
    eprintln!("foreign unseal: {e}");
    assert_eq!(e.rc_kind(), Some(RcKind::ForeignObject), "{e}");
}

#[test]
fn many_signatures_do_not_exhaust_object_memory() {
    let sw = Swtpm::start("many");
    let blob = sw.open().create_device_key().unwrap();
    for cache_primary in [false, true] {
        let options = TpmOptions {
            cache_primary,
            ..TpmOptions::default()
        };
        let tpm = Tpm::open_with(sw.tpm_spec(), options).unwrap();
        let t = Instant::now();
        for i in 0..200u32 {
            tpm.sign(&blob, &i.to_be_bytes())
                .unwrap_or_else(|e| panic!("sign {i}: {e}"));
        }
        eprintln!(
            "sign, cache_primary={cache_primary}: mean {:?} over 200",
            mean(t.elapsed(), 200)
        );
    }
    // Every primary was flushed, including the cached one on drop: swtpm
    // has room for its three objects (primary, key, one more) again.
    let tpm = sw.open();
    tpm.sign(&blob, b"still room").unwrap();
    let _sealed = tpm.seal(b"x").unwrap();
}

#[test]
fn unresponsive_tpm_fails_within_the_timeout() {
    let sw = Swtpm::start("hang");
    let blob = sw.open().create_device_key().unwrap();
    // Accepts the connection, reads nothing, answers nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(conns);
    });
    let timeout = Duration::from_secs(2);
    let options = TpmOptions {
        timeout,
        ..TpmOptions::default()
    };
    let tpm = Tpm::open_with(TpmSpec::Simulator(addr), options).unwrap();
    let t = Instant::now();
    let e = tpm.sign(&blob, b"hello").unwrap_err();
    let took = t.elapsed();
    eprintln!("hung TPM after {took:?}: {e}");
    assert!(matches!(e, TpmError::Timeout { .. }), "{e}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(e.to_string().contains("did not answer within 2s"), "{e}");
    // The next call reconnects and fails the same bounded way.
    let t = Instant::now();
    assert!(matches!(tpm.get_random(8), Err(TpmError::Timeout { .. })));
    assert!(t.elapsed() < timeout + Duration::from_secs(1));
    // Nobody listening: a clear error at once.
    drop(sw);
    let closed = SocketAddr::from(([127, 0, 0, 1], voxgate_testkit::lab::free_tcp()));
    let e = Tpm::open_with(TpmSpec::Simulator(closed), options).unwrap_err();
    assert!(e.to_string().contains("is swtpm running"), "{e}");
    let e = Tpm::open("device:/nonexistent/tpmrm0").unwrap_err();
    assert!(e.to_string().contains("no TPM device"), "{e}");
    assert!(matches!(Tpm::open("tpm0"), Err(TpmError::Spec { .. })));
}

#[test]
fn hang_mid_operation_is_bounded_and_leaks_nothing() {
    let sw = Swtpm::start("midhang");
    let blob = sw.open().create_device_key().unwrap();
    // CreatePrimary (0) and Load (1) answered, Sign (2) never.
    let proxy = hanging_proxy(sw.port, 2);
    let timeout = Duration::from_secs(1);
    let options = TpmOptions {
        timeout,
        ..TpmOptions::default()
    };
    let tpm = Tpm::open_with(TpmSpec::Simulator(proxy), options).unwrap();
    let t = Instant::now();
    let e = tpm.sign(&blob, b"x").unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(
            e,
            TpmError::Timeout {
                command: "TPM2_Sign",
                ..
            }
        ),
        "{e}"
    );
    // One time limit, not one per flush that could not be sent.
    assert!(took < timeout + Duration::from_millis(500), "{took:?}");
    // swtpm now holds the primary and the key the hung connection loaded
    // (two of its three object slots). The next call reconnects, flushes
    // them, and has the room it needs again, every time.
    for i in 0..5u32 {
        let sig = tpm
            .sign(&blob, &i.to_be_bytes())
            .unwrap_or_else(|e| panic!("{i}: {e}"));
        verify(&blob.public_key(), &i.to_be_bytes(), &sig);
    }
}

#[derive(Debug)]
struct TpmIdentity {
    device_id: String,
    key: Arc<rustls::sign::CertifiedKey>,
}

impl voxgate::transport::tls::DeviceIdentity for TpmIdentity {
    fn device_id(&self) -> &str {
        &self.device_id
    }
    fn resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        Arc::new(rustls::sign::SingleCertAndKey::from(self.key.clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_mutual_tls_with_a_tpm_held_client_key() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use voxgate::transport::tls;

    let sw = Swtpm::start("quic");
    let tpm = Arc::new(sw.open());
    let blob = tpm.create_device_key().unwrap();
    let key = TpmKey::new(tpm.clone(), blob);

    // Fleet CA and relay certificate (software keys).
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test fleet CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let relay_key = KeyPair::generate().unwrap();
    let relay_cert = CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&relay_key, &issuer)
        .unwrap();
    // The device certificate names the TPM-held public key.
    let mut dev_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    dev_params
        .distinguished_name
        .push(DnType::CommonName, "dev-tpm-1");
    let dev_cert = dev_params.signed_by(&key, &issuer).unwrap();
    // rcgen signs a CSR with the TPM key too.
    let csr = dev_params.serialize_request(&key).unwrap();
    let csr = rcgen::CertificateSigningRequestParams::from_der(csr.der()).unwrap();
    assert_eq!(
        rcgen::PublicKeyData::der_bytes(&csr.public_key),
        &key.public_key()[..]
    );

    let ca = vec![CertificateDer::from(ca_cert.der().to_vec())];
    // The relay's trust table knows this certificate and its TPM key.
    let trust = voxgate::relay::trust::TrustTable::new(Duration::from_secs(300));
    let facts = voxgate::pki::name::cert_facts(dev_cert.der()).unwrap();
    trust.accept(
        "dev-tpm-1",
        &facts.serial,
        facts.spki,
        voxgate::relay::registry::Replace::AtOnce,
        None,
    );
    let server = tls::server_config(
        &ca,
        vec![relay_cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(relay_key.serialize_der())),
        Arc::new(trust),
    )
    .unwrap();
    let identity = TpmIdentity {
        device_id: "dev-tpm-1".into(),
        key: Arc::new(key.certified_key(vec![dev_cert.der().clone()])),
    };
    assert!(identity.key.keys_match().is_ok());
    let client = tls::client_config(&ca, &identity).unwrap();

    let server_ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server_ep.local_addr().unwrap();
    let echo = tokio::spawn(async move {
        let conn = server_ep.accept().await.unwrap().await.unwrap();
        let peer = conn.peer_identity().unwrap();
        let chain = peer.downcast::<Vec<CertificateDer<'static>>>().unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let data = recv.read_to_end(1024).await.unwrap();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let _ = conn.closed().await;
        chain[0].to_vec()
    });

    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client);
    let t = Instant::now();
    let conn = ep
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("mutual TLS handshake");
    eprintln!("QUIC handshake with TPM signature: {:?}", t.elapsed());
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"voice over TPM-authenticated QUIC")
        .await
        .unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(1024).await.unwrap();
    assert_eq!(back, b"voice over TPM-authenticated QUIC");
    conn.close(0u32.into(), b"done");
    let seen = echo.await.unwrap();
    assert_eq!(
        seen,
        dev_cert.der().to_vec(),
        "relay saw the TPM-key certificate"
    );
    ep.wait_idle().await;
}
