//! Step 5: enrollment throughput with the issuing CA's key in a TPM
//! (swtpm), beside step 3's sealed key. A second fleet, made by `voxgate
//! relay init --issuing-key-tpm`, its relay pinned to CPU 0 like the first
//! (which is idle meanwhile); swtpm runs on CPU 1 with the generator, as a
//! TPM is hardware of its own. The signer process signs every certificate
//! through the TPM (a connection, the primary key, load, sign, flush per
//! certificate, since swtpm serves one connection at a time). The same
//! open-loop ladder as step 3, from a lower rate.

use super::*;

/// Offered rates of this step.
const TPM_RATES: [f64; 7] = [25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1200.0];

pub(crate) async fn enrollment_with_tpm_key(tck: f64) -> Value {
    let lab = Lab::new("bench-identity-tpm", "mode = \"none\"");
    let tpm = voxgate_testkit::swtpm::Swtpm::start_in(lab.dir.join("swtpm-ca"));
    std::fs::remove_dir_all(lab.dir.join("relay")).unwrap();
    let o = lab.relay_cmd(&["init", "--keep-root", "--issuing-key-tpm", &tpm.spec()]);
    assert!(
        o.status.success(),
        "relay init --issuing-key-tpm: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut relay = start_relay(&lab);
    let verifier = tls::PinnedCaVerifier::new(&fingerprint(&lab)).unwrap();
    let cfg = tls::enroll_client_config(verifier).unwrap();
    let load = Load {
        cfg: &cfg,
        relay: format!("127.0.0.1:{}", lab.quic_port).parse().unwrap(),
        relay_pid: relay.pid().to_string(),
        tck,
    };
    let registry = voxgate_testkit::enroll::registry(&lab);
    // Its own source addresses, after step 3's.
    let mut sources = Sources(200_000);
    let (steps, end, best) = ladder(&registry, &mut sources, &load, &TPM_RATES).await;
    relay.stop();
    let mut o = Value::obj();
    o.set("steps", Value::Array(steps))
        .set("end", end.as_str())
        .set("best_offered_per_s", best.map(|b| b.0))
        .set("best_achieved_per_s", best.map(|b| b.1))
        .set("tpm", "swtpm (libtpms), TCP on loopback, pinned to CPU 1");
    o
}
