//! Device identity: where the device key lives and how TLS signs with it.
//!
//! Backends sit behind [`crate::transport::tls::DeviceIdentity`]
//! ([`backend`]): the development PEM files, the sealed key file
//! ([`sealed`]), the TPM-held key ([`tpm`]), and the systemd credential.
//! [`setup`] creates the key and enrolls; [`status`] reports on it.

pub mod backend;
pub mod renew;
pub mod sealed;
pub mod setup;
pub mod status;
pub mod tpm;
