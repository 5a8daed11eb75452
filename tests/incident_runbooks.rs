//! Every runbook in docs/INCIDENT.md, run end to end: the test extracts the
//! blocks marked `runbook=NAME` from the document and runs them with bash,
//! in order, against a running relay and real devices, then checks that
//! the incident is over (the stolen box refused within a second and its
//! replacement enrolled under the same id, the leaked token useless).
//!
//! `where=box` blocks run as on another box: `voxgate` on their PATH is a
//! wrapper that gives `voxgate setup` this lab's key directory, machine id
//! and config path (what a real box has at the default places); every other
//! command is the real binary, unchanged.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use voxgate_testkit::enroll::{
    MACHINE_ID, SERVER_NAME, Setup, audit, fingerprint, machine_id, secret_file, token,
};
use voxgate_testkit::lab::{Lab, bin};
use voxgate_testkit::session::{Session, runtime};

/// A block of a runbook: where it runs, and its text.
#[derive(Debug, Clone)]
struct Block {
    place: String,
    script: String,
}

/// The blocks of runbook `name`, in document order.
fn runbook(name: &str) -> Vec<Block> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/INCIDENT.md"))
            .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in doc.lines() {
        if let Some(b) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                blocks.push(current.take().unwrap());
            } else {
                b.script.push_str(line);
                b.script.push('\n');
            }
            continue;
        }
        let Some(info) = line.trim_start().strip_prefix("```sh ") else {
            continue;
        };
        let attrs: HashMap<&str, &str> = info
            .split_whitespace()
            .filter_map(|a| a.split_once('='))
            .collect();
        if attrs.get("runbook") == Some(&name) {
            current = Some(Block {
                place: attrs.get("where").expect("where=relay|box").to_string(),
                script: String::new(),
            });
        }
    }
    assert!(
        !blocks.is_empty(),
        "no runbook `{name}` in docs/INCIDENT.md"
    );
    blocks
}

/// Runs runbooks in a lab: the variables they read, and a PATH per place.
struct Runner {
    env: Vec<(String, String)>,
    relay_path: PathBuf,
    box_path: PathBuf,
}

impl Runner {
    fn new(lab: &Lab, device: &str, box_dir: &Path) -> Runner {
        let relay_path = lab.dir.join("runbook-relay-bin");
        let box_path = lab.dir.join("runbook-box-bin");
        std::fs::create_dir_all(&relay_path).unwrap();
        std::fs::create_dir_all(&box_path).unwrap();
        let _ = std::fs::remove_file(relay_path.join("voxgate"));
        std::os::unix::fs::symlink(bin(), relay_path.join("voxgate")).unwrap();
        let mid = machine_id(&lab.dir, "box-machine-id", MACHINE_ID);
        let wrapper = box_path.join("voxgate");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/bash\nif [ \"$1\" = setup ]; then\n  exec {bin} \"$@\" --dir {dir} --machine-id {mid} --serial {serial} --config-out {dir}.toml\nfi\nexec {bin} \"$@\"\n",
                bin = bin(),
                dir = box_dir.display(),
                mid = mid.display(),
                serial = lab.dir.join("no-serial").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![
            (
                "RELAY_CONFIG".into(),
                lab.dir.join("relay.toml").display().to_string(),
            ),
            ("DEVICE".into(), device.into()),
            (
                "TOKEN_FILE".into(),
                lab.dir.join("runbook.token").display().to_string(),
            ),
            ("RELAY".into(), format!("127.0.0.1:{}", lab.quic_port)),
            ("SERVER_NAME".into(), SERVER_NAME.into()),
            ("CA_FINGERPRINT".into(), fingerprint(lab)),
        ];
        Runner {
            env,
            relay_path,
            box_path,
        }
    }

    fn run(&self, block: &Block) -> Output {
        let dir = match block.place.as_str() {
            "relay" => &self.relay_path,
            "box" => &self.box_path,
            other => panic!("unknown place `{other}`"),
        };
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block.script])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runbook block failed:\n{}\nstdout: {}\nstderr: {}",
            block.script,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

#[test]
fn stolen_box() {
    let lab = Lab::new("runbook-stolen", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-12";
    let stolen_cfg = Setup::new(&lab, device).run();
    let replacement = lab.dir.join("replacement");
    let runner = Runner::new(&lab, device, &replacement);
    let blocks = runbook("stolen-box");
    assert_eq!(
        blocks.iter().map(|b| b.place.as_str()).collect::<Vec<_>>(),
        ["relay", "box", "relay"]
    );
    let rt = runtime();
    let live = rt
        .block_on(Session::open_enrolled(&lab, &stolen_cfg, device))
        .expect("the stolen box is online");
    // The first block cuts it off: within a second.
    let t0 = Instant::now();
    let cut = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            rt.block_on(live.closed_within(Duration::from_secs(5)))
                .map(|why| (t0.elapsed(), why))
        });
        let out = runner.run(&blocks[0]);
        let audit_text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(audit_text.contains("device_revoked"), "{audit_text}");
        waiter.join().unwrap()
    });
    let (after, why) = cut.expect("the stolen box's session stayed open");
    println!("stolen box cut after {after:?}: {why}");
    assert!(after < Duration::from_millis(1_200), "took {after:?}");
    assert!(why.contains("revoked"), "{why}");
    // The replacement enrolls under the same id; the relay lists it.
    runner.run(&blocks[1]);
    let listed = runner.run(&blocks[2]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed
        .lines()
        .find(|l| l.starts_with(device))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("active"), "{line}");
    rt.block_on(async {
        Session::open_enrolled(&lab, &replacement.with_extension("toml"), device)
            .await
            .expect("the replacement connects");
        let e = Session::open_enrolled(&lab, &stolen_cfg, device)
            .await
            .err()
            .expect("the stolen box connected again");
        assert!(e.contains("revoked"), "{e}");
    });
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "reenrolled" && e.2 == device && e.3.contains("revocation undone")),
        "{log:?}"
    );
    relay.stop();
}

#[test]
fn leaked_token() {
    let lab = Lab::new("runbook-token", "mode = \"none\"");
    let mut relay = lab.start_relay();
    let device = "shop-3";
    let leaked = token(&lab, device, Some(3600));
    let real_box = lab.dir.join("real-box");
    let runner = Runner::new(&lab, device, &real_box);
    for block in runbook("leaked-token") {
        assert_eq!(block.place, "relay");
        let out = runner.run(&block);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(&leaked), "a secret in the runbook's output");
    }
    // The leaked token enrolls nothing.
    let (o, _) = Setup::new(&lab, device)
        .token_file(&secret_file(&lab.dir, "leaked", &leaked))
        .dir(&lab.dir.join("attacker"))
        .config_out(&lab.dir.join("attacker.toml"))
        .output();
    assert!(!o.status.success(), "the leaked token enrolled a box");
    // The new one, from the runbook's token file, does.
    let new_token = lab.dir.join("runbook.token");
    assert_eq!(
        std::fs::metadata(&new_token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    Setup::new(&lab, device).token_file(&new_token).run();
    let log = audit(&lab);
    assert!(
        log.iter()
            .any(|e| e.0 == "enroll_rejected" && e.2 == device && e.3 == "token revoked"),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e.0 == "token_revoked" && e.2 == device));
    relay.stop();
}
