//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod audio_env;
pub mod lab;
pub mod proxy;
pub mod rtp;
pub mod sip;
pub mod swtpm;
