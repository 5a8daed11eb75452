//! docs/INCIDENT.md's runbooks as tests run them: the blocks marked
//! `runbook=NAME`, extracted in document order, and a runner that gives
//! them the variables they read and runs them with bash.
//!
//! `where=box` blocks run as on another box: `voxgate` on their PATH is a
//! wrapper that gives `voxgate setup` the lab's key directory, machine id
//! and config path (what a real box has at the default places); every other
//! command is the real binary, unchanged.

use crate::enroll::{MACHINE_ID, SERVER_NAME, fingerprint, machine_id};
use crate::lab::{Lab, bin, repo};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A block of a runbook: where it runs, and its text.
#[derive(Debug, Clone)]
pub struct Block {
    /// `relay` or `box`.
    pub place: String,
    /// The commands.
    pub script: String,
}

/// The blocks of runbook `name`, in document order.
pub fn runbook(name: &str) -> Vec<Block> {
    let doc = std::fs::read_to_string(repo().join("docs/INCIDENT.md")).unwrap();
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
pub struct Runner {
    /// The variables the blocks read.
    pub env: Vec<(String, String)>,
    relay_path: PathBuf,
    box_path: PathBuf,
}

impl Runner {
    /// A runner for runbooks about `device`; `box_dir` is where a box's
    /// `voxgate setup` writes its key, and its config beside it.
    pub fn new(lab: &Lab, device: &str, box_dir: &Path) -> Runner {
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
                "#!/bin/bash\nif [ \"$1\" = setup ]; then\n  exec {bin} \"$@\" --dir {dir} --machine-id {mid} --serial {serial} --config-out {dir}.toml --clock-source {clock}\nfi\nexec {bin} \"$@\"\n",
                bin = bin(),
                dir = box_dir.display(),
                mid = mid.display(),
                serial = lab.dir.join("no-serial").display(),
                clock = crate::enroll::synced_clock(&lab.dir),
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

    /// Set a variable the blocks read (e.g. `GATEWAY_CONFIG`, `EXT`).
    pub fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.into(), value.into()));
    }

    /// Run one block (asserts that it succeeded); its output.
    pub fn run(&self, block: &Block) -> Output {
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
