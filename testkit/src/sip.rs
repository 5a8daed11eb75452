//! A phone-bridge lab: one relay, gateways with `[sip]` on loopback, phones
//! provisioned through `voxgate phones add`, and the real peers that talk to
//! them (baresip as a desk phone, sipp as a scripted UA). Every peer runs
//! under a time limit.

use crate::lab::{Lab, Proc, bin, free_tcp, free_udp, metric, wait_for};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Ranges handed out in this test binary: tests run in parallel, and a
/// range is only probed, then released until the gateway binds it.
static HANDED_OUT: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());

/// An even base port with `pairs` free RTP/RTCP pairs on loopback (checked,
/// then released: the gateway binds them right after). The ranges lie below
/// Linux's ephemeral range (32768 and up), where `free_udp()`, sipp and the
/// QUIC clients' sockets land, and never overlap within one test binary.
pub fn free_rtp_range(pairs: u16) -> (u16, u16) {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let base = 10_000 + 2 * fastrand::u16(0..(11_000 - 2 * pairs));
        let last = base + 2 * pairs - 1;
        if handed.iter().any(|&(a, b)| base <= b && a <= last) {
            continue;
        }
        let socks: Vec<_> = (base..=last)
            .map_while(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
            .collect();
        if socks.len() == usize::from(2 * pairs) {
            handed.push((base, last));
            return (base, last);
        }
    }
    panic!("no free RTP port range on loopback");
}

/// One gateway with the phone bridge on.
pub struct SipGateway {
    pub id: String,
    pub cfg: PathBuf,
    pub sip_port: u16,
    /// The RTP port range (first, last) the gateway binds.
    pub rtp_ports: (u16, u16),
    pub metrics: std::net::SocketAddr,
    pub proc: Option<Proc>,
}

impl SipGateway {
    /// Write the config (`digest` e.g. `["sha-256", "md5"]`) without starting.
    /// Sources allowed: all of loopback, unless `extra_sip` sets `allow`.
    pub fn configure(lab: &Lab, id: &str, digest: &str, extra_sip: &str) -> SipGateway {
        let sip_port = crate::lab::free_udp_tcp();
        let (a, b) = free_rtp_range(20);
        let allow = match extra_sip.contains("allow =") {
            true => "",
            false => "allow = [\"127.0.0.0/8\"]\n",
        };
        let extra = format!(
            "[capture]\ndevice = \"null\"\n[playback]\nenabled = false\n[sip]\nenabled = true\n\
             listen = \"127.0.0.1:{sip_port}\"\nrtp_ports = \"{a}-{b}\"\n{allow}\
             digest = {digest}\n{extra_sip}\n"
        );
        let (cfg, metrics) = lab.gateway_config(id, lab.quic_port, &extra);
        SipGateway {
            id: id.into(),
            cfg,
            sip_port,
            rtp_ports: (a, b),
            metrics,
            proc: None,
        }
    }

    /// `voxgate phones add EXT`; returns the password it printed.
    pub fn add_phone(&self, ext: &str) -> String {
        add_phone(Path::new(bin()), &self.cfg, ext)
    }

    /// Start `voxgate run` and wait until it is connected to the relay.
    pub fn start(&mut self, lab: &Lab) {
        self.start_with(lab, Path::new(bin()), &[]);
    }

    /// [`SipGateway::start`] with another build of `voxgate` (a bench's
    /// baseline) and `env` added to its environment.
    pub fn start_with(&mut self, lab: &Lab, binary: &Path, env: &[(String, String)]) {
        let mut p = lab.start_gateway_with(binary, &self.cfg, env);
        let m = self.metrics;
        let t0 = std::time::Instant::now();
        while metric(m, "voxgate_relay_connected") < 1.0 {
            p.assert_running();
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "gateway did not connect"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(self.metrics, name)
    }

    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// Wait until `n` extensions are registered here.
    pub fn wait_registered(&self, n: f64) {
        wait_for(Duration::from_secs(15), "phone registration", || {
            self.metric("voxgate_sip_registered_extensions") >= n
        });
    }
}

/// `BINARY phones add EXT -c CFG`; returns the password it printed.
pub fn add_phone(binary: &Path, cfg: &Path, ext: &str) -> String {
    let out = Command::new(binary)
        .args(["phones", "add", ext, "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "phones add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("password:")
                .map(|p| p.trim().to_string())
        })
        .expect("password line")
}

/// A baresip desk phone: one account, audio from a WAV file (aufile), what
/// it hears dumped to WAV (sndfile), G.711/G.722 codecs.
pub struct Baresip {
    pub dir: PathBuf,
    pub dumps: PathBuf,
}

impl Baresip {
    pub fn new(
        dir: &Path,
        name: &str,
        gw: &SipGateway,
        ext: &str,
        password: &str,
        source_wav: &Path,
    ) -> Baresip {
        let dir = dir.join(format!("baresip-{name}"));
        let dumps = dir.join("dumps");
        std::fs::create_dir_all(&dumps).unwrap();
        let port = free_udp();
        // Its RTP ports come from the same non-overlapping ranges as the
        // gateways' (baresip would otherwise pick anywhere in 1024-49152).
        let (rtp_a, rtp_b) = free_rtp_range(8);
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method epoll\nsip_listen 127.0.0.1:{port}\nrtp_ports {rtp_a}-{rtp_b}\naudio_source aufile,{src}\n\
                 audio_player aufile,{play}\naudio_alert aufile,/dev/null\n\
                 module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule g722.so\n\
                 module aufile.so\nmodule sndfile.so\nmodule_app account.so\nmodule_app menu.so\n\
                 snd_path {dumps}\n",
                src = source_wav.display(),
                play = dir.join("unused.wav").display(),
                dumps = dumps.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{ext}@127.0.0.1:{p};transport=udp>;auth_pass={password};regint=300;answermode=auto\n",
                p = gw.sip_port
            ),
        )
        .unwrap();
        Baresip { dir, dumps }
    }

    /// Run for `secs` (baresip's own -t), executing `commands` at start.
    pub fn spawn(&self, commands: &[&str], secs: u32) -> std::process::Child {
        let mut c = Command::new("baresip");
        c.arg("-f").arg(&self.dir).arg("-t").arg(secs.to_string());
        for cmd in commands {
            c.arg("-e").arg(cmd);
        }
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("baresip.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("baresip (Debian package baresip-core; scripts/deps installs it)")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("baresip.log")).unwrap_or_default()
    }

    /// The WAV of what this phone heard (sndfile's `-dec.wav`).
    pub fn heard(&self) -> Option<PathBuf> {
        std::fs::read_dir(&self.dumps)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
    }
}

/// A SIPp scenario, or a fragment of one, from `tests/sipp/` as written:
/// its `{{NAME}}` placeholders are filled with [`fill`].
pub fn sipp_file(name: &str) -> String {
    let p = crate::lab::repo().join("tests/sipp").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `text` with every `{{KEY}}` replaced by its value, in order (a value
/// may bring placeholders of its own for later pairs to fill).
pub fn fill(text: &str, vars: &[(&str, &str)]) -> String {
    let mut t = text.to_string();
    for (k, v) in vars {
        t = t.replace(&format!("{{{{{k}}}}}"), v);
    }
    t
}

/// Phone `ext` answering a call (tests/sipp/callee.xml) with its media at
/// `media_port`, then waiting for the BYE.
pub fn callee_scenario(ext: &str, media_port: u16) -> String {
    fill(
        &sipp_file("callee.xml"),
        &[
            (
                "CALLEE_END",
                // SIPp refuses a variable (the caller, from callee.xml)
                // that is never used.
                &(r#"  <nop><action><log message="INVITE from [$caller]"/></action></nop>
"#
                .to_string()
                    + &sipp_file("caller-gets-bye.xml")),
            ),
            ("SINK_PORT", &media_port.to_string()),
            ("EXT", ext),
        ],
    )
}

/// The REGISTER scenario (tests/sipp/register.xml) for phone `ext`,
/// answering the digest challenge and expecting status `expect`; with
/// `log_algorithm`, the challenge's algorithm must be named and is logged
/// (`challenge algorithm ...`, in sipp's `-trace_logs`).
pub fn register_scenario(ext: &str, password: &str, expect: u16, log_algorithm: bool) -> String {
    let on_challenge = if log_algorithm {
        sipp_file("register-challenge-algorithm.xml")
    } else {
        String::new()
    };
    fill(
        &sipp_file("register.xml"),
        &[
            ("ON_CHALLENGE", &on_challenge),
            ("RESPONSE", &expect.to_string()),
            ("AUTH", &sipp_auth(ext, password)),
        ],
    )
}

/// Panics if a scenario still holds a `{{NAME}}` placeholder.
pub fn assert_filled(scenario: &str) {
    if let Some(i) = scenario.find("{{") {
        let end = scenario[i..]
            .find("}}")
            .map_or(scenario.len(), |e| i + e + 2);
        panic!("scenario placeholder {} not filled", &scenario[i..end]);
    }
}

/// Wait for a child with a deadline (killed after it).
pub fn wait_child(mut c: std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            return c.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// REGISTER `ext` with `password` at `gw` through SIPp 3.7, from SIP port
/// `port` (where its callee scenario answers later); panics with SIPp's
/// output if the registration fails.
pub fn register_at(dir: &Path, gw: &SipGateway, ext: &str, password: &str, port: u16) {
    let scenario = register_scenario(ext, password, 200, true);
    let port = port.to_string();
    let out = Sipp {
        bin: &sipp37(),
        dir,
        name: &format!("register-{ext}"),
        scenario: &scenario,
        target: &format!("127.0.0.1:{}", gw.sip_port),
        args: &["-s", ext, "-p", &port],
        limit: Duration::from_secs(20),
    }
    .output();
    assert!(
        out.status.success(),
        "REGISTER {ext}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIPp 3.7.3 (Debian trixie's, with SHA-256 digest), installed by
/// scripts/sipp-trixie (scripts/deps runs it) under ~/.cache/voxgate.
pub fn sipp37() -> PathBuf {
    let base = std::env::var_os("VOXGATE_SIPP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("voxgate/sipp-3.7.3")
        });
    let p = base.join("bin/sipp");
    assert!(
        p.is_file(),
        "{} missing: run scripts/sipp-trixie (scripts/deps runs it)",
        p.display()
    );
    p
}

/// The `[authentication]` keyword of a sipp scenario with the phone's
/// digest credentials written into it, so that the password never appears
/// in sipp's argv (`-au`/`-ap`), where any local user could read it in
/// /proc. The scenario file is written mode 0600 ([`Sipp`]).
/// (SIPp 3.6 and 3.7 do not expand injection fields inside this keyword,
/// so an `-inf` file cannot carry them.)
pub fn sipp_auth(user: &str, password: &str) -> String {
    format!("[authentication username={user} password={password}]")
}

/// One sipp run: a scenario (XML text) against `target`, bounded by
/// `limit`, its files (`NAME.xml`, `NAME-errors.log`) in `dir`.
pub struct Sipp<'a> {
    /// The sipp binary: `Path::new("sipp")` (Debian's) or [`sipp37`].
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub name: &'a str,
    pub scenario: &'a str,
    pub target: &'a str,
    pub args: &'a [&'a str],
    pub limit: Duration,
}

impl Sipp<'_> {
    /// Runs it to the end.
    pub fn output(&self) -> Output {
        self.command()
            .output()
            .expect("sipp (Debian package sip-tester; scripts/deps installs it)")
    }

    /// Starts it in the background (a phone that answers while the test
    /// places the call); output goes to `NAME.out` in `dir`.
    pub fn spawn(&self) -> std::process::Child {
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join(format!("{}.out", self.name))).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp")
    }

    fn command(&self) -> Command {
        let Sipp {
            bin,
            dir,
            name,
            scenario,
            target,
            args,
            limit,
        } = *self;
        assert!(
            !args.contains(&"-ap"),
            "{name}: a password in sipp's argv; put it in the scenario with sipp_auth"
        );
        assert_filled(scenario);
        let file = dir.join(format!("{name}.xml"));
        // Owner-only: a scenario may hold a test phone's credentials (sipp_auth).
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| f.write_all(scenario.as_bytes()))
                .unwrap();
        }
        let mut c = Command::new("timeout");
        c.arg(limit.as_secs().to_string())
            .arg(bin)
            .arg(target)
            .arg("-sf")
            .arg(&file)
            .args(["-i", "127.0.0.1"]);
        // A caller that needs a known SIP port (a phone that registers and then
        // answers there) passes its own -p.
        if !args.contains(&"-p") {
            c.arg("-p").arg(free_udp().to_string());
        }
        c.args([
            "-m",
            "1",
            "-l",
            "1",
            "-nostdin",
            "-timeout",
            "10s",
            "-timeout_error",
        ])
        .args(["-trace_err", "-error_file"])
        .arg(dir.join(format!("{name}-errors.log")))
        .args(args)
        .current_dir(dir);
        c
    }
}

/// SIPp's message and log traces of run `name` in `dir`
/// (`NAME-messages.log`, `NAME-logs.log`).
pub struct SippTrace {
    msgs: PathBuf,
    logs: PathBuf,
}

impl SippTrace {
    pub fn new(dir: &Path, name: &str) -> SippTrace {
        SippTrace {
            msgs: dir.join(format!("{name}-messages.log")),
            logs: dir.join(format!("{name}-logs.log")),
        }
    }

    /// The sipp arguments that write them.
    pub fn args(&self) -> [&str; 6] {
        [
            "-trace_msg",
            "-message_file",
            self.msgs.to_str().unwrap(),
            "-trace_logs",
            "-log_file",
            self.logs.to_str().unwrap(),
        ]
    }

    /// Both, messages first (empty where sipp wrote nothing).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.msgs).unwrap_or_default()
            + &std::fs::read_to_string(&self.logs).unwrap_or_default()
    }
}

/// Two started boxes on `lab`'s relay: gateway `gw-a` with phone 201 and
/// gateway `gw-b` with phone 301 (`digest`: their `[sip]` digest list), and
/// the phones' passwords. B's gateway drops first, as two locals would.
pub struct TwoBoxes {
    pub b: SipGateway,
    pub a: SipGateway,
    pub pa: String,
    pub pb: String,
}

impl TwoBoxes {
    pub fn start(lab: &Lab, digest: &str) -> TwoBoxes {
        let mut a = SipGateway::configure(lab, "gw-a", digest, "");
        let mut b = SipGateway::configure(lab, "gw-b", digest, "");
        let pa = a.add_phone("201");
        let pb = b.add_phone("301");
        a.start(lab);
        b.start(lab);
        TwoBoxes { b, a, pa, pb }
    }
}

/// A free TCP port (re-exported for tests).
pub fn tcp_port() -> u16 {
    free_tcp()
}
