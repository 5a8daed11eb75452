use super::*;
use crate::pki::roots::{Announcement, adopt};
use crate::proto::control::{self, Message, TrustRoot};
use crate::relay::authority::RootKeyIn;
use crate::relay::ca::init;
use crate::relay::registry::Registry;
use crate::relay::signer::FleetSigner as _;
use rcgen::PublicKeyData as _;

const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

struct Fleet {
    dir: PathBuf,
    binding: MachineBinding,
    registry: Registry,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fleet(name: &str, out: RootKeyOut<'_>) -> Fleet {
    let dir = std::env::temp_dir().join(format!("vg-roots-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let binding = MachineBinding {
        machine_id: dir.join("machine-id"),
        serial: None,
    };
    init(&dir, "relay.test", &binding, YEAR, out).unwrap();
    let registry = crate::relay::audit_key::open_registry(&dir, &binding).unwrap();
    Fleet {
        dir,
        binding,
        registry,
    }
}

fn fps(certs: &[CertificateDer<'_>]) -> Vec<String> {
    certs.iter().map(|c| fingerprint(c)).collect()
}

#[test]
fn a_rotated_root_is_announced_cross_signed_then_stands_alone() {
    let f = fleet("rotate", RootKeyOut::Keep);
    let old = authority::roots(&f.dir).unwrap();
    let before = fleet_roots(&f.dir, &f.registry, now()).unwrap();
    assert_eq!(before.live, old);
    assert!(before.notice.is_none() && before.crosses.is_empty());

    let retire = now() + 3_600;
    let r = rotate_root(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::Machine,
        RootKeyOut::Keep,
        retire,
    )
    .unwrap();
    assert_eq!(r.key_out, None);
    // `ca.pem`: the new root first, the old one after it.
    let bundle = authority::roots(&f.dir).unwrap();
    assert_eq!(fps(&bundle), [r.root.clone(), fps(&old)[0].clone()]);
    let during = fleet_roots(&f.dir, &f.registry, now()).unwrap();
    assert_eq!(during.live, bundle);
    assert_eq!(during.crosses.len(), 1);
    assert_eq!(during.next_change, Some(retire));
    let notice = during.notice.clone().unwrap();
    assert!(!notice.only && !notice.cross.is_empty());

    // The chain the relay serves holds for a device of either root.
    let signer = authority::signer(&f.dir, &f.binding).unwrap();
    assert_eq!(signer.current().fingerprint(), r.issuing);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut chain = signer
        .sign_relay_cert(&key.subject_public_key_info(), "relay.test", YEAR)
        .unwrap();
    chain.extend(during.tail());
    for root in &during.live {
        crate::transport::tls::verify_relay_chain(std::slice::from_ref(root), &chain, "relay.test")
            .unwrap();
    }

    // A device of the old root takes the announcement, as sent on the wire
    // (it fits one control frame).
    let msg = Message::TrustRoot(TrustRoot {
        root: &notice.root,
        cross: &notice.cross,
        only: notice.only,
    });
    let mut buf = [0u8; control::PREFIX + control::MAX_MESSAGE];
    let n = control::encode(&msg, &mut buf).unwrap();
    let (back, _) = control::decode_frame(&buf[..n]).unwrap().unwrap();
    let Message::TrustRoot(t) = back else {
        panic!("{back:?}")
    };
    let (root, cross) = (B64.decode(t.root).unwrap(), B64.decode(t.cross).unwrap());
    let device = adopt(
        &old,
        Announcement {
            root: &root,
            cross: &cross,
            only: t.only,
        },
        now(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(device, bundle);

    // One rotation at a time.
    let e = rotate_root(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::Machine,
        RootKeyOut::Keep,
        now() + 60,
    )
    .unwrap_err();
    assert!(matches!(e, CaError::RootOverlap(_)), "{e}");

    // After the retire date: the new root alone, and devices are told so.
    let after = fleet_roots(&f.dir, &f.registry, retire + 1).unwrap();
    assert_eq!(fps(&after.live), vec![r.root.clone()]);
    assert!(after.crosses.is_empty() && after.next_change.is_none());
    let last = after.notice.unwrap();
    assert!(last.only && last.cross.is_empty());
    assert!(sync_ca_pem(&f.dir, &after.live).unwrap());
    assert!(!sync_ca_pem(&f.dir, &after.live).unwrap());
    assert_eq!(
        fps(&authority::roots(&f.dir).unwrap()),
        vec![r.root.clone()]
    );
    // The client anchors of that moment: the new root and issuing CA only.
    let anchors = authority::client_anchors(&f.dir, &f.registry, retire + 1).unwrap();
    assert_eq!(fps(&anchors), [r.root.clone(), r.issuing.clone()]);
    let log = f.registry.audit_events().unwrap();
    assert!(
        log.iter()
            .any(|e| e.0 == "root_rotated" && e.3.contains(&r.root))
    );
}

#[test]
fn an_exported_root_rotates_from_its_file_and_the_old_key_stops_signing() {
    let dir_pass = crate::pki::passphrase::Passphrase::new(zeroize::Zeroizing::new(
        b"correct horse battery staple".to_vec(),
    ))
    .unwrap();
    let old_file = std::env::temp_dir().join(format!("vg-roots-old-{}.key", std::process::id()));
    let new_file = std::env::temp_dir().join(format!("vg-roots-new-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&old_file);
    let _ = std::fs::remove_file(&new_file);
    let f = fleet("export", RootKeyOut::Export(&old_file, &dir_pass));
    assert!(!f.dir.join(ROOT_KEY_SEALED).exists());
    // No key: refused.
    let e = rotate_root(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::Machine,
        RootKeyOut::Keep,
        now() + 60,
    )
    .unwrap_err();
    assert!(matches!(e, CaError::RootKeyAway(_)), "{e}");
    let r = rotate_root(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::File(&old_file, &dir_pass),
        RootKeyOut::Export(&new_file, &dir_pass),
        now() + 60,
    )
    .unwrap();
    assert_eq!(r.key_out.as_deref(), Some(new_file.as_path()));
    assert!(
        !f.dir.join(ROOT_KEY_SEALED).exists(),
        "a root key left on the relay"
    );
    // The old root's key makes no issuing CA any more; the new one does.
    let e = authority::rotate_issuing(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::File(&old_file, &dir_pass),
        now() + 60,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not the key of the current root"),
        "{e}"
    );
    authority::rotate_issuing(
        &f.dir,
        &f.binding,
        &f.registry,
        RootKeyIn::File(&new_file, &dir_pass),
        now() + 60,
    )
    .unwrap();
    std::fs::remove_file(&old_file).unwrap();
    std::fs::remove_file(&new_file).unwrap();
}
