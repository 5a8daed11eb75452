//! Step 4 of the identity bench: the whole fleet of a load test moves to a
//! new issuing CA. `FLEET` devices hold certificates of the current issuing
//! CA (recorded in the relay's registry as enrollment records them) and
//! keep a live `voxgate/1` session each; `voxgate relay ca rotate-issuing`
//! runs; every session is asked to renew (`renew_now`) and answers as a
//! gateway does: a fresh P-256 key, a CSR, `renew`, the certificate back.
//! Timed: from starting the command to the last device's new certificate,
//! with the relay's CPU over that window.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxgate::proto::control::{Hello, Message, Renew};
use voxgate::relay::registry::{CertRecord, Replace};
use voxgate::transport::framed::{self, FrameReader};
use voxgate::transport::tls;
use voxgate_testkit::bench::{JsonExt, Value};
use voxgate_testkit::enroll::SERVER_NAME;
use voxgate_testkit::lab::Lab;
use voxgate_testkit::procfs::proc_ticks;

/// Devices in the fleet.
pub(crate) const FLEET: usize = 500;

/// Issue `FLEET` device certificates from the current issuing CA and
/// record them in the relay's registry (one transaction), as enrollment
/// does; returns each device's client config.
fn fleet(lab: &Lab) -> Vec<(String, quinn::ClientConfig)> {
    let cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    let state = lab.dir.join("relay");
    let ca = voxgate::relay::authority::signer(&state, &cfg.ca_binding)
        .unwrap()
        .current();
    let roots = voxgate::pki::files::read_certs(&state.join("ca.pem")).unwrap();
    let registry = voxgate_testkit::enroll::registry(lab);
    let mut out = Vec::new();
    let issued: Vec<_> = (0..FLEET)
        .map(|i| {
            let id = format!("fleet-{i}");
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = voxgate::pki::issue::device_certificate(
                ca.issuer(),
                &key,
                &id,
                time::Duration::days(1),
            )
            .unwrap();
            (id, key, cert)
        })
        .collect();
    registry
        .atomically(|r| {
            for (id, _, c) in &issued {
                let facts = voxgate::pki::name::cert_facts(c.cert.der()).unwrap();
                r.record_certificate(
                    id,
                    CertRecord {
                        serial: &facts.serial,
                        spki: &facts.spki,
                        not_before: c.not_before,
                        not_after: c.not_after,
                        issuer: Some(ca.fingerprint()),
                    },
                    Replace::AtOnce,
                )?;
            }
            Ok::<_, voxgate::relay::registry::RegistryError>(())
        })
        .unwrap();
    for (id, key, c) in issued {
        let dir = lab.dir.join("fleet").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("device.pem"), c.cert.pem()).unwrap();
        voxgate_testkit::enroll::secret_file(&dir, "device.key", &key.serialize_pem());
        let identity =
            tls::DevFileIdentity::load(&id, &dir.join("device.pem"), &dir.join("device.key"))
                .unwrap();
        out.push((id, tls::client_config(&roots, &identity).unwrap()));
    }
    out
}

/// One device: a session, then renew when asked; the time it got its new
/// certificate.
async fn device(
    ep: quinn::Endpoint,
    relay: SocketAddr,
    id: String,
    cfg: quinn::ClientConfig,
    up: Arc<tokio::sync::Barrier>,
) -> Result<Instant, String> {
    // As a gateway does: a handshake lost in the burst of 500 is retried.
    let mut tries = 0;
    let conn = loop {
        tries += 1;
        match ep
            .connect_with(cfg.clone(), relay, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
        {
            Ok(c) => break c,
            Err(e) if tries >= 5 => return Err(format!("{tries} handshakes failed: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200 * tries)).await,
        }
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut reader = FrameReader::new(recv);
    framed::send(
        &mut send,
        &Message::Hello(Hello {
            device: &id,
            version: "bench",
            caps: Default::default(),
        }),
    )
    .await
    .map_err(|e| e.to_string())?;
    up.wait().await;
    loop {
        let m = reader
            .next(|m| match m {
                Message::RenewNow(_) => 1,
                Message::Renewed(_) => 2,
                Message::Error(_) => 3,
                _ => 0,
            })
            .await
            .map_err(|e| e.to_string())?;
        match m {
            1 => {
                let key = rcgen::KeyPair::generate().unwrap();
                let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                    .unwrap()
                    .serialize_request(&key)
                    .unwrap();
                let csr = B64.encode(csr.der());
                framed::send(&mut send, &Message::Renew(Renew { csr: &csr }))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            2 => {
                let t = Instant::now();
                conn.close(0u32.into(), b"done");
                return Ok(t);
            }
            3 => return Err("renewal refused".into()),
            _ => {}
        }
    }
}

/// Run the step; its JSON.
pub(crate) async fn rotation(lab: &Lab, relay: SocketAddr, relay_pid: &str, tck: f64) -> Value {
    let devices = fleet(lab);
    // The relay reloads the registry another process wrote twice a second.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let up = Arc::new(tokio::sync::Barrier::new(devices.len() + 1));
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|(id, cfg)| tokio::spawn(device(ep.clone(), relay, id, cfg, up.clone())))
        .collect();
    let connected = tokio::time::timeout(Duration::from_secs(60), up.wait()).await;
    let mut v = Value::obj();
    if connected.is_err() {
        v.set("error", "the fleet did not connect within 60 s");
        return v;
    }
    let cpu0 = proc_ticks(relay_pid);
    let t0 = Instant::now();
    let out = std::process::Command::new(voxgate_testkit::lab::bin())
        .args([
            "relay",
            "ca",
            "rotate-issuing",
            "--retire-after",
            "1h",
            "--config",
        ])
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap();
    let command = t0.elapsed();
    assert!(
        out.status.success(),
        "rotate-issuing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut done = Vec::new();
    let mut errors = 0usize;
    let mut first_error = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(at))) => done.push(at.duration_since(t0).as_secs_f64()),
            other => {
                errors += 1;
                if first_error.is_empty() {
                    first_error = format!("{other:?}");
                }
            }
        }
    }
    let cpu = proc_ticks(relay_pid).saturating_sub(cpu0) as f64 / tck;
    done.sort_by(f64::total_cmp);
    let all = done.last().copied().unwrap_or(f64::NAN);
    let median = done.get(done.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "rotation  {} devices on the new issuing CA: all after {:.2} s (median {:.2} s; the command {:.2} s), relay CPU {:.2} s, {errors} errors{}",
        done.len(),
        all,
        median,
        command.as_secs_f64(),
        cpu,
        if first_error.is_empty() {
            String::new()
        } else {
            format!(" ({first_error})")
        }
    );
    v.set("devices", FLEET as f64)
        .set("renewed", done.len() as f64)
        .set("errors", errors as f64)
        .set("first_error", first_error)
        .set("all_s", all)
        .set("median_s", median)
        .set("command_s", command.as_secs_f64())
        .set("relay_cpu_s", cpu);
    v
}
