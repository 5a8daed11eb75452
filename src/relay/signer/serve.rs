//! The signer process (`voxgate relay signer`): holds the issuing CA keys,
//! answers signing requests on a unix socket, one at a time.
//!
//! It loads the issuing CA a request names from the state directory (the
//! key sealed to the machine, the sealing inputs read at start, before the
//! privilege drop; in a TPM; or a systemd credential the unit was given)
//! and keeps it; the operator's commands, run as root, give a rotation's
//! new key file to `[signer] user`, so the signer reads it without
//! privileges. It signs only what [`super::proto::check`]
//! allows, and only with an issuing CA whose certificate is valid now.

use super::proto::{self, Answer, Kind, Policy};
use crate::pki::issue;
use crate::pki::name::fingerprint;
use crate::pki::sealed::Material;
use crate::relay::authority;
use crate::relay::ca::LocalCa;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// What the signer needs.
#[derive(Debug)]
pub struct Signer {
    state_dir: PathBuf,
    material: Material,
    policy: Policy,
    loaded: HashMap<String, Arc<LocalCa>>,
}

impl Signer {
    /// A signer for the fleet in `state_dir`.
    pub fn new(state_dir: PathBuf, material: Material, policy: Policy) -> Signer {
        Signer {
            state_dir,
            material,
            policy,
            loaded: HashMap::new(),
        }
    }

    /// Load issuing CA `fp` now (before the privilege drop).
    pub fn preload(&mut self, fp: &str) -> Result<(), String> {
        self.issuer(fp).map(|_| ())
    }

    fn issuer(&mut self, fp: &str) -> Result<Arc<LocalCa>, String> {
        if let Some(ca) = self.loaded.get(fp) {
            return Ok(ca.clone());
        }
        if !fp.starts_with("SHA256:") || fp.len() != 71 {
            return Err("no such issuing CA".into());
        }
        let ca = authority::load_issuing_with(&self.state_dir, &self.material, fp)
            .map_err(|e| format!("issuing CA {fp}: {e}"))?;
        // The file name holds 16 hex digits: the certificate must be this one.
        if fingerprint(ca.cert()) != fp {
            return Err(format!(
                "issuing CA {fp}: its file holds another certificate"
            ));
        }
        let ca = Arc::new(ca);
        if self.loaded.len() >= 8 {
            self.loaded.clear();
        }
        self.loaded.insert(fp.to_string(), ca.clone());
        info!(issuing = fp, "issuing CA loaded");
        Ok(ca)
    }

    /// Answer one request body.
    pub fn answer(&mut self, body: &[u8]) -> Answer {
        let r = match proto::decode_request(body) {
            Ok(r) => r,
            Err(e) => return Answer::Refused(e.to_string()),
        };
        if let Err(why) = proto::check(&r, &self.policy) {
            warn!(kind = ?r.kind, reason = %why, "signing request refused");
            return Answer::Refused(why);
        }
        let ca = match self.issuer(r.issuer) {
            Ok(ca) => ca,
            Err(why) => return Answer::Refused(why),
        };
        let now = crate::relay::registry::now();
        let valid = x509_parser::parse_x509_certificate(ca.cert()).is_ok_and(|(_, x)| {
            x.validity().not_before.timestamp() <= now && now < x.validity().not_after.timestamp()
        });
        if !valid {
            return Answer::Refused(format!("issuing CA {} is not valid now", r.issuer));
        }
        let key = match rcgen::SubjectPublicKeyInfo::from_der(r.spki) {
            Ok(k) => k,
            Err(e) => return Answer::Refused(format!("unusable key: {e}")),
        };
        let life = super::lifetime(std::time::Duration::from_secs(r.lifetime_s));
        let issued = match r.kind {
            Kind::Device => issue::device_certificate(ca.issuer(), &key, r.name, life),
            Kind::Node => issue::node_certificate(ca.issuer(), &key, r.name, life),
            Kind::Relay => issue::relay_certificate(ca.issuer(), &key, r.name, life),
        };
        match issued {
            Ok(i) => {
                info!(kind = ?r.kind, name = r.name, serial = %i.serial.hex(), "signed");
                Answer::Signed(i.cert.der().to_vec())
            }
            Err(e) => Answer::Refused(e.to_string()),
        }
    }

    /// Serve `stream` until the other end closes it.
    pub fn serve(&mut self, stream: UnixStream) -> std::io::Result<()> {
        serve_with(stream, |body| self.answer(body))
    }

    /// [`Signer::serve`] for one of several connections, each request
    /// answered under the lock.
    pub fn serve_shared(signer: &Mutex<Signer>, stream: UnixStream) -> std::io::Result<()> {
        serve_with(stream, |body| {
            signer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answer(body)
        })
    }
}

fn serve_with(
    mut stream: UnixStream,
    mut answer: impl FnMut(&[u8]) -> Answer,
) -> std::io::Result<()> {
    let mut body = vec![0u8; proto::MAX_FRAME];
    loop {
        let mut prefix = [0u8; 2];
        match stream.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = proto::body_len(prefix).map_err(std::io::Error::other)?;
        stream.read_exact(&mut body[..n])?;
        let answer = answer(&body[..n]);
        let mut out = Vec::with_capacity(1024);
        proto::encode_answer(&answer, &mut out).map_err(std::io::Error::other)?;
        stream.write_all(&out)?;
    }
}
