//! The operator API in a lab: an `[api]` section for the lab's relay, the
//! operator's own certificate (a CA and a leaf for 127.0.0.1 and
//! `localhost`, made here), API keys made by `voxgate relay api-key`, and
//! curl as the client (the key goes to curl on its standard input, never
//! in its argv).

use crate::lab::{Lab, bin, free_tcp};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The operator's certificate for the API.
pub struct OperatorCert {
    /// The CA that signed it (what clients trust).
    pub ca: PathBuf,
    /// The chain (leaf, CA).
    pub cert: PathBuf,
    /// The key (PEM, 0600).
    pub key: PathBuf,
    /// base64 of the SHA-256 of the leaf's SubjectPublicKeyInfo (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_b64: String,
}

/// The operator's CA: its certificate and its issuer.
fn operator_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "operator test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    (ca_cert, Issuer::new(ca_params, ca_key))
}

/// A CA and a leaf certificate for 127.0.0.1 and `localhost` in `dir`.
pub fn operator_cert(dir: &Path) -> OperatorCert {
    use base64::Engine as _;
    use rcgen::{CertificateParams, KeyPair, SanType};
    let (ca_cert, issuer) = operator_ca();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let leaf = p.signed_by(&key, &issuer).unwrap();
    let out = OperatorCert {
        ca: dir.join("api-ca.pem"),
        cert: dir.join("api.pem"),
        key: dir.join("api.key"),
        spki_b64: base64::engine::general_purpose::STANDARD.encode(
            ring::digest::digest(
                &ring::digest::SHA256,
                &rcgen::PublicKeyData::subject_public_key_info(&key),
            )
            .as_ref(),
        ),
    };
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    std::fs::write(&out.cert, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    voxgate::pki::files::write_new(&out.key, key.serialize_pem().as_bytes(), 0o600).unwrap();
    out
}

/// The operator's CA signs the request `csr` (PEM, as `voxgate relay
/// api-tls request` writes it) for the key in file `key`: the chain goes to
/// `api.pem` in `dir`, the CA to `api-ca.pem`.
pub fn sign_request(dir: &Path, csr: &Path, key: &Path) -> OperatorCert {
    use base64::Engine as _;
    use rcgen::CertificateSigningRequestParams;
    let (ca_cert, issuer) = operator_ca();
    let req = CertificateSigningRequestParams::from_pem(&std::fs::read_to_string(csr).unwrap())
        .expect("a certificate request");
    let spki = rcgen::PublicKeyData::subject_public_key_info(&req.public_key);
    let leaf = req.signed_by(&issuer).unwrap();
    let out = OperatorCert {
        ca: dir.join("api-ca.pem"),
        cert: dir.join("api.pem"),
        key: key.to_path_buf(),
        spki_b64: base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref()),
    };
    std::fs::write(&out.ca, ca_cert.pem()).unwrap();
    std::fs::write(&out.cert, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    out
}

/// The operator's key sealed to the lab relay's machine binding (as the
/// relay's own keys are): `api.key.sealed` beside `api.key`.
pub fn seal_key(lab: &Lab, cert: &OperatorCert) -> PathBuf {
    let pem = std::fs::read(&cert.key).unwrap();
    let der = voxgate::pki::files::parse_key(&pem).unwrap();
    let id = std::fs::read_to_string(lab.dir.join("ca-machine-id")).unwrap();
    let material = voxgate::pki::sealed::Material::new(id.trim(), None).unwrap();
    let sealed = voxgate::pki::sealed::seal(&material, der.secret_der()).unwrap();
    let path = cert.key.with_extension("key.sealed");
    voxgate::pki::files::write_new(&path, &sealed, 0o600).unwrap();
    path
}

/// The API of a lab's relay.
pub struct Api {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The CA file clients trust.
    pub ca: PathBuf,
    /// The host name clients ask for (resolved to 127.0.0.1).
    pub host: String,
}

/// Add `[api]` to the lab's relay config: `listen` on a free port, and
/// `body` (cors, limits, cert). With `cert`, the operator's certificate;
/// without, the relay's own (the fleet CA's).
pub fn enable(lab: &Lab, body: &str, cert: Option<&OperatorCert>) -> Api {
    let port = free_tcp();
    let cfg = lab.dir.join("relay.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    // `[api]` before its `[[api.limit]]` tables, which `body` may hold.
    let (files, ca, host) = match cert {
        Some(c) => (
            format!(
                "cert = \"{}\"\nkey = \"{}\"\n",
                c.cert.display(),
                c.key.display()
            ),
            c.ca.clone(),
            "localhost".to_string(),
        ),
        None => (
            String::new(),
            lab.dir.join("relay/ca.pem"),
            "relay.voxgate.test".to_string(),
        ),
    };
    text.push_str(&format!(
        "\n[api]\nlisten = \"127.0.0.1:{port}\"\n{files}{body}\n"
    ));
    std::fs::write(&cfg, text).unwrap();
    Api { port, ca, host }
}

/// A key with `scopes` (comma-separated), made by `voxgate relay api-key
/// create` (`extra`: more arguments, e.g. `--expires-in-s`).
pub fn create_key(lab: &Lab, name: &str, scopes: &str, extra: &[&str]) -> String {
    let mut args = vec!["api-key", "create", "--name", name, "--scopes", scopes];
    args.extend(extra);
    let out = lab.relay_cmd(&args);
    assert!(
        out.status.success(),
        "api-key create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The id of a key (`vgk_<id>_...`).
pub fn key_id(key: &str) -> String {
    key.split('_').nth(1).unwrap_or_default().to_string()
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Header lines, lowercase names.
    pub headers: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        let want = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&want))
            .map(|l| l[want.len()..].trim().to_string())
    }

    /// The JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The problem's `code` (and checks the media type).
    pub fn code(&self) -> String {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{self:?}"
        );
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

/// A request to the API.
pub struct Req<'a> {
    /// Method.
    pub method: &'a str,
    /// Path (`/v1/...`).
    pub path: &'a str,
    /// The API key, if any.
    pub key: Option<&'a str>,
    /// A body and its content type.
    pub body: Option<(&'a str, String)>,
    /// More header lines (`Name: value`).
    pub headers: Vec<String>,
    /// The source address to connect from (a 127.x address).
    pub from: Option<&'a str>,
}

impl<'a> Req<'a> {
    /// `method path` with `key`.
    pub fn new(method: &'a str, path: &'a str, key: Option<&'a str>) -> Req<'a> {
        Req {
            method,
            path,
            key,
            body: None,
            headers: Vec::new(),
            from: None,
        }
    }

    /// With a JSON body.
    pub fn json(mut self, body: &str) -> Self {
        self.body = Some(("application/json", body.to_string()));
        self
    }
}

impl Api {
    /// The base URL.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// Send `r` with curl.
    pub fn send(&self, r: Req<'_>) -> Answer {
        let dir = std::env::temp_dir();
        let head = dir.join(format!("voxgate-api-head-{}", fastrand::u64(..)));
        let mut c = Command::new("curl");
        c.args(["-s", "-S", "--max-time", "20", "-X", r.method])
            .arg("--cacert")
            .arg(&self.ca)
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.port))
            .arg("-D")
            .arg(&head)
            .args(["-H", "@-"]);
        if let Some(from) = r.from {
            c.args(["--interface", from]);
        }
        if let Some((ctype, body)) = &r.body {
            c.arg("-H")
                .arg(format!("Content-Type: {ctype}"))
                .arg("--data-binary")
                .arg(body);
        }
        c.arg(format!("{}{}", self.url(), r.path));
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        {
            let mut stdin = child.stdin.take().unwrap();
            if let Some(k) = r.key {
                writeln!(stdin, "Authorization: Bearer {k}").unwrap();
            }
            for h in &r.headers {
                writeln!(stdin, "{h}").unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        let headers = std::fs::read_to_string(&head).unwrap_or_default();
        let _ = std::fs::remove_file(&head);
        assert!(
            out.status.success(),
            "curl {} {}: {}",
            r.method,
            r.path,
            String::from_utf8_lossy(&out.stderr)
        );
        let status = headers
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Answer {
            status,
            headers: headers.to_ascii_lowercase(),
            body: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    /// `GET path` with `key`.
    pub fn get(&self, path: &str, key: &str) -> Answer {
        self.send(Req::new("GET", path, Some(key)))
    }
}

/// The `voxgate` binary's `relay api-key ARGS` against the lab.
pub fn api_key_cmd(lab: &Lab, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("relay")
        .arg("api-key")
        .args(args)
        .arg("--config")
        .arg(lab.dir.join("relay.toml"))
        .output()
        .unwrap()
}
