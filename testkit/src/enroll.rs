//! Enrollment against a lab's relay: the fleet CA's fingerprint, single-use
//! tokens (`voxgate relay token create`), and `voxgate setup` with a token
//! file, a machine id and a key backend.

use crate::lab::{Lab, bin};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The relay's server name in every lab certificate.
pub const SERVER_NAME: &str = "relay.voxgate.test";

/// The machine id [`Setup`] seals keys to unless told otherwise.
pub const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

/// The fingerprint `voxgate setup --ca-fingerprint` pins.
pub fn fingerprint(lab: &Lab) -> String {
    let ca = voxgate::pki::files::read_certs(&lab.dir.join("relay/ca.pem")).unwrap();
    voxgate::pki::name::fingerprint(&ca[0])
}

/// The serial number of the first certificate in a PEM file, hex.
pub fn cert_serial(cert: &Path) -> String {
    let c = voxgate::pki::files::read_certs(cert).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&c[0]).unwrap();
    x.tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `voxgate relay token create --device DEVICE` (with `--ttl-s` if
/// given), as it ran.
pub fn create_token(lab: &Lab, device: &str, ttl_s: Option<u64>) -> Output {
    token_command(lab, device, ttl_s, false)
}

/// `voxgate relay token create --device DEVICE [--reenroll]`, as it ran.
pub fn token_command(lab: &Lab, device: &str, ttl_s: Option<u64>, reenroll: bool) -> Output {
    let mut c = Command::new(bin());
    c.args(["relay", "token", "create", "--device", device]);
    if reenroll {
        c.arg("--reenroll");
    }
    if let Some(t) = ttl_s {
        c.args(["--ttl-s", &t.to_string()]);
    }
    c.arg("--config")
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap()
}

/// A fresh single-use token for `device` (asserts that the relay issued
/// it).
pub fn token(lab: &Lab, device: &str, ttl_s: Option<u64>) -> String {
    issued(create_token(lab, device, ttl_s))
}

/// A fresh re-enrollment token for `device` (asserts that the relay issued
/// it).
pub fn reenroll_token(lab: &Lab, device: &str) -> String {
    issued(token_command(lab, device, None, true))
}

fn issued(out: Output) -> String {
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `content` in `dir/name`, mode 0600 (as setup wants a token file).
pub fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A fresh token for `device` in the 0600 file `lab.dir/name`.
pub fn token_file(lab: &Lab, device: &str, name: &str) -> PathBuf {
    secret_file(&lab.dir, name, &token(lab, device, None))
}

/// A machine-id file `dir/name` holding `value`.
pub fn machine_id(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}

/// `voxgate setup` for device `id` against the lab's relay. By default:
/// the lab CA's fingerprint, a fresh token in `lab.dir/ID.token`, the
/// machine id [`MACHINE_ID`] in `lab.dir/machine-id`, no serial number
/// (`lab.dir/no-serial`), keys in `lab.dir/ID`, the config written to
/// `lab.dir/ID.toml`.
pub struct Setup<'a> {
    lab: &'a Lab,
    id: String,
    fingerprint: Option<String>,
    token_file: Option<PathBuf>,
    machine_id: Option<PathBuf>,
    serial: bool,
    dir: Option<PathBuf>,
    config_out: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl<'a> Setup<'a> {
    pub fn new(lab: &'a Lab, id: &str) -> Setup<'a> {
        Setup {
            lab,
            id: id.to_string(),
            fingerprint: None,
            token_file: None,
            machine_id: None,
            serial: true,
            dir: None,
            config_out: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn fingerprint(mut self, fp: &str) -> Self {
        self.fingerprint = Some(fp.to_string());
        self
    }

    pub fn token_file(mut self, p: &Path) -> Self {
        self.token_file = Some(p.to_path_buf());
        self
    }

    pub fn machine_id(mut self, p: &Path) -> Self {
        self.machine_id = Some(p.to_path_buf());
        self
    }

    /// No `--serial` argument (setup reads the board's own).
    pub fn no_serial(mut self) -> Self {
        self.serial = false;
        self
    }

    /// The key directory (`--dir`).
    pub fn dir(mut self, p: &Path) -> Self {
        self.dir = Some(p.to_path_buf());
        self
    }

    /// The config file setup writes (`--config-out`).
    pub fn config_out(mut self, p: &Path) -> Self {
        self.config_out = Some(p.to_path_buf());
        self
    }

    /// Extra arguments (e.g. `["--backend", "tpm", "--tpm", spec]`).
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, k: impl AsRef<std::ffi::OsStr>, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_os_string(), v.as_ref().to_os_string()));
        self
    }

    /// Runs setup; returns its output and the config path.
    pub fn output(self) -> (Output, PathBuf) {
        let lab = self.lab;
        let id = &self.id;
        let cfg = self
            .config_out
            .unwrap_or_else(|| lab.dir.join(format!("{id}.toml")));
        let fp = self.fingerprint.unwrap_or_else(|| fingerprint(lab));
        let tok = self
            .token_file
            .unwrap_or_else(|| token_file(lab, id, &format!("{id}.token")));
        let mid = self
            .machine_id
            .unwrap_or_else(|| machine_id(&lab.dir, "machine-id", MACHINE_ID));
        let mut c = Command::new(bin());
        c.args(["setup", "--relay", &format!("127.0.0.1:{}", lab.quic_port)])
            .args(["--ca-fingerprint", &fp, "--device-id", id])
            .args(["--server-name", SERVER_NAME, "--token-file"])
            .arg(&tok)
            .arg("--dir")
            .arg(self.dir.unwrap_or_else(|| lab.dir.join(id)))
            .arg("--config-out")
            .arg(&cfg)
            .arg("--machine-id")
            .arg(&mid);
        if self.serial {
            c.arg("--serial").arg(lab.dir.join("no-serial"));
        }
        // The lab's clock is synchronized (setup stops on one that is not,
        // and the test machine's kernel may say either): its stand-in.
        if !self.args.iter().any(|a| a == "--clock-source") {
            c.arg("--clock-source").arg(synced_clock(&lab.dir));
        }
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        (c.output().unwrap(), cfg)
    }

    /// Runs setup and asserts that it succeeded; returns the config path.
    pub fn run(self) -> PathBuf {
        let id = self.id.clone();
        let (out, cfg) = self.output();
        assert!(
            out.status.success(),
            "setup {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cfg
    }
}

/// `voxgate setup` of `id` with a sealed key, and its config made ready
/// for `voxgate run` in the lab: capture from `capture` (`voxcap` for the
/// ALSA file device, `null` for none), no playback, a metrics address, and
/// the lab's privilege settings with nothing writable but what the
/// gateway keeps writable itself (its own directory: renewals and the
/// roots bundle). Returns the config and the metrics address.
pub fn sealed_gateway_config(
    lab: &Lab,
    id: &str,
    capture: &str,
) -> (PathBuf, std::net::SocketAddr) {
    let cfg = Setup::new(lab, id).args(["--backend", "sealed-file"]).run();
    let m: std::net::SocketAddr = format!("127.0.0.1:{}", crate::lab::free_tcp())
        .parse()
        .unwrap();
    let written = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{written}\n[capture]\ndevice = \"{capture}\"\n[playback]\nenabled = false\n[telemetry]\nlog = \"debug\"\nmetrics = \"{m}\"\n{}",
            crate::lab::dev_privilege(&lab.dir).replace(
                &format!("write = [\"{}\"]", lab.dir.display()),
                "write = []"
            )
        ),
    )
    .unwrap();
    (cfg, m)
}

/// The issuing CA (fingerprint) that signs now, as `voxgate relay ca
/// status` says.
pub fn signing_issuer(lab: &Lab) -> String {
    let o = lab.relay_cmd(&["ca", "status"]);
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    status
        .lines()
        .find(|l| l.starts_with("issuing") && l.ends_with("signing"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{status}"))
        .to_string()
}

/// The issuing CA (fingerprint) the registry says signed `serial`.
pub fn issuer_of(lab: &Lab, serial: &str) -> Option<String> {
    let registry =
        voxgate::relay::registry::Registry::open(&lab.dir.join("relay/registry.sqlite3")).unwrap();
    // Every certificate the relay may still accept, superseded ones too.
    registry
        .trust_rows(voxgate::relay::registry::now(), i64::MAX / 4)
        .unwrap()
        .into_iter()
        .find(|t| t.serial == serial)
        .and_then(|t| t.issuer)
}

/// The lab relay's registry with its audit key, as `voxgate relay token
/// create` opens it: for writes from the test process.
pub fn registry(lab: &Lab) -> voxgate::relay::registry::Registry {
    let cfg = voxgate::config::RelayConfig::load(&lab.dir.join("relay.toml")).unwrap();
    voxgate::relay::audit_key::open_registry(&cfg.state_dir, &cfg.ca_binding).unwrap()
}

/// The relay's enrollment audit log: (event, source, device, detail).
pub fn audit(lab: &Lab) -> Vec<(String, String, String, String)> {
    voxgate::relay::registry::Registry::open(&lab.dir.join("relay/registry.sqlite3"))
        .unwrap()
        .audit_events()
        .unwrap()
}

/// `--clock-source` for a synchronized clock: `file:` a file in `dir`
/// holding `NTPSynchronized=yes` (what `timedatectl show` prints), the
/// stand-in for the kernel's state, which a test cannot change.
pub fn synced_clock(dir: &Path) -> String {
    let f = dir.join("clock-synced.txt");
    std::fs::write(&f, "NTPSynchronized=yes\n").unwrap();
    format!("file:{}", f.display())
}
