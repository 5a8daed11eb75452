//! Issuing-CA rotation while devices stream: `voxgate relay ca
//! rotate-issuing` with the root key from its encrypted file; the running
//! relay takes the new issuing CA, renews its own certificate from it and
//! asks every connected device to renew; each gateway renews onto the new
//! chain over its live session (no reconnect, no audio lost); after the
//! retire date a certificate of the old issuing CA (a device that did not
//! renew) is cut and refused.

use std::time::{Duration, Instant};
use voxgate_testkit::audio_env::{AlsaFileDevices, speech_fixture};
use voxgate_testkit::cmd::both as text;
use voxgate_testkit::enroll::{
    audit, cert_serial, issuer_of, sealed_gateway_config, secret_file, signing_issuer,
};
use voxgate_testkit::lab::{Lab, metric, wait_for};
use voxgate_testkit::session::{Session, runtime};

const RETIRE_S: u64 = 12;

#[test]
fn every_device_moves_to_a_new_issuing_ca_and_the_old_chain_is_refused() {
    let lab = Lab::new(
        "ca-rotate",
        "mode = \"none\"\n[enrollment]\ncertificate_lifetime_s = 86400",
    );
    // The root key leaves the machine, as on a production relay.
    let pass = secret_file(&lab.dir, "root.pass", "correct horse battery staple");
    let root_file = lab.dir.join("root.key.enc");
    let o = lab.relay_cmd(&[
        "ca",
        "export-root",
        "--out",
        root_file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // A device that cannot renew over its session (a development key
    // file): it stays on the old issuing CA.
    let (_, _) = lab.gateway_config("gw-stuck", lab.quic_port, "");
    let mut relay = lab.start_relay();
    let old = signing_issuer(&lab);

    let speech = speech_fixture(&lab.dir, "The fleet moves to a new issuing CA.");
    let devs = AlsaFileDevices::new(&lab.dir, Some(&speech), None);
    let env = vec![("ALSA_CONFIG_PATH".to_string(), devs.alsa_config_path_env())];
    let mut gateways = Vec::new();
    for id in ["gw-r1", "gw-r2"] {
        let (cfg, m) = sealed_gateway_config(&lab, id, "voxcap");
        let gw = lab.start_gateway(&cfg, &env);
        gateways.push((id, gw, m, lab.dir.join(id).join("device.pem")));
    }
    for (_, gw, m, _) in &mut gateways {
        wait_for(Duration::from_secs(20), "streaming", || {
            gw.assert_running();
            metric(*m, "voxgate_frames_sent_total") >= 50.0
        });
    }
    let rt = runtime();
    let stuck = rt
        .block_on(Session::open(&lab, &lab.dir.join("gw-stuck"), "gw-stuck"))
        .expect("the old chain works before the rotation");
    let unsent: Vec<f64> = gateways
        .iter()
        .map(|(_, _, m, _)| metric(*m, "voxgate_frames_unsent_total"))
        .collect();

    // Rotate, with the root key from its file.
    let t0 = Instant::now();
    let o = lab.relay_cmd(&[
        "ca",
        "rotate-issuing",
        "--root-key",
        root_file.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--retire-after",
        &format!("{RETIRE_S}s"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let new = signing_issuer(&lab);
    assert_ne!(new, old);
    // Every gateway renews onto the new issuing CA over its session.
    for (id, gw, _, cert) in &mut gateways {
        wait_for(
            Duration::from_secs(10),
            "the renewal onto the new CA",
            || {
                gw.assert_running();
                issuer_of(&lab, &cert_serial(cert)).as_deref() == Some(new.as_str())
            },
        );
        println!("{id} on the new issuing CA after {:?}", t0.elapsed());
    }
    let moved = t0.elapsed();
    println!("fleet of 2 on the new issuing CA after {moved:?}");
    // `relay devices` says which issuing CA each device is on.
    let listed = text(&lab.relay_cmd(&["devices"]));
    let line = |id: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{listed}"))
            .to_string()
    };
    assert!(line("gw-r1").contains(&new[..23]), "{listed}");
    assert!(line("gw-stuck").contains(&old[..23]), "{listed}");
    // The relay's own certificate comes from the new issuing CA too.
    let relay_chain = voxgate::pki::files::read_certs(&lab.dir.join("relay/relay.pem")).unwrap();
    assert_eq!(voxgate::pki::name::fingerprint(&relay_chain[1]), new);

    // After the retire date the old chain is cut and refused; the
    // renewed gateways never reconnected and lost no audio.
    let closed = rt
        .block_on(stuck.closed_within(Duration::from_secs(RETIRE_S + 5)))
        .expect("the old chain's session stayed open after the retire date");
    assert!(closed.contains("retired issuing CA"), "{closed}");
    let e = rt
        .block_on(Session::open(&lab, &lab.dir.join("gw-stuck"), "gw-stuck"))
        .err()
        .expect("the old chain connected after the retire date");
    assert!(e.contains("unknown") || e.contains("revoked"), "{e}");
    for ((id, gw, m, _), before) in gateways.iter_mut().zip(unsent) {
        gw.assert_running();
        assert_eq!(
            metric(*m, "voxgate_relay_connects_total"),
            1.0,
            "{id} reconnected"
        );
        assert_eq!(metric(*m, "voxgate_relay_connected"), 1.0, "{id}");
        assert_eq!(
            metric(*m, "voxgate_frames_unsent_total"),
            before,
            "{id} dropped audio"
        );
        assert!(
            gw.log_text()
                .contains("the relay asked for a certificate renewal now"),
            "{id}"
        );
    }
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "issuing_ca_current" && e.3.contains(&new))
    );
    assert_eq!(
        log.iter()
            .filter(|e| e.0 == "renewed" && e.2.starts_with("gw-r"))
            .count(),
        2,
        "{log:?}"
    );
    for (_, gw, _, _) in &mut gateways {
        gw.stop();
    }
    relay.stop();
}
