//! The lab voxgate's integration tests and benches share (a dev-only crate
//! of the workspace, never published): real `voxgate` processes with their
//! CA, certificates, tokens and configs; SIP peers; the audio environment;
//! RTP; /proc readers; bench output. Every use of the `voxgate` library's
//! paths by the tests' set-up lives here, so that a move in `src/` is
//! fixed in one place.

pub mod api;
pub mod audio_env;
pub mod bench;
pub mod cmd;
pub mod enroll;
pub mod flood;
pub mod lab;
pub mod loadgen;
pub mod procfs;
pub mod proxy;
pub mod report;
pub mod rtp;
pub mod runbook;
pub mod sendbatch;
pub mod session;
pub mod sip;
pub mod spoof;
pub mod swtpm;
pub mod tmux;
pub mod webhooks;

/// voxgate's version (the kit's is kept equal): what a device's hello says.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
