//! SIP for LAN desk phones: a sans-IO core (this module) under a thin UDP/TCP
//! shell.
//!
//! Nothing under `sip::` opens a socket or reads a clock: time comes in as
//! `Instant` arguments, output goes out as values (messages to send,
//! decisions, audit events), and every collection is bounded. No input makes
//! any function here panic; each parser has a fuzz target under `fuzz/`.
//!
//! - [`message`], [`header`], [`uri`], [`framing`]: RFC 3261 syntax.
//! - [`auth`]: server-side digest (SHA-256 and MD5) with stateless nonces.
//! - [`guard`]: source allowlist, failed-auth budget and bans.
//! - [`replay`]: (nonce, nc) pairs already used.
//! - [`registrar`]: bindings per extension.
//! - [`transaction`]: RFC 3261 17 client and server transactions.
//! - [`sdp`], [`offer`]: SDP and one-audio-stream offer/answer.
//! - [`dialog`]: dialog state and in-dialog requests.

pub mod auth;
pub mod dialog;
pub mod framing;
pub mod guard;
pub mod header;
pub mod message;
pub mod offer;
pub mod registrar;
pub mod replay;
pub mod sdp;
pub mod settings;
pub mod transaction;
pub mod uri;

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod torture;

pub use message::{Contact, Limits, Message, ParseError, StartLine};
pub use settings::SipConfig;
pub use uri::{CSeq, Method, NameAddr, SipUri, Via};

/// A new RFC 3261 branch (`z9hG4bK` + 96 random bits as hex).
pub fn new_branch(random: [u8; 12]) -> String {
    format!("z9hG4bK{}", auth::hex(&random))
}

/// A new From/To tag (64 random bits as hex).
pub fn new_tag(random: [u8; 8]) -> String {
    auth::hex(&random)
}
