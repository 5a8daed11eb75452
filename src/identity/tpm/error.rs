//! TPM errors: every failure names the command, and every TPM response code
//! is classified into an [`RcKind`] with a hint that says what to do next.

use super::blob::BlobError;
use std::time::Duration;
use thiserror::Error;

/// A TPM operation failed.
#[derive(Debug, Error)]
pub enum TpmError {
    /// The TPM spec is not `device:PATH` or `swtpm:IP:PORT`.
    #[error("TPM `{spec}`: {what}; expected `device:/dev/tpmrm0` or `swtpm:127.0.0.1:PORT`")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The TPM device could not be opened or the simulator not reached.
    #[error("cannot open TPM {spec}: {source}{hint}")]
    Open {
        /// The TPM spec.
        spec: String,
        /// The IO error.
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The TPM did not accept a command or answer it in time.
    #[error(
        "{command}: the TPM did not {op} within {after:?}; it is hung or gone \
         (check the TPM device, or that swtpm is running)"
    )]
    Timeout {
        /// The TPM command.
        command: &'static str,
        /// `accept the command` or `answer`.
        op: &'static str,
        /// The time limit.
        after: Duration,
    },
    /// Reading from or writing to the TPM failed.
    #[error("{command}: TPM {op} failed: {source}")]
    Io {
        /// The TPM command.
        command: &'static str,
        /// `write` or `read`.
        op: &'static str,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TPM's answer is larger than any answer voxgate asks for.
    #[error("{command}: TPM response of {len} bytes exceeds the {max}-byte limit")]
    ResponseTooLarge {
        /// The TPM command.
        command: &'static str,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// voxgate could not encode a command (an internal error).
    #[error("{command}: cannot encode the command: {what}")]
    Encode {
        /// The TPM command.
        command: &'static str,
        /// The encoder's complaint.
        what: String,
    },
    /// The TPM's answer does not parse.
    #[error("{command}: malformed TPM response: {what}")]
    Malformed {
        /// The TPM command.
        command: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The TPM refused the command with a response code.
    #[error("{command} failed: {name} (rc 0x{rc:03X}): {}", kind.hint())]
    Rc {
        /// The TPM command.
        command: &'static str,
        /// The raw response code.
        rc: u32,
        /// Its class.
        kind: RcKind,
        /// Its name, with the handle/parameter/session it refers to.
        name: String,
    },
    /// A key or sealed-data blob is damaged or of the wrong kind.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// More data than a sealed object holds.
    #[error("cannot seal {len} bytes: a TPM sealed object holds at most {max}")]
    SealTooLarge {
        /// Bytes offered.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More random bytes than one `Tpm::get_random` call returns.
    #[error("cannot ask the TPM for {0} random bytes at once (at most 1024)")]
    RandomTooLarge(usize),
    /// The TPM's signature cannot be encoded (a zero or oversize r or s).
    #[error("the TPM returned an unusable signature: {0}")]
    Signature(&'static str),
}

impl TpmError {
    /// The response code, if the TPM refused a command.
    pub fn rc(&self) -> Option<u32> {
        match self {
            TpmError::Rc { rc, .. } => Some(*rc),
            _ => None,
        }
    }

    /// The response-code class, if the TPM refused a command.
    pub fn rc_kind(&self) -> Option<RcKind> {
        match self {
            TpmError::Rc { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True when the connection can no longer be trusted to be in step
    /// with the TPM (timeouts, IO errors, framing errors): the next
    /// command reconnects.
    pub(crate) fn breaks_transport(&self) -> bool {
        matches!(
            self,
            TpmError::Timeout { .. }
                | TpmError::Io { .. }
                | TpmError::ResponseTooLarge { .. }
                | TpmError::Malformed { .. }
        )
    }

    /// Build the error for a non-zero response code.
    pub fn from_rc(command: &'static str, rc: u32) -> TpmError {
        TpmError::Rc {
            command,
            rc,
            kind: RcKind::of(rc),
            name: rc_name(rc),
        }
    }
}

/// What a TPM response code means for voxgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcKind {
    /// TPM_RC_OBJECT_MEMORY / TPM_RC_OBJECT_HANDLES: no room for another loaded object.
    ObjectMemory,
    /// TPM_RC_SESSION_MEMORY / TPM_RC_SESSION_HANDLES: no room for another session.
    SessionMemory,
    /// TPM_RC_MEMORY: the TPM is out of memory for this command.
    Memory,
    /// TPM_RC_LOCKOUT: dictionary-attack lockout.
    Lockout,
    /// TPM_RC_INTEGRITY: the object was not created by this TPM's current seed.
    ForeignObject,
    /// TPM_RC_AUTH_FAIL / TPM_RC_BAD_AUTH: wrong authorization value.
    AuthFailed,
    /// TPM_RC_AUTH_TYPE / TPM_RC_AUTH_MISSING / TPM_RC_POLICY_FAIL: the
    /// object only allows this with a policy (duplication, for example).
    PolicyRequired,
    /// TPM_RC_ATTRIBUTES: the object's attributes forbid the operation.
    Attributes,
    /// TPM_RC_INITIALIZE: TPM2_Startup was never sent.
    NotStarted,
    /// TPM_RC_FAILURE: the TPM is in failure mode.
    FailureMode,
    /// TPM_RC_RETRY / YIELDED / TESTING / NV_RATE / CANCELED / NV_UNAVAILABLE: try again.
    Busy,
    /// TPM_RC_HIERARCHY / TPM_RC_DISABLED: the storage hierarchy is disabled.
    HierarchyDisabled,
    /// An algorithm, curve, scheme or key size this TPM does not support.
    Unsupported,
    /// TPM_RC_HANDLE / TPM_RC_REFERENCE_*: a handle that is not loaded.
    Handle,
    /// TPM_RC_COMMAND_CODE: the TPM does not implement the command.
    CommandNotSupported,
    /// A vendor, TPM 1.2 or otherwise unclassified code.
    Other,
}

// Format-0 codes (TPM_RC_VER1 | n, warnings TPM_RC_WARN | n).
const VER1: u32 = 0x100;
const WARN: u32 = 0x900;
const FMT1: u32 = 0x080;

impl RcKind {
    /// Classify a raw response code.
    pub fn of(rc: u32) -> RcKind {
        if rc & FMT1 != 0 {
            // Format 1: error number in bits 0..6, plus the index of the
            // handle, parameter or session at fault.
            return match rc & 0x3F {
                0x01 | 0x03 | 0x07 | 0x08 | 0x09 | 0x0A | 0x0C | 0x12 | 0x16 | 0x26 => {
                    RcKind::Unsupported
                }
                0x02 => RcKind::Attributes,
                0x05 => RcKind::HierarchyDisabled,
                0x0B => RcKind::Handle,
                0x0E | 0x22 => RcKind::AuthFailed,
                0x1D => RcKind::PolicyRequired,
                0x1F => RcKind::ForeignObject,
                _ => RcKind::Other,
            };
        }
        if rc & 0x400 != 0 || rc & VER1 == 0 {
            return RcKind::Other; // vendor-defined or TPM 1.2
        }
        if rc & WARN == WARN {
            return match rc & 0x7F {
                0x02 | 0x06 => RcKind::ObjectMemory,
                0x03 | 0x05 => RcKind::SessionMemory,
                0x04 => RcKind::Memory,
                0x08 | 0x09 | 0x0A | 0x20 | 0x22 | 0x23 => RcKind::Busy,
                0x10..=0x1E => RcKind::Handle,
                0x21 => RcKind::Lockout,
                _ => RcKind::Other,
            };
        }
        match rc & 0x7F {
            0x00 => RcKind::NotStarted,
            0x01 => RcKind::FailureMode,
            0x20 => RcKind::HierarchyDisabled,
            0x24..=0x26 => RcKind::PolicyRequired,
            0x43 => RcKind::CommandNotSupported,
            _ => RcKind::Other,
        }
    }

    /// What the operator should do.
    pub fn hint(self) -> &'static str {
        match self {
            RcKind::ObjectMemory => {
                "too many loaded objects: another program (or a crashed voxgate on a TPM \
                 without a resource manager) left keys loaded; use /dev/tpmrm0, or restart \
                 the TPM simulator"
            }
            RcKind::SessionMemory => "too many open TPM sessions: another program holds them",
            RcKind::Memory => "the TPM is out of memory: retry later",
            RcKind::Lockout => {
                "the TPM is in dictionary-attack lockout: wait for the lockout to expire, \
                 or have the owner run `tpm2_dictionarylockout --clear-lockout`"
            }
            RcKind::ForeignObject => {
                "the key blob does not belong to this TPM: the TPM was cleared or replaced, \
                 or the file comes from another device; re-enroll the device \
                 (`voxgate setup --backend tpm` with a new token from the relay operator)"
            }
            RcKind::AuthFailed => {
                "authorization failed: the owner hierarchy has a password (voxgate needs an \
                 empty owner password), or the object's password is wrong"
            }
            RcKind::PolicyRequired => {
                "the object only allows this under a policy; voxgate keys cannot be \
                 duplicated or exported"
            }
            RcKind::Attributes => "the object's attributes forbid this operation",
            RcKind::NotStarted => {
                "the TPM was not started: the kernel normally sends TPM2_Startup; start \
                 swtpm with `--flags not-need-init,startup-clear`"
            }
            RcKind::FailureMode => {
                "the TPM is in failure mode: reboot the device; if it persists the TPM is faulty"
            }
            RcKind::Busy => "the TPM is busy (self-test or rate limit): retry shortly",
            RcKind::HierarchyDisabled => {
                "the owner (storage) hierarchy is disabled: enable it in the firmware setup"
            }
            RcKind::Unsupported => {
                "this TPM does not support ECC P-256 / SHA-256 as voxgate uses them; use the \
                 sealed-file key backend"
            }
            RcKind::Handle => "a TPM object was not loaded (internal error, please report)",
            RcKind::CommandNotSupported => "this TPM does not implement the command",
            RcKind::Other => "unexpected TPM error",
        }
    }
}

/// `TPM_RC_NAME (parameter 1)`, from tpm2-protocol's table; unknown codes
/// are named by number.
pub fn rc_name(rc: u32) -> String {
    use tpm2_protocol::data::{TpmRc, TpmRcIndex};
    match TpmRc::try_from(rc) {
        Ok(TpmRc::Fmt1(f)) => match f.index {
            Some(TpmRcIndex::Parameter(n)) => format!("{} (parameter {n})", f.base),
            Some(TpmRcIndex::Handle(n)) => format!("{} (handle {n})", f.base),
            Some(TpmRcIndex::Session(n)) => format!("{} (session {n})", f.base),
            None => f.base.to_string(),
        },
        Ok(other) => other.base().to_string(),
        Err(_) if rc & 0x400 != 0 && rc & FMT1 == 0 => "vendor-specific response code".into(),
        Err(_) => "unknown response code".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_classes() {
        let cases: &[(u32, RcKind, &str)] = &[
            (0x902, RcKind::ObjectMemory, "TPM_RC_OBJECT_MEMORY"),
            (0x906, RcKind::ObjectMemory, "TPM_RC_OBJECT_HANDLES"),
            (0x903, RcKind::SessionMemory, "TPM_RC_SESSION_MEMORY"),
            (0x921, RcKind::Lockout, "TPM_RC_LOCKOUT"),
            (0x922, RcKind::Busy, "TPM_RC_RETRY"),
            (0x90A, RcKind::Busy, "TPM_RC_TESTING"),
            (0x910, RcKind::Handle, "TPM_RC_REFERENCE_H0"),
            (0x100, RcKind::NotStarted, "TPM_RC_INITIALIZE"),
            (0x101, RcKind::FailureMode, "TPM_RC_FAILURE"),
            (0x120, RcKind::HierarchyDisabled, "TPM_RC_DISABLED"),
            (0x124, RcKind::PolicyRequired, "TPM_RC_AUTH_TYPE"),
            (0x143, RcKind::CommandNotSupported, "TPM_RC_COMMAND_CODE"),
            // TPM2_Load of a blob from another TPM: integrity, parameter 1.
            (
                0x1DF,
                RcKind::ForeignObject,
                "TPM_RC_INTEGRITY (parameter 1)",
            ),
            (0x98E, RcKind::AuthFailed, "TPM_RC_AUTH_FAIL (session 1)"),
            (0x9A2, RcKind::AuthFailed, "TPM_RC_BAD_AUTH (session 1)"),
            (0x1C2, RcKind::Attributes, "TPM_RC_ATTRIBUTES (parameter 1)"),
            (0x08B, RcKind::Handle, "TPM_RC_HANDLE"),
            (0x18B, RcKind::Handle, "TPM_RC_HANDLE (handle 1)"),
            (0x2E6, RcKind::Unsupported, "TPM_RC_CURVE (parameter 2)"),
            (0x09D, RcKind::PolicyRequired, "TPM_RC_POLICY_FAIL"),
        ];
        for &(rc, kind, name) in cases {
            assert_eq!(RcKind::of(rc), kind, "rc {rc:#x}");
            assert_eq!(rc_name(rc), name, "rc {rc:#x}");
        }
    }

    #[test]
    fn unknown_and_vendor_codes_are_other() {
        assert_eq!(RcKind::of(0x0000_0002), RcKind::Other); // TPM 1.2 TPM_BADINDEX
        assert_eq!(RcKind::of(0x0000_0501), RcKind::Other); // vendor (T bit)
        assert_eq!(rc_name(0x501), "vendor-specific response code");
        assert_eq!(rc_name(0xDEAD_0000), "unknown response code");
    }

    #[test]
    fn message_names_command_code_and_hint() {
        let e = TpmError::from_rc("TPM2_Load", 0x1DF);
        let s = e.to_string();
        assert!(s.starts_with("TPM2_Load failed: TPM_RC_INTEGRITY (parameter 1) (rc 0x1DF)"));
        assert!(s.contains("re-enroll the device"), "{s}");
        let s = TpmError::from_rc("TPM2_CreatePrimary", 0x902).to_string();
        assert!(s.contains("too many loaded objects"), "{s}");
        assert_eq!(e.rc(), Some(0x1DF));
        assert_eq!(e.rc_kind(), Some(RcKind::ForeignObject));
    }
}
