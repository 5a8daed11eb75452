//! Device identity benchmark (`cargo bench --bench identity`;
//! `scripts/bench-identity` runs it and writes the `identity` block of
//! docs/BENCHMARKS.md from its JSON summary).
//!
//! One release relay (`voxgate relay run`, its fleet CA and TLS keys sealed
//! as `relay init` writes them, registry on disk, log level `info`) runs
//! pinned to CPU 0 (`taskset -c 0`). This process is the device side and the
//! load generator, pinned to CPU 1 with everything it starts (swtpm too).
//!
//! 1. Handshakes: three devices, enrolled the way the product does it
//!    (`voxgate relay token create` + `voxgate setup --backend sealed-file`,
//!    `--backend tpm` on swtpm) plus the development plaintext `dev-file`
//!    identity (`voxgate relay dev-cert`) as the baseline. Each identity is
//!    loaded with `identity::backend::load` and presented through
//!    `transport::tls::client_config` exactly as `voxgate run` does (a
//!    one-worker multi-thread runtime, so the TPM signs under
//!    `block_in_place`). Timed: `connect` to the established connection
//!    (client side: the client certificate and its CertificateVerify,
//!    signed in the backend, are sent), and on to the relay's `welcome`
//!    (the relay has checked the certificate). The backends take turns, so
//!    the machine's noise is spread evenly over them.
//! 2. Renewal: for sealed-file and TPM, a fresh key each time
//!    (`Renewer::prepare`, timed separately), then from sending `renew` on
//!    the live control stream to the new chain and key stored
//!    (`Renewer::commit`: three files written with fsync, the TLS resolver
//!    swapped). Each renewal uses a new session (the relay allows one
//!    renewal per 5 s per session), which also proves the renewed pair
//!    handshakes.
//! 3. Enrollment throughput of the one relay core: tokens created with
//!    `Registry::create_token` (what `voxgate relay token create` runs) in
//!    the relay's registry; a fresh P-256 key and CSR per device, made
//!    before each step; open-loop offered rates in steps, each enrollment a
//!    real `voxgate-enroll/1` client (pinned-CA verifier, `enroll` message,
//!    certificate checked against the key and the device id) on its own
//!    source address in 127.1.0.0/16, used once, so the relay's per-address
//!    limiter (burst 5) never refuses a valid client and stays unchanged.
//!    Then floods of wrong tokens: from many addresses next to valid
//!    enrollments, and from one address.
//! 4. A fleet of 500 devices moving to a new issuing CA (`rotation`).
//! 5. Step 3's ladder on a second fleet whose issuing key is in swtpm
//!    (`tpm_fleet`).
//!
//! Results: a table on stdout and `$VOXGATE_BENCH_OUT/identity.json`.
//! Bounded: every network wait has a deadline, the steps a time budget;
//! the relay and swtpm are stopped by guards, also on panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use voxgate::config::GatewayConfig;
use voxgate::identity::backend::{self, LoadedIdentity};
use voxgate::proto::control::{Enroll, Hello, Message, Renew};
use voxgate::relay::registry::Registry;
use voxgate::transport::framed::{self, FrameReader};
use voxgate::transport::tls;
use voxgate_testkit::bench::{self, JsonExt, Value};
use voxgate_testkit::enroll::{SERVER_NAME, Setup, fingerprint, token_file};
use voxgate_testkit::lab::{Lab, Proc};
use voxgate_testkit::procfs::{clk_tck, cpu_ticks_total, fs_type, proc_ticks, status_field};

mod enroll_load;
mod rotation;
mod sessions;
mod tpm_fleet;

use enroll_load::*;
use sessions::*;

/// Handshakes per backend.
const HANDSHAKES: usize = 200;
/// Renewals per renewing backend.
const RENEWALS: usize = 40;
/// Offered enrollment rates (per second), each for `STEP`.
const RATES: [f64; 8] = [200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0, 1600.0, 2000.0];
const STEP: Duration = Duration::from_secs(4);
/// A step passes when nothing failed and the achieved rate is at least
/// this share of the offered one.
const ACHIEVED_MIN: f64 = 0.97;
/// Enrollments in flight at most; beyond it the generator counts a miss.
const MAX_IN_FLIGHT: usize = 2000;
const TARGET_ENROLL_PER_S: f64 = 200.0;
const TIMEOUT: Duration = Duration::from_secs(10);
/// All enrollment steps together.
const BUDGET: Duration = Duration::from_secs(300);
/// Wrong-token flood beside valid enrollments, per second.
const FLOOD_RATE: f64 = 600.0;
const FLOOD_VALID_RATE: f64 = 100.0;
/// Attempts of the one-address flood, per second.
const ONE_ADDR_ATTEMPTS: usize = 60;
const ONE_ADDR_RATE: f64 = 30.0;
/// Other load (cores) under which the machine counts as quiet, and the
/// longest wait for it before a measurement starts anyway.
const QUIET: f64 = 0.25;
const QUIET_WAIT: Duration = Duration::from_secs(45);

/// CPU use over a stretch of time: the relay's, this process's (with its
/// children: swtpm), and everything else on the machine ("other load").
struct CpuWindow {
    t0: Instant,
    all: u64,
    relay: u64,
    me: u64,
    tpm: u64,
    relay_pid: String,
    tpm_pid: Option<String>,
}

impl CpuWindow {
    fn start(relay_pid: &str, tpm_pid: Option<&str>) -> CpuWindow {
        CpuWindow {
            t0: Instant::now(),
            all: cpu_ticks_total(),
            relay: proc_ticks(relay_pid),
            me: proc_ticks("self"),
            tpm: tpm_pid.map_or(0, proc_ticks),
            relay_pid: relay_pid.into(),
            tpm_pid: tpm_pid.map(str::to_string),
        }
    }

    /// (relay cores, this process's + swtpm's cores, other load in cores)
    fn end(&self, tck: f64) -> (f64, f64, f64) {
        let s = self.t0.elapsed().as_secs_f64().max(1e-3);
        let relay = proc_ticks(&self.relay_pid).saturating_sub(self.relay);
        let me = proc_ticks("self").saturating_sub(self.me)
            + self
                .tpm_pid
                .as_deref()
                .map_or(0, |p| proc_ticks(p).saturating_sub(self.tpm));
        let all = cpu_ticks_total().saturating_sub(self.all);
        let other = all.saturating_sub(relay + me);
        let c = |t: u64| t as f64 / tck / s;
        (c(relay), c(me), c(other))
    }
}

/// The relay as production runs it (log level info), pinned to CPU 0.
fn start_relay(lab: &Lab) -> Proc {
    let cfg = lab.dir.join("relay-identity.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = \"relay\"\nrecordings = \"recordings\"\n\
             server_name = \"{SERVER_NAME}\"\n[downlink]\nmode = \"none\"\n\
             [limits]\nmax_enrollments = 256\nrenewals_per_device_day = 1000000\n\
             [telemetry]\nlog = \"info\"\nmetrics = \"{}\"\n{}{}",
            lab.quic_port,
            lab.relay_metrics,
            voxgate_testkit::lab::dev_privilege(&lab.dir),
            lab.ca_section(),
        ),
    )
    .unwrap();
    let log = lab.dir.join("relay-identity.log");
    lab.start_relay_pinned(voxgate_testkit::lab::bin(), &cfg, &log, 0)
}

/// `voxgate relay token create` then `voxgate setup` with `backend`;
/// returns the config setup wrote.
fn setup(lab: &Lab, id: &str, backend: &[&str]) -> PathBuf {
    let tok = token_file(lab, id, &format!("{id}.token"));
    let (out, cfg) = Setup::new(lab, id).token_file(&tok).args(backend).output();
    let _ = std::fs::remove_file(&tok);
    assert!(
        out.status.success(),
        "setup {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cfg
}

/// A device as `voxgate run` loads it.
struct Device {
    name: &'static str,
    id: String,
    loaded: LoadedIdentity,
    cfg: quinn::ClientConfig,
    key: PathBuf,
    cert: PathBuf,
}

fn device(name: &'static str, cfg_path: &Path) -> Device {
    let cfg = GatewayConfig::load(cfg_path).expect("the written config loads");
    let loaded = backend::load(&cfg.device_id, &cfg.identity).expect("identity loads");
    loaded.verify().expect("the backend holds the key");
    let ca = voxgate::pki::files::read_certs(&cfg.relay.ca).unwrap();
    let client = tls::client_config(&ca, loaded.identity.as_ref()).unwrap();
    Device {
        name,
        id: cfg.device_id.clone(),
        loaded,
        cfg: client,
        key: cfg.identity.key.clone(),
        cert: cfg.identity.cert.clone(),
    }
}

fn handshake_json(d: &Device, r: &HandshakeResult) -> Value {
    let mut o = Value::obj();
    o.set("backend", d.name)
        .set("established", dist(&r.established))
        .set("welcomed", dist(&r.welcomed))
        .set("errors", r.errors)
        .set("first_error", r.first_error.clone().unwrap_or_default());
    o
}

fn renewal_json(d: &Device, r: &RenewResult) -> Value {
    let mut o = Value::obj();
    o.set("backend", d.name)
        .set("renew", dist(&r.renew))
        .set("prepare_key_and_csr", dist(&r.prepare))
        .set("fresh_keys", r.fresh_keys)
        .set("errors", r.errors)
        .set("first_error", r.first_error.clone().unwrap_or_default());
    o
}

async fn run(lab: &Lab, relay: &Proc, tpm: &voxgate_testkit::swtpm::Swtpm, tck: f64) -> Value {
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", lab.quic_port).parse().unwrap();
    let relay_pid = relay.pid().to_string();
    let tpm_pid = tpm_pid(tpm);
    // The devices, enrolled and loaded as the product does it.
    let (dev_cfg, _) = lab.gateway_config("bench-dev", lab.quic_port, "");
    let sealed_cfg = setup(lab, "bench-sealed", &["--backend", "sealed-file"]);
    let tpm_cfg = setup(
        lab,
        "bench-tpm",
        &["--backend", "tpm", "--tpm", &tpm.spec()],
    );
    let devices = vec![
        device("dev-file", &dev_cfg),
        device("sealed-file", &sealed_cfg),
        device("tpm (swtpm)", &tpm_cfg),
    ];

    relay_idle(&relay_pid, tck).await;
    let cpu = CpuWindow::start(&relay_pid, tpm_pid.as_deref());
    let hs = handshakes(&devices, relay_addr, HANDSHAKES).await;
    let (hs_relay, hs_dev, hs_other) = cpu.end(tck);
    let mut hs_rows = Vec::new();
    for (d, r) in devices.iter().zip(&hs) {
        println!(
            "handshake {:<12} established median {:.2} ms p90 {:.2} ms; to welcome median {:.2} ms p90 {:.2} ms; {} errors{}",
            d.name,
            quantile(&r.established, 0.5).unwrap_or(f64::NAN),
            quantile(&r.established, 0.9).unwrap_or(f64::NAN),
            quantile(&r.welcomed, 0.5).unwrap_or(f64::NAN),
            quantile(&r.welcomed, 0.9).unwrap_or(f64::NAN),
            r.errors,
            r.first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        hs_rows.push(handshake_json(d, r));
    }
    let mut handshake = Value::obj();
    handshake
        .set("per_backend", HANDSHAKES)
        .set("rows", Value::Array(hs_rows))
        .set("relay_cpu_cores", hs_relay)
        .set("device_cpu_cores", hs_dev)
        .set("other_load_cores", hs_other);

    let renewing = [&devices[1], &devices[2]];
    relay_idle(&relay_pid, tck).await;
    let cpu = CpuWindow::start(&relay_pid, tpm_pid.as_deref());
    let rn = renewals(&renewing, relay_addr, RENEWALS).await;
    let (_, _, rn_other) = cpu.end(tck);
    let mut rn_rows = Vec::new();
    for (d, r) in renewing.iter().zip(&rn) {
        println!(
            "renewal   {:<12} request to stored median {:.2} ms p90 {:.2} ms; fresh key + CSR median {:.2} ms; {} fresh keys, {} errors{}",
            d.name,
            quantile(&r.renew, 0.5).unwrap_or(f64::NAN),
            quantile(&r.renew, 0.9).unwrap_or(f64::NAN),
            quantile(&r.prepare, 0.5).unwrap_or(f64::NAN),
            r.fresh_keys,
            r.errors,
            r.first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        rn_rows.push(renewal_json(d, r));
    }
    let mut renewal = Value::obj();
    renewal
        .set("per_backend", RENEWALS)
        .set("rows", Value::Array(rn_rows))
        .set("other_load_cores", rn_other);

    // Enrollment load: one client config, as `voxgate setup` builds it.
    let verifier = tls::PinnedCaVerifier::new(&fingerprint(lab)).unwrap();
    let cfg = tls::enroll_client_config(verifier).unwrap();
    let load = Load {
        cfg: &cfg,
        relay: relay_addr,
        relay_pid,
        tck,
    };
    let enroll = enrollment(lab, &load).await;
    relay_idle(&load.relay_pid, tck).await;
    let rotation = rotation::rotation(lab, relay_addr, &load.relay_pid, tck).await;
    relay_idle(&load.relay_pid, tck).await;
    let enroll_tpm = tpm_fleet::enrollment_with_tpm_key(tck).await;

    let mut root = Value::obj();
    root.set("handshake", handshake)
        .set("renewal", renewal)
        .set("enrollment", enroll)
        .set("enrollment_tpm_issuing_key", enroll_tpm)
        .set("rotation", rotation);
    root
}

fn tpm_pid(tpm: &voxgate_testkit::swtpm::Swtpm) -> Option<String> {
    // swtpm is this process's child, listening on its port.
    let out = Command::new("pgrep")
        .args(["-P", &std::process::id().to_string(), "swtpm"])
        .output()
        .ok()?;
    let _ = tpm;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

fn main() {
    let started = Instant::now();
    let tck = clk_tck();
    let pinned = bench::pin_to_cpu1();
    let lab = Lab::new("bench-identity", "mode = \"none\"");
    let sealed_ca = lab.ca_key_sealed();
    let tpm = voxgate_testkit::swtpm::Swtpm::start_in(lab.dir.join("swtpm"));
    let mut relay = start_relay(&lab);
    let relay_cpus = status_field(relay.pid(), "Cpus_allowed_list");
    // One worker, as `voxgate run` has: the TPM signs under block_in_place.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let result = bench::catch(|| rt.block_on(run(&lab, &relay, &tpm, tck)));
    drop(rt);
    let relay_ok = relay.stop().success();
    let warnings: Vec<Value> = relay.warnings().into_iter().map(Value::String).collect();
    let (mut root, error) = match result {
        Ok(r) => (r, None),
        Err(msg) => (Value::obj(), Some(msg)),
    };
    let mut setup = Value::obj();
    setup
        .set("relay_cpus", relay_cpus.unwrap_or_default())
        .set("device_and_generator_cpus", bench::pinned_text(&pinned))
        .set("ca_key_sealed", sealed_ca)
        .set("registry_filesystem", fs_type(&lab.dir))
        .set("relay_log", "info");
    root.set("bench", "identity")
        .set("setup", setup)
        .set("relay_exit_ok", relay_ok)
        .set("relay_warnings", Value::Array(warnings))
        .set("error", error.clone().unwrap_or_default())
        .set("elapsed_s", started.elapsed().as_secs_f64());
    drop(tpm);
    let path = bench::write_result("identity.json", &root);
    println!("summary: {}", path.display());
    if let Some(e) = error {
        eprintln!("identity bench failed: {e}");
        std::process::exit(1);
    }
}
