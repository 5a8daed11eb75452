//! What the webhook tests share: a test CA and receiver certificate, the
//! Python receiver (`receiver.py`, verifying with `standardwebhooks`), the
//! `relay webhook` commands, and a lab whose relay has a `[webhooks]`
//! section.

use crate::cmd::stderr;
use crate::lab::{Lab, free_tcp, repo, wait_for};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A CA and a certificate for `127.0.0.1`, `localhost`, `allowed.test`
/// and `rebind.test` under it:
/// (ca.pem, cert.pem, key.pem).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "webhook test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(
        ["127.0.0.1", "localhost", "allowed.test", "rebind.test"]
            .map(String::from)
            .to_vec(),
    )
    .unwrap();
    let cert = leaf.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
    let paths = (
        dir.join("hooks-ca.pem"),
        dir.join("hooks.pem"),
        dir.join("hooks.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

pub struct Receiver {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// The file of secrets it verifies with, one a line.
    pub secrets: PathBuf,
    log: PathBuf,
    /// The network namespace it runs in (none: the test's).
    pub netns: Option<String>,
}

impl Receiver {
    pub fn new(dir: &Path) -> Receiver {
        Receiver {
            child: None,
            port: free_tcp(),
            dir: dir.to_path_buf(),
            secrets: dir.join("receiver.secrets"),
            log: dir.join("receiver.jsonl"),
            netns: None,
        }
    }

    pub fn start(&mut self) {
        let py = repo().join(".venv/bin/python");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(py);
                c
            }
            None => Command::new(py),
        };
        let listening = self.listening();
        let child = cmd
            .arg(repo().join("tests/webhooks/receiver.py"))
            .arg(self.port.to_string())
            .args([self.dir.join("hooks.pem"), self.dir.join("hooks.key")])
            .args([&self.secrets, &self.log])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("receiver.err")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(Duration::from_secs(10), "the receiver to listen", || {
            self.listening() > listening
        });
    }

    /// How many times it started listening.
    fn listening(&self) -> usize {
        self.entries()
            .iter()
            .filter(|e| e["result"] == "listening")
            .count()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn entries(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Ids processed at `/hook`, with how many times each.
    pub fn processed(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for e in self.entries() {
            if e["result"] == "processed" {
                *out.entry(e["id"].as_str().unwrap_or("").to_string())
                    .or_default() += 1;
            }
        }
        out
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `relay webhook add URL`: (endpoint id, secret).
pub fn add(lab: &Lab, url: &str, events: &str) -> (String, String) {
    let mut args = vec!["webhook", "add", url];
    if !events.is_empty() {
        args.extend(["--events", events]);
    }
    let out = ok(lab.relay_cmd(&args));
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let secret = out
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_string();
    (id, secret)
}

/// `relay webhook test ID`: the message id.
pub fn test_message(lab: &Lab, endpoint: &str) -> String {
    let out = ok(lab.relay_cmd(&["webhook", "test", endpoint]));
    out.split_whitespace().nth(2).unwrap().to_string()
}

/// Deliveries: (webhook-id, type, endpoint, state, attempts, status, error).
pub fn deliveries(lab: &Lab) -> Vec<Vec<String>> {
    let out = ok(lab.relay_cmd(&["webhook", "deliveries", "--limit", "1000"]));
    out.lines()
        .skip(1)
        .map(|l| {
            let mut words = l.split_whitespace().map(str::to_string);
            let _n = words.next();
            let mut v: Vec<String> = words.by_ref().take(6).collect();
            v.push(words.collect::<Vec<_>>().join(" "));
            v
        })
        .collect()
}

/// A lab whose relay delivers webhooks quickly (100 ms backoff, 30
/// retries), trusts the test CA, and lets private addresses through for
/// the hosts in `allow` only.
pub fn lab_with_webhooks_allowing(name: &str, allow: &str) -> (Lab, Receiver) {
    with_webhooks(Lab::new(name, "mode = \"none\""), allow)
}

/// `lab` with the `[webhooks]` section of [`lab_with_webhooks_allowing`].
pub fn with_webhooks(lab: Lab, allow: &str) -> (Lab, Receiver) {
    let (ca, _, _) = test_pki(&lab.dir);
    let cfg = lab.dir.join("relay.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "[webhooks]\nretries = 30\nbackoff = \"100ms\"\ntimeout = \"3s\"\nallow_hosts = [{allow}]\nca_bundle = \"{}\"\n",
        ca.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let receiver = Receiver::new(&lab.dir);
    (lab, receiver)
}

/// [`lab_with_webhooks_allowing`] `127.0.0.1`.
pub fn lab_with_webhooks(name: &str) -> (Lab, Receiver) {
    lab_with_webhooks_allowing(name, "\"127.0.0.1\"")
}
