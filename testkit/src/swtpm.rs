//! A real software TPM (swtpm, Debian packages `swtpm swtpm-tools`) on free
//! loopback ports, with its state in a directory of its own, killed on
//! drop. A missing swtpm fails the test: it is never skipped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
    /// A scratch state directory ([`Swtpm::start`]), removed on drop
    /// unless the test failed.
    scratch: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Swtpm {
    /// Start a fresh TPM with its state in a new directory under the
    /// target's tmp, removed when dropped (kept when the test failed).
    pub fn start(name: &str) -> Swtpm {
        let dir = crate::lab::target_tmpdir().join(format!("tpm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut sw = Swtpm::start_in(dir);
        sw.scratch = true;
        sw
    }

    /// Start swtpm on `dir` (a fresh TPM if the directory is empty).
    pub fn start_in(dir: PathBuf) -> Swtpm {
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let (port, ctrl) = (free_port(), free_port());
            let log = std::fs::File::create(dir.join("swtpm.log")).unwrap();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--server"])
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.display()))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect(
                    "swtpm not installed: run scripts/deps (apt-get install swtpm swtpm-tools)",
                );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken between probe and bind: try others
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Swtpm {
                        child,
                        dir,
                        port,
                        scratch: false,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("swtpm did not start; see {}/swtpm.log", dir.display());
    }

    /// `swtpm:127.0.0.1:PORT`, as `identity.tpm` and `--tpm` take it.
    pub fn spec(&self) -> String {
        format!("swtpm:127.0.0.1:{}", self.port)
    }

    /// The TPM spec voxgate's TPM backend opens.
    pub fn tpm_spec(&self) -> voxgate::identity::tpm::TpmSpec {
        self.spec().parse().unwrap()
    }

    /// voxgate's TPM client on this swtpm.
    pub fn open(&self) -> voxgate::identity::tpm::Tpm {
        voxgate::identity::tpm::Tpm::open_with(self.tpm_spec(), Default::default()).unwrap()
    }

    /// Stop swtpm and start it again on the same state (new ports).
    pub fn restart(mut self) -> Swtpm {
        self.stop();
        let dir = std::mem::take(&mut self.dir);
        let mut sw = Swtpm::start_in(dir);
        sw.scratch = self.scratch;
        sw
    }

    /// Freeze swtpm (SIGSTOP): its port still accepts connections, but
    /// the TPM never answers, as a hung TPM.
    pub fn freeze(&self) {
        use nix::sys::signal::{Signal, kill};
        kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGSTOP,
        )
        .unwrap();
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
        if self.scratch && !std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
