//! Device identity: where the device key lives and how TLS signs with it.
//!
//! Backends sit behind [`crate::transport::tls::DeviceIdentity`]; this
//! release has the development PEM files and the sealed key file
//! ([`sealed`]). TPM-held keys, enrollment and rotation build on these.

pub mod backend;
pub mod sealed;
pub mod setup;
pub mod tpm;
