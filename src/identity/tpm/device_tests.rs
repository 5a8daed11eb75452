//! The device transport (one `write()` with the command, one `read()` for
//! the response, on a worker thread) against a real TPM: swtpm's chardev
//! mode, which speaks exactly that protocol, over a socketpair.

use super::transport::Device;
use super::*;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};

struct Kill(Child, PathBuf);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn device_transport_against_swtpm_chardev() {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    if Command::new("swtpm").arg("--version").output().is_err() {
        eprintln!("swtpm not installed (apt-get install swtpm): skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("voxgate-tpm-chardev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let child = Command::new("swtpm")
        .args(["chardev", "--tpm2", "--fd", &theirs.as_raw_fd().to_string()])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child, dir);
    drop(theirs);

    let conn: Box<dyn Transport> = Box::new(Device::spawn(ours, false).unwrap());
    let tpm = Tpm {
        spec: TpmSpec::Device("/dev/swtpm-chardev".into()),
        options: TpmOptions::default(),
        state: Mutex::new(State {
            conn: Some(conn),
            ..State::default()
        }),
    };
    assert_eq!(tpm.get_random(40).unwrap().len(), 40);
    let blob = tpm.create_device_key().unwrap();
    let public = tpm.public_key(&blob).unwrap();
    for i in 0..20u32 {
        let msg = i.to_be_bytes();
        let sig = tpm.sign(&blob, &msg).unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &public[..],
        )
        .verify(&msg, &sig)
        .unwrap();
    }
    let sealed = tpm.seal(&[7; 32]).unwrap();
    assert_eq!(&tpm.unseal(&sealed).unwrap()[..], &[7; 32]);
}
