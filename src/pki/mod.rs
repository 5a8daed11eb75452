//! The bottom of the trust stack: what a certificate is called, where keys
//! and certificates are read from and written to, the sealed-file format
//! that binds a key to one machine, the passphrase-encrypted format that
//! lets a key leave its machine, and the one helper that issues device
//! certificates (for `voxgate relay dev-cert` and for enrollment alike).
//!
//! This module imports nothing else of the crate: the CA (`relay::ca`), the
//! device identity (`identity`) and the TLS set-up (`transport::tls`) build
//! on it.

pub mod files;
pub mod issue;
pub mod name;
pub mod passphrase;
pub mod roots;
pub mod sealed;
