//! A lab: one relay and gateways as real child processes of the `voxgate`
//! binary, each in a fresh directory with its own CA, certificates, configs
//! and free loopback ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The target directory of the running test or bench executable
/// (`<target>/<profile>/deps/NAME-HASH`): cargo builds the `voxgate`
/// binary beside `deps/` for every integration test and bench.
fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let deps = exe.parent().expect("deps dir");
        let dir = if deps.ends_with("deps") {
            deps.parent().unwrap()
        } else {
            deps
        };
        dir.to_path_buf()
    })
}

/// The `voxgate` binary of this build (what `CARGO_BIN_EXE_voxgate` names
/// in a test or bench); `VOXGATE_BIN` overrides it.
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("VOXGATE_BIN").filter(|b| !b.is_empty()) {
            return b.into_string().expect("VOXGATE_BIN is not UTF-8");
        }
        let b = profile_dir().join("voxgate");
        assert!(
            b.is_file(),
            "{} missing (built by cargo test/bench)",
            b.display()
        );
        b.into_os_string()
            .into_string()
            .expect("target path is not UTF-8")
    })
}

/// `<target>/tmp`: what `CARGO_TARGET_TMPDIR` names in a test or bench.
pub fn target_tmpdir() -> PathBuf {
    let target = profile_dir().parent().expect("target dir");
    let d = target.join("tmp");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port for a test's listener: random, below Linux's ephemeral range
/// (32768-60999, where the kernel puts every outgoing connection's source
/// port, so a parallel test's curl or client cannot hold it), and free
/// now for what `free` checks.
fn listener_port(free: impl Fn(u16) -> bool) -> u16 {
    loop {
        let port = fastrand::u16(10_000..32_000);
        if free(port) {
            return port;
        }
    }
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn free_udp() -> u16 {
    listener_port(udp_free)
}

/// A port free for both UDP and TCP now (the phone bridge listens on
/// both).
pub fn free_udp_tcp() -> u16 {
    listener_port(|p| udp_free(p) && tcp_free(p))
}

pub fn free_tcp() -> u16 {
    listener_port(tcp_free)
}

/// The repository (the kit's parent directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the kit lives in the repository")
}

/// A fresh directory under target/ for one test.
pub fn test_dir(name: &str) -> PathBuf {
    test_dir_in(&target_tmpdir(), name)
}

/// A fresh directory under `base`.
pub fn test_dir_in(base: &Path, name: &str) -> PathBuf {
    let d = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// GET /metrics from a loopback endpoint.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    scrape(addr)
        .and_then(|t| voxgate::telemetry::metrics::scrape_value(&t, name))
        .unwrap_or(0.0)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM and wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Ok(Some(s)) = self.child.try_wait() {
            return s;
        }
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().unwrap()
    }

    /// SIGKILL: a crash, as far as the peer can tell.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first five warnings and errors in its log, except the one a
    /// bench asks for by running it as root with `stay_root`.
    pub fn warnings(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && !l.contains("stay_root"))
            .take(5)
            .map(str::to_string)
            .collect()
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(s)) = self.child.try_wait() {
            panic!("{} exited ({s}); log:\n{}", self.name, self.log_text());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Relay settings for a lab.
pub struct Lab {
    pub dir: PathBuf,
    pub quic_port: u16,
    pub relay_metrics: SocketAddr,
    pub downlink: String,
    /// Extra `[ca]` settings (see [`Lab::with_ca`]).
    pub ca_extra: String,
    /// The `[recording]` section's body. The lab's tests check what the
    /// relay recorded, so they turn recording on: `enabled = true` (the
    /// relay's default is off).
    pub recording: String,
    /// The `[limits]` section's body (empty: the defaults).
    pub limits: String,
}

impl Lab {
    /// A relay config (and CA) in a new directory; `downlink` is the
    /// `[downlink]` section body, e.g. `mode = "echo"`.
    pub fn new(name: &str, downlink: &str) -> Lab {
        Self::new_at(test_dir(name), downlink, "")
    }

    /// [`Lab::new`] with extra `[ca]` settings, e.g. the relay
    /// certificate's lifetime, which `relay init` uses too.
    pub fn with_ca(name: &str, downlink: &str, ca: &str) -> Lab {
        Self::new_at(test_dir(name), downlink, ca)
    }

    /// A lab under /tmp, which every user can traverse: for processes that
    /// drop to `nobody` (the target dir may sit under /root, mode 0700).
    pub fn new_public(name: &str, downlink: &str) -> Lab {
        let dir = test_dir_in(&std::env::temp_dir(), &format!("voxgate-{name}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self::new_at(dir, downlink, "")
    }

    fn new_at(dir: PathBuf, downlink: &str, ca: &str) -> Lab {
        let lab = Lab {
            quic_port: free_udp(),
            relay_metrics: format!("127.0.0.1:{}", free_tcp()).parse().unwrap(),
            downlink: downlink.to_string(),
            ca_extra: ca.to_string(),
            recording: "enabled = true".to_string(),
            limits: String::new(),
            dir,
        };
        lab.write_relay_config();
        let out = Command::new(bin())
            .args(["relay", "init", "--keep-root", "--config"])
            .arg(lab.dir.join("relay.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "relay init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// Rewrite the relay's config with other `[recording]` and `[limits]`
    /// bodies (before the relay starts).
    pub fn set_relay_sections(&mut self, recording: &str, limits: &str) {
        self.recording = recording.to_string();
        self.limits = limits.to_string();
        self.write_relay_config();
    }

    fn write_relay_config(&self) {
        // The fleet CA key is sealed to a machine id of the lab's own, so
        // that no test depends on (or touches) /etc/machine-id.
        let ca_mid = self.dir.join("ca-machine-id");
        if !ca_mid.exists() {
            let id: String = (0..32)
                .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap())
                .collect();
            std::fs::write(&ca_mid, format!("{id}\n")).unwrap();
        }
        std::fs::write(
            self.dir.join("relay.toml"),
            format!(
                "listen = \"127.0.0.1:{}\"\nstate_dir = \"relay\"\nrecordings = \"recordings\"\nserver_name = \"relay.voxgate.test\"\n[downlink]\n{}\n[recording]\n{}\n[limits]\n{}\n[telemetry]\nlog = \"debug\"\nmetrics = \"{}\"\n{}{}",
                self.quic_port,
                self.downlink,
                self.recording,
                self.limits,
                self.relay_metrics,
                dev_privilege(&self.dir),
                self.ca_section()
            ),
        )
        .unwrap();
    }

    /// The `[ca]` section that opens this lab's sealed fleet CA key, for
    /// tests that write relay configs of their own.
    pub fn ca_section(&self) -> String {
        format!(
            "[ca]\nmachine_id = \"{}\"\n{}\n",
            self.dir.join("ca-machine-id").display(),
            self.ca_extra
        )
    }

    /// Whether the relay keeps its fleet CA key sealed (`ca.key.sealed`,
    /// as `relay init` writes it) and no plaintext copy.
    pub fn ca_key_sealed(&self) -> bool {
        let relay = self.dir.join("relay");
        let sealed_issuing = std::fs::read_dir(&relay)
            .map(|d| {
                d.flatten().any(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with("issuing-") && n.ends_with(".key.sealed")
                })
            })
            .unwrap_or(false);
        sealed_issuing && !relay.join(voxgate::relay::ca::CA_KEY).exists()
    }

    /// Every key the relay keeps sealed in its state directory (root,
    /// issuing CAs, TLS key, audit key), unsealed: what must never leak.
    pub fn relay_secrets(&self) -> Vec<Vec<u8>> {
        let cfg = voxgate::config::RelayConfig::load(&self.dir.join("relay.toml")).unwrap();
        let material = cfg.ca_binding.material().unwrap();
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.join("relay")).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".sealed") {
                let file = std::fs::read(e.path()).unwrap();
                if let Ok(k) = voxgate::pki::sealed::unseal(&material, &file) {
                    out.push(k.to_vec());
                }
            }
        }
        out
    }

    /// `voxgate relay ARGS --config <this lab's relay.toml>`, as it ran.
    pub fn relay_cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("relay")
            .args(args)
            .arg("--config")
            .arg(self.dir.join("relay.toml"))
            .output()
            .unwrap()
    }

    /// Start the relay and wait until its metrics endpoint answers.
    pub fn start_relay(&self) -> Proc {
        self.start_relay_with_config(&self.dir.join("relay.toml"))
    }

    /// Start the relay with another config of this lab's (the same listen
    /// and metrics addresses, e.g. another state directory or `[ca]`
    /// binding: the relay "moved to another machine"); wait until it is up.
    pub fn start_relay_with_config(&self, cfg: &Path) -> Proc {
        self.start_relay_env(cfg, &[])
    }

    /// Start the relay with config `cfg` and `env` added to its
    /// environment; wait until it is up.
    pub fn start_relay_env(&self, cfg: &Path, env: &[(&str, &Path)]) -> Proc {
        let log = self.dir.join(format!("relay-{}.log", fastrand::u32(..)));
        let child = Command::new(bin())
            .args(["relay", "run", "--config"])
            .arg(cfg)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proc {
            child,
            name: "relay".into(),
            log,
        };
        self.wait_relay_up(&mut p);
        p
    }

    /// Waits (15 s at most) until the relay's metrics endpoint answers.
    pub fn wait_relay_up(&self, p: &mut Proc) {
        let t0 = Instant::now();
        while scrape(self.relay_metrics).is_none() {
            p.assert_running();
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "relay did not start"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The relay as production runs it (the log level its config says, no
    /// `VOXGATE_LOG`), `binary` with config `cfg` pinned to `cpu` with
    /// taskset, stderr to `log`; waits until it is up.
    pub fn start_relay_pinned(&self, binary: &str, cfg: &Path, log: &Path, cpu: usize) -> Proc {
        let child = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(binary)
            .args(["relay", "run", "--config"])
            .arg(cfg)
            .env_remove("VOXGATE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn taskset (util-linux)");
        let mut p = Proc {
            child,
            name: "relay".into(),
            log: log.to_path_buf(),
        };
        self.wait_relay_up(&mut p);
        p
    }

    /// Issue a dev certificate and write a gateway config; returns its path
    /// and metrics address. `extra` is appended (e.g. `[capture]` sections).
    pub fn gateway_config(&self, id: &str, relay_port: u16, extra: &str) -> (PathBuf, SocketAddr) {
        let gdir = self.dir.join(id);
        if !gdir.join("device.pem").exists() {
            let out = Command::new(bin())
                .args(["relay", "dev-cert", "--config"])
                .arg(self.dir.join("relay.toml"))
                .args(["--device-id", id, "--out"])
                .arg(&gdir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "dev-cert: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // A running relay sees a certificate another process recorded
            // within its next half-second registry check.
            std::thread::sleep(Duration::from_millis(600));
        }
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp()).parse().unwrap();
        let cfg = gdir.join("gateway.toml");
        std::fs::write(
            &cfg,
            format!(
                "device_id = \"{id}\"\n[relay]\naddress = \"127.0.0.1:{relay_port}\"\nserver_name = \"relay.voxgate.test\"\nca = \"ca.pem\"\n[identity]\ncert = \"device.pem\"\nkey = \"device.key\"\n[telemetry]\nlog = \"debug\"\nmetrics = \"{metrics}\"\n{extra}\n{}",
                dev_privilege(&self.dir)
            ),
        )
        .unwrap();
        (cfg, metrics)
    }

    /// Start `voxgate run` with the given environment.
    pub fn start_gateway(&self, cfg: &Path, env: &[(String, String)]) -> Proc {
        self.start_gateway_with(Path::new(bin()), cfg, env)
    }

    /// Start `voxgate run` from another build of the binary (the benchmarks
    /// compare the static release binary with this one).
    pub fn start_gateway_with(&self, binary: &Path, cfg: &Path, env: &[(String, String)]) -> Proc {
        let log = cfg.with_file_name(format!("gateway-{}.log", fastrand::u32(..)));
        let mut c = Command::new(binary);
        c.args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Proc {
            child: c.spawn().unwrap(),
            name: "gateway".into(),
            log,
        }
    }

    /// `n` development devices (`PREFIX-0` ...), issued at once in this
    /// process (the relay keeps one session per device: load generators
    /// need one identity per stream), each with its QUIC client config.
    /// A running relay sees them within its next half-second registry
    /// check.
    pub fn dev_identities(&self, prefix: &str, n: usize) -> Vec<(String, quinn::ClientConfig)> {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let dirs: Vec<PathBuf> = ids.iter().map(|id| self.dir.join(id)).collect();
        let devices: Vec<(&str, &Path)> = ids
            .iter()
            .map(String::as_str)
            .zip(dirs.iter().map(PathBuf::as_path))
            .collect();
        let cfg = voxgate::config::RelayConfig::load(&self.dir.join("relay.toml")).unwrap();
        voxgate::relay::ca::issue_dev_certs(&cfg.state_dir, &cfg.ca_binding, &devices, 30)
            .expect("development certificates");
        ids.into_iter()
            .zip(&dirs)
            .map(|(id, d)| {
                let c = device_client_config(d, &id);
                (id, c)
            })
            .collect()
    }

    /// Every recording the relay made, sorted by name (time, session).
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Ok(devs) = std::fs::read_dir(self.dir.join("recordings")) {
            for d in devs.flatten() {
                for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                    v.push(f.path());
                }
            }
        }
        v.sort();
        v
    }
}

/// A QUIC client config for device `id` from its directory (as
/// [`Lab::gateway_config`] writes it): its certificate and key, the lab CA.
pub fn device_client_config(gdir: &Path, id: &str) -> quinn::ClientConfig {
    use voxgate::transport::tls;
    let identity =
        tls::DevFileIdentity::load(id, &gdir.join("device.pem"), &gdir.join("device.key"))
            .expect("device identity");
    let ca = voxgate::pki::files::read_certs(&gdir.join("ca.pem")).expect("lab CA");
    tls::client_config(&ca, &identity).expect("client config")
}

/// Development privilege settings for processes the tests start as root:
/// stay root (explicitly), keep the sandbox on, and let it see the lab.
/// The privilege tests configure a real drop instead.
pub fn dev_privilege(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "[privilege]\nstay_root = true\n[sandbox]\nread = [\"{d}\", \"/tmp\"]\nwrite = [\"{d}\"]\n"
    )
}

/// Wait until `f` holds, polling; panics with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Decode an Ogg Opus file to a 48 kHz mono WAV with opusdec.
pub fn opusdec(ogg: &Path) -> PathBuf {
    let wav = ogg.with_extension("wav");
    let out = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(ogg)
        .arg(&wav)
        .output()
        .expect("opusdec missing: run scripts/deps");
    assert!(
        out.status.success(),
        "opusdec {}: {}",
        ogg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    wav
}
