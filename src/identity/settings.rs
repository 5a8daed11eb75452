//! The identity settings that `[identity]` of the gateway's config is
//! parsed into.

use serde::Deserialize;
use std::path::PathBuf;

/// Name of the systemd credential that holds the device key.
pub const DEFAULT_CREDENTIAL: &str = "voxgate-device-key";

/// Where the device key lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityBackend {
    /// Plaintext PEM key from `voxgate relay dev-cert` (labs only).
    #[default]
    DevFile,
    /// Key sealed to this box by `voxgate setup`.
    SealedFile,
    /// Key held by the TPM 2.0 (`identity.tpm`); the file `key` is the
    /// TPM-wrapped blob, which only that TPM can load.
    Tpm,
    /// Whichever of `tpm` and `sealed-file` the key file `key` is
    /// (`voxgate setup --backend auto` picks the TPM when one answers).
    Auto,
    /// PKCS#8 key delivered by systemd (`LoadCredentialEncrypted=`) as
    /// `$CREDENTIALS_DIRECTORY/<identity.credential>`.
    SystemdCreds,
}

impl IdentityBackend {
    /// The name used in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            IdentityBackend::DevFile => "dev-file",
            IdentityBackend::SealedFile => "sealed-file",
            IdentityBackend::Tpm => "tpm",
            IdentityBackend::Auto => "auto",
            IdentityBackend::SystemdCreds => "systemd-creds",
        }
    }
}

impl std::fmt::Display for IdentityBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the device certificate and key come from.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Key backend.
    pub backend: IdentityBackend,
    /// Where the TPM is (`tpm` and `auto` backends).
    pub tpm: super::tpm::TpmSpec,
    /// The systemd credential's name (`systemd-creds` backend).
    pub credential: String,
    /// PEM certificate chain of the device.
    pub cert: PathBuf,
    /// The key: PEM (dev-file) or sealed file (sealed-file).
    pub key: PathBuf,
    /// Sealing input: the machine id file.
    pub machine_id: PathBuf,
    /// Sealing input: the SoC serial file, used when it exists.
    pub serial: Option<PathBuf>,
}
