//! voxgate: an edge voice gateway. See ARCHITECTURE.md for the data flow,
//! the layers and their invariants.

pub mod audio;
pub mod bridge;
pub mod cli;
pub mod codec;
pub mod config;
pub mod demo;
pub mod diagnose;
pub mod gateway;
pub mod identity;
pub mod media;
pub mod pki;
pub mod privilege;
pub mod proto;
pub mod relay;
pub mod sip;
pub mod systemd;
pub mod telemetry;
pub mod transport;
