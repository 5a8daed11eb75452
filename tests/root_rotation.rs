//! Root rotation while devices stream: `voxgate relay ca rotate-root` makes
//! a new root, cross-signed by the old one, and a new issuing CA under it.
//! The running relay serves a chain that leads to either root and tells
//! every connected gateway of the new root; each gateway checks the cross
//! certificate against the root it pinned, adds the new root to the bundle
//! in its state directory (inside its sandbox) and renews onto the new
//! issuing CA, all over its live session. New devices enroll pinning
//! either root during the overlap. After the retire date the old root is
//! gone: from the relay's `ca.pem` and chain, and from every gateway's
//! bundle; a device that trusts only the old root can no longer verify the
//! relay, while a restarted gateway reconnects with its new bundle.

use std::time::{Duration, Instant};
use voxgate::pki::files::read_certs;
use voxgate::pki::name::fingerprint;
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::{Setup, audit, cert_serial, issuer_of, sealed_gateway_config};
use voxgate_testkit::lab::{Lab, metric, wait_for};
use voxgate_testkit::session::{Session, runtime};

const RETIRE_S: u64 = 20;

/// The fingerprints in a PEM bundle, in order.
fn bundle(path: &std::path::Path) -> Vec<String> {
    read_certs(path)
        .map(|c| c.iter().map(|c| fingerprint(c)).collect())
        .unwrap_or_default()
}

#[test]
fn the_fleet_moves_to_a_new_root_and_the_old_root_is_dropped() {
    let lab = Lab::new(
        "root-rotate",
        "mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = 86400",
    );
    let old_root = fingerprint(&read_certs(&lab.dir.join("relay/ca.pem")).unwrap()[0]);
    let mut relay = lab.start_relay();
    let speech = speech_fixture(&lab.dir, "The fleet moves to a new root.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gateways = Vec::new();
    for id in ["gw-a", "gw-b"] {
        let (cfg, m) = sealed_gateway_config(&lab, id, "voxcap");
        let gw = lab.start_gateway(&cfg, &env);
        gateways.push((id, gw, m, cfg));
    }
    for (_, gw, m, _) in &mut gateways {
        wait_for(Duration::from_secs(20), "streaming", || {
            gw.assert_running();
            metric(*m, "voxgate_frames_sent_total") >= 50.0
        });
        assert_eq!(metric(*m, "voxgate_relay_connects_total"), 1.0);
    }
    let unsent: Vec<f64> = gateways
        .iter()
        .map(|(_, _, m, _)| metric(*m, "voxgate_frames_unsent_total"))
        .collect();

    // Rotate the root (kept on the machine, as labs do).
    let t0 = Instant::now();
    let o = lab.relay_cmd(&[
        "ca",
        "rotate-root",
        "--keep-root",
        "--retire-after",
        &format!("{RETIRE_S}s"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    let new_root = out
        .lines()
        .find_map(|l| l.strip_prefix("new root CA fingerprint: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let new_issuing = out
        .lines()
        .find_map(|l| l.strip_prefix("issuing CA "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert_ne!(new_root, old_root);
    assert_eq!(
        bundle(&lab.dir.join("relay/ca.pem")),
        [new_root.clone(), old_root.clone()]
    );
    // A second rotation during the overlap is refused.
    let again = lab.relay_cmd(&["ca", "rotate-root", "--keep-root", "--retire-after", "1h"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("still trusted"), "{}", text(&again));

    // Every gateway takes the new root (cross certificate checked) and
    // renews onto the new issuing CA, over its live session.
    for (id, gw, _, cfg) in &mut gateways {
        let _ = cfg;
        let dir = lab.dir.join(&**id);
        wait_for(Duration::from_secs(10), "the new root and renewal", || {
            gw.assert_running();
            bundle(&dir.join("ca.pem")) == [new_root.clone(), old_root.clone()]
                && issuer_of(&lab, &cert_serial(&dir.join("device.pem"))).as_deref()
                    == Some(new_issuing.as_str())
        });
        println!(
            "{id} trusts the new root, on the new issuing CA, after {:?}",
            t0.elapsed()
        );
        assert!(gw.log_text().contains("cross certificate verified"), "{id}");
    }
    // The relay serves leaf, issuing CA, cross certificate, both roots.
    let chain = read_certs(&lab.dir.join("relay/relay.pem")).unwrap();
    let fps: Vec<String> = chain.iter().map(|c| fingerprint(c)).collect();
    assert_eq!(fps[1], new_issuing);
    assert!(
        fps.ends_with(&[new_root.clone(), old_root.clone()]),
        "{fps:?}"
    );
    assert_eq!(chain.len(), 5, "{fps:?}");
    // During the overlap a new box enrolls pinning either root.
    Setup::new(&lab, "gw-new-pin").fingerprint(&new_root).run();
    Setup::new(&lab, "gw-old-pin").fingerprint(&old_root).run();

    // After the retire date: one root everywhere.
    wait_for(
        Duration::from_secs(RETIRE_S + 10),
        "the old root dropped",
        || {
            bundle(&lab.dir.join("relay/ca.pem")) == [new_root.clone()]
                && gateways.iter().all(|(id, _, _, _)| {
                    bundle(&lab.dir.join(id).join("ca.pem")) == [new_root.clone()]
                })
        },
    );
    println!("old root dropped everywhere after {:?}", t0.elapsed());
    // The relay serves (and stores) leaf, issuing CA, new root.
    wait_for(
        Duration::from_secs(5),
        "the relay's chain without the old root",
        || bundle(&lab.dir.join("relay/relay.pem"))[1..] == [new_issuing.clone(), new_root.clone()],
    );
    // The gateways kept streaming through it all, on their first
    // connection, with no audio lost.
    for ((id, gw, m, _), before) in gateways.iter_mut().zip(unsent) {
        gw.assert_running();
        assert_eq!(
            metric(*m, "voxgate_relay_connects_total"),
            1.0,
            "{id} reconnected"
        );
        assert_eq!(
            metric(*m, "voxgate_frames_unsent_total"),
            before,
            "{id} dropped audio"
        );
        assert!(
            gw.log_text().contains("trusting only the new fleet root"),
            "{id}"
        );
    }
    // A device that trusts only the old root cannot verify the relay any
    // more (its own certificate is current: only the root is at fault).
    let rt = runtime();
    let (_, _, _, cfg_a) = &gateways[0];
    let gc = voxgate::config::GatewayConfig::load(cfg_a).unwrap();
    let loaded = voxgate::identity::backend::load("gw-a", &gc.identity).unwrap();
    let old_only: Vec<_> = vec![read_certs(&lab.dir.join("gw-old-pin/ca.pem")).unwrap()[0].clone()];
    assert_eq!(fingerprint(&old_only[0]), old_root);
    let stale = voxgate::transport::tls::client_config(&old_only, &*loaded.identity).unwrap();
    let e = rt
        .block_on(Session::open_with(&lab, stale, "gw-a"))
        .err()
        .expect("a device trusting only the retired root verified the relay");
    assert!(e.contains("certificate") || e.contains("issuer"), "{e}");
    // With the bundle it stored, a restarted gateway reconnects.
    let (_, gw, m, cfg) = &mut gateways[0];
    gw.stop();
    let mut again = lab.start_gateway(cfg, &env);
    wait_for(
        Duration::from_secs(15),
        "the restarted gateway on the new root",
        || {
            again.assert_running();
            metric(*m, "voxgate_relay_connected") == 1.0
        },
    );
    again.stop();
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "root_rotated" && e.3.contains(&new_root)),
        "{log:?}"
    );
    for (_, gw, _, _) in &mut gateways[1..] {
        gw.stop();
    }
    relay.stop();
}
