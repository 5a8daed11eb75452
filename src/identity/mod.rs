//! Device identity: where the device key lives and how TLS signs with it.
//!
//! Backends sit behind [`crate::transport::tls::DeviceIdentity`]
//! ([`backend`]): the development PEM files, the sealed key file
//! (`crate::pki::sealed`), the TPM-held key ([`tpm`]), and the systemd
//! credential. [`setup`] creates the key and enrolls; [`keys`] makes new
//! keys and keeps the renewal record; [`renew`] renews over the live
//! session; [`status`] reports on it.

pub mod backend;
pub mod keys;
pub mod renew;
pub mod settings;
pub mod setup;
pub mod status;
pub mod tpm;

pub use settings::{DEFAULT_CREDENTIAL, IdentityBackend, IdentityConfig};
