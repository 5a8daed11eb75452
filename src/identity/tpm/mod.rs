//! TPM 2.0 key backend: the device key is an ECDSA P-256 key created inside
//! the TPM, under the owner hierarchy's storage primary, and its private
//! part never leaves the TPM.
//!
//! Guarantees:
//! - The key is fixedTPM and fixedParent with sensitiveDataOrigin: the TPM
//!   generated it and will not duplicate it. What is stored on disk
//!   ([`KeyBlob`]) is the public area and the private area wrapped by the
//!   storage primary; only this TPM, with its current owner seed, loads it.
//! - The storage primary is re-created from the TCG SRK template for each
//!   operation (deterministic: the same key every time) and every object
//!   loaded for an operation is flushed before the call returns, so a TPM
//!   without a resource manager (swtpm, `/dev/tpm0`) never fills up.
//!   [`TpmOptions::cache_primary`] keeps one primary loaded per [`Tpm`]
//!   instead, flushed on drop (the default on `/dev/tpmrm*`, whose kernel
//!   resource manager also flushes after a crash).
//! - Every exchange with the TPM has a time limit ([`TpmOptions::timeout`])
//!   and responses are bounded ([`transport::MAX_RESPONSE`]); a TPM that does
//!   not answer gives [`TpmError::Timeout`] after one time limit, never a
//!   hang. After a transport failure the next call reconnects and first
//!   flushes what the broken connection left loaded.
//! - Every TPM response code becomes a [`TpmError::Rc`] with an
//!   [`RcKind`] and a hint. Unsealed data is only held in `Zeroizing` buffers.
//!
//! The calls block (a real TPM takes tens of milliseconds per signature);
//! async code calls them through `spawn_blocking`, and the rustls signer
//! (which must answer synchronously) through `block_in_place`
//! (`signer::blocking`). [`Tpm`] is `Send + Sync` and serializes its
//! users with a mutex.

pub mod blob;
pub mod commands;
mod conn;
pub mod der;
#[cfg(test)]
mod device_tests;
pub mod error;
mod public;
mod signer;
pub mod templates;
pub mod transport;

pub use blob::{BlobError, KeyBlob, SealedBlob};
pub use error::{RcKind, TpmError};
pub use signer::TpmKey;
pub use tpm2_protocol::data::TpmaObject;

use blob::{Object, ObjectKind};
use commands::{Create, MAX_SEALED};
use conn::Conn;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use tpm2_protocol::basic::{TpmHandle, TpmUint16};
use tpm2_protocol::data::{TpmRh, TpmtSymDef};
use tpm2_protocol::frame as f;
use transport::Transport;
use zeroize::Zeroizing;

/// Time limit of one exchange with the TPM.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most random bytes one [`Tpm::get_random`] call returns.
pub const MAX_RANDOM: usize = 1024;

/// Where the TPM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmSpec {
    /// A TPM character device: `device:/dev/tpmrm0`.
    Device(PathBuf),
    /// swtpm's (TCG simulator protocol) TCP port: `swtpm:127.0.0.1:2321`.
    Simulator(SocketAddr),
}

impl std::str::FromStr for TpmSpec {
    type Err = TpmError;
    fn from_str(s: &str) -> Result<Self, TpmError> {
        let bad = |what| TpmError::Spec {
            spec: s.into(),
            what,
        };
        if let Some(path) = s.strip_prefix("device:") {
            if !path.starts_with('/') {
                return Err(bad("the device path must be absolute"));
            }
            Ok(TpmSpec::Device(path.into()))
        } else if let Some(addr) = s.strip_prefix("swtpm:") {
            addr.parse()
                .map(TpmSpec::Simulator)
                .map_err(|_| bad("not an IP:PORT address"))
        } else {
            Err(bad("unknown kind"))
        }
    }
}

impl std::fmt::Display for TpmSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TpmSpec::Device(p) => write!(f, "device:{}", p.display()),
            TpmSpec::Simulator(a) => write!(f, "swtpm:{a}"),
        }
    }
}

// Shared across threads (rustls signers, spawn_blocking callers).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tpm>();
    send_sync::<TpmKey>();
};

/// How a [`Tpm`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpmOptions {
    /// Time limit of one exchange (command written, response read).
    pub timeout: Duration,
    /// Keep the storage primary loaded between operations (flushed on drop;
    /// a process that dies leaks it on a TPM without resource manager).
    pub cache_primary: bool,
    /// Close the connection after each operation, so that other processes
    /// can use a TPM that serves one connection at a time (swtpm): the
    /// relay's signer and `voxgate relay ca rotate-issuing` share one.
    pub shared: bool,
}

impl TpmOptions {
    /// The defaults, with the primary cached where the kernel resource
    /// manager cleans up after a crashed process (`/dev/tpmrm*`).
    pub fn recommended(spec: &TpmSpec) -> Self {
        let rm = matches!(spec, TpmSpec::Device(p) if transport::is_resource_manager(p));
        TpmOptions {
            cache_primary: rm,
            ..TpmOptions::default()
        }
    }
}

impl Default for TpmOptions {
    fn default() -> Self {
        TpmOptions {
            timeout: DEFAULT_TIMEOUT,
            cache_primary: false,
            shared: false,
        }
    }
}

/// A connection to a TPM. swtpm serves one connection at a time: open one
/// `Tpm` per process and share it (`Arc<Tpm>`).
pub struct Tpm {
    spec: TpmSpec,
    options: TpmOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conn: Option<Box<dyn Transport>>,
    primary: Option<u32>,
    /// Handles left loaded when a connection broke: flushed on reconnect
    /// (unless the kernel resource manager already did).
    stale: Vec<u32>,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("spec", &self.spec)
            .field("options", &self.options)
            .finish()
    }
}

impl Tpm {
    /// Open the TPM named by `spec` (`device:/dev/tpmrm0` or
    /// `swtpm:127.0.0.1:PORT`) with [`TpmOptions::recommended`].
    pub fn open(spec: &str) -> Result<Tpm, TpmError> {
        let spec: TpmSpec = spec.parse()?;
        let options = TpmOptions::recommended(&spec);
        Tpm::open_with(spec, options)
    }

    /// Open a TPM. Connects at once, so that a missing TPM is reported here.
    pub fn open_with(spec: TpmSpec, options: TpmOptions) -> Result<Tpm, TpmError> {
        let conn = connect(&spec, options.timeout)?;
        let state = State {
            conn: Some(conn),
            ..State::default()
        };
        Ok(Tpm {
            spec,
            options,
            state: Mutex::new(state),
        })
    }

    /// Where this TPM is.
    pub fn spec(&self) -> &TpmSpec {
        &self.spec
    }

    /// Run `f` on the connection (reconnecting if the last one broke) with
    /// the primary cache; drop the connection if `f` leaves it out of step.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn<'_>, &mut Option<u32>) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let (mut t, reconnected) = match st.conn.take() {
            Some(t) => (t, false),
            None => (connect(&self.spec, self.options.timeout)?, true),
        };
        let mut conn = Conn {
            t: t.as_mut(),
            timeout: self.options.timeout,
            orphans: Vec::new(),
        };
        if reconnected && !conn.t.flushes_on_close() {
            while let Some(h) = st.stale.pop() {
                if let Err(e) = conn.flush(h)
                    && e.breaks_transport()
                {
                    st.stale.push(h);
                    return Err(e);
                }
            }
        }
        st.stale.clear();
        let r = f(&mut conn, &mut st.primary);
        let orphans = std::mem::take(&mut conn.orphans);
        match &r {
            Err(e) if e.breaks_transport() => {
                st.stale.extend(orphans);
                st.stale.extend(st.primary.take());
            }
            // Closed (dropped) for the next process, when shared and
            // nothing stays loaded.
            _ if self.options.shared && st.primary.is_none() => {}
            _ => st.conn = Some(t),
        }
        r
    }

    /// Run `f` with the storage primary loaded.
    fn with_primary<T>(
        &self,
        f: impl FnOnce(&mut Conn<'_>, u32) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let cache = self.options.cache_primary;
        self.with_conn(|c, cached| {
            if !cache {
                let p = c.create_primary()?;
                return c.scoped(p, f);
            }
            let p = match *cached {
                Some(p) => p,
                None => *cached.insert(c.create_primary()?),
            };
            let r = f(c, p);
            if matches!(
                r,
                Err(TpmError::Rc {
                    kind: RcKind::Handle,
                    ..
                })
            ) {
                // Perhaps the TPM was reset: re-create the primary next time
                // (flushing it first in case it was another handle at fault).
                let _ = c.flush(p);
                *cached = None;
            }
            r
        })
    }

    /// Run `f` with `obj` loaded under the storage primary.
    fn with_object<T>(
        &self,
        obj: &Object,
        f: impl FnOnce(&mut Conn<'_>, u32) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        self.with_primary(|c, parent| {
            let key = c.load(parent, obj)?;
            c.scoped(key, f)
        })
    }

    /// `n` random bytes from the TPM's generator (at most [`MAX_RANDOM`]).
    pub fn get_random(&self, n: usize) -> Result<Vec<u8>, TpmError> {
        const N: &str = "TPM2_GetRandom";
        if n > MAX_RANDOM {
            return Err(TpmError::RandomTooLarge(n));
        }
        self.with_conn(|c, _| {
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let want = (n - out.len()).min(32) as u16;
                let cmd = f::TpmGetRandomCommand {
                    handles: [],
                    bytes_requested: TpmUint16::new(want),
                };
                let got = commands::parse_get_random(&c.run(N, &cmd, 0)?)?;
                if got.is_empty() || got.len() > usize::from(want) {
                    return Err(TpmError::Malformed {
                        command: N,
                        what: format!("{} bytes", got.len()),
                    });
                }
                out.extend_from_slice(&got);
            }
            Ok(out)
        })
    }

    /// Create a new device key inside the TPM.
    pub fn create_device_key(&self) -> Result<KeyBlob, TpmError> {
        let obj = self.create(
            ObjectKind::SigningKey,
            commands::signing_key_template(),
            &[],
        )?;
        Ok(KeyBlob::new(obj)?)
    }

    fn create(
        &self,
        kind: ObjectKind,
        template: tpm2_protocol::data::TpmtPublic,
        data: &[u8],
    ) -> Result<Object, TpmError> {
        let (public, private) = self.with_primary(|c, parent| {
            let cmd = Create {
                parent,
                template,
                data,
            };
            commands::parse_create(&c.run("TPM2_Create", &cmd, 1)?)
        })?;
        Ok(Object::new(kind, &public, &private)?)
    }

    /// Load the key and read its public area back from the TPM.
    fn read_public(&self, blob: &KeyBlob) -> Result<tpm2_protocol::data::TpmtPublic, TpmError> {
        const N: &str = "TPM2_ReadPublic";
        self.with_object(&blob.obj, |c, key| {
            let cmd = f::TpmReadPublicCommand {
                handles: [TpmHandle::new(key)],
            };
            commands::parse_read_public(&c.run(N, &cmd, 0)?)
        })
    }

    /// The key's public point `04 || X || Y`, as the TPM reports it after
    /// loading the blob (so this also proves the blob belongs to this TPM).
    pub fn public_key(&self, blob: &KeyBlob) -> Result<[u8; 65], TpmError> {
        let public = self.read_public(blob)?;
        Ok(public::ecc_point(&public)?)
    }

    /// The key's object attributes as the TPM reports them.
    pub fn key_attributes(&self, blob: &KeyBlob) -> Result<TpmaObject, TpmError> {
        Ok(self.read_public(blob)?.object_attributes)
    }

    /// Sign `message`: SHA-256 in software, ECDSA in the TPM. Returns the
    /// DER `Ecdsa-Sig-Value` (what TLS and X.509 carry).
    pub fn sign(&self, blob: &KeyBlob, message: &[u8]) -> Result<Vec<u8>, TpmError> {
        let d = ring::digest::digest(&ring::digest::SHA256, message);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.as_ref());
        self.sign_digest(blob, &digest)
    }

    /// Sign a SHA-256 digest with the TPM; DER-encoded signature.
    pub fn sign_digest(&self, blob: &KeyBlob, digest: &[u8; 32]) -> Result<Vec<u8>, TpmError> {
        self.with_object(&blob.obj, |c, key| {
            commands::parse_sign(&c.run("TPM2_Sign", &commands::sign_command(key, digest), 1)?)
        })
    }

    /// Seal up to 128 bytes to this TPM.
    pub fn seal(&self, data: &[u8]) -> Result<SealedBlob, TpmError> {
        if data.len() > MAX_SEALED {
            return Err(TpmError::SealTooLarge {
                len: data.len(),
                max: MAX_SEALED,
            });
        }
        let obj = self.create(ObjectKind::Sealed, commands::sealed_template(), data)?;
        Ok(SealedBlob { obj })
    }

    /// Unseal data sealed by [`Tpm::seal`] on this TPM.
    pub fn unseal(&self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        const N: &str = "TPM2_Unseal";
        self.with_object(&blob.obj, |c, obj| {
            let cmd = f::TpmUnsealCommand {
                handles: [TpmHandle::new(obj)],
            };
            commands::parse_unseal(&c.run(N, &cmd, 1)?)
        })
    }

    /// Ask the TPM to export (TPM2_Duplicate, unwrapped, to no new parent)
    /// the key. A self-check: it must fail, since voxgate keys are
    /// fixedParent and have no duplication policy. Returns the TPM's refusal.
    pub fn attempt_duplicate(&self, blob: &KeyBlob) -> Result<(), TpmError> {
        const N: &str = "TPM2_Duplicate";
        self.with_object(&blob.obj, |c, key| {
            let cmd = f::TpmDuplicateCommand {
                handles: [TpmHandle::new(key), TpmHandle::new(TpmRh::Null.value())],
                encryption_key_in: Default::default(),
                symmetric_alg: TpmtSymDef::default(),
            };
            commands::decode::<f::TpmDuplicateResponse>(N, &c.run(N, &cmd, 1)?).map(|_| ())
        })
    }
}

fn connect(spec: &TpmSpec, timeout: Duration) -> Result<Box<dyn Transport>, TpmError> {
    let open = |source: std::io::Error, hint: &'static str| TpmError::Open {
        spec: spec.to_string(),
        source,
        hint,
    };
    match spec {
        TpmSpec::Device(path) => transport::Device::open(path)
            .map(|d| Box::new(d) as Box<dyn Transport>)
            .map_err(|e| {
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        " (no TPM device: is the TPM enabled in firmware and its driver loaded?)"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        " (add the service user to the `tss` group)"
                    }
                    _ => "",
                };
                open(e, hint)
            }),
        TpmSpec::Simulator(addr) => transport::Simulator::connect(*addr, timeout)
            .map(|s| Box::new(s) as Box<dyn Transport>)
            .map_err(|e| open(e, " (is swtpm running on that port?)")),
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let (Some(t), Some(h)) = (st.conn.as_deref_mut(), st.primary.take()) {
            let mut c = Conn {
                t,
                timeout: self.options.timeout,
                orphans: Vec::new(),
            };
            if let Err(e) = c.flush(h) {
                tracing::warn!(error = %e, "cached TPM primary not flushed");
            }
        }
    }
}
