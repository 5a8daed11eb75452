//! Call signalling on the control stream (protocol v1): the messages a
//! gateway and the relay exchange to set up, ring, answer and end calls
//! between phones, and to carry DTMF digits.
//!
//! Call ids: each side numbers the calls it starts; the relay's numbers have
//! the top bit set ([`RELAY_CALL_BIT`]) and a device's never do, so one id
//! space per connection serves both directions without collisions.
//!
//! Flow ids: the `flow` in a message names the flow the *sender* of that
//! message will send the call's audio on (a device's uplink flow, or the
//! relay's downlink flow for that call), with `ssrc` its RTP source.

use serde::{Deserialize, Serialize};

/// Set in every call id the relay assigns.
pub const RELAY_CALL_BIT: u32 = 1 << 31;
/// Longest extension or dialled number.
pub const MAX_NUMBER: usize = 32;

/// Why a call ended or was refused: each maps to one SIP status and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Hang-up after an answered call, or CANCEL before it (SIP BYE / 487).
    Normal,
    /// The callee is busy (SIP 486 Busy Here).
    Busy,
    /// No such number (SIP 404 Not Found).
    NotFound,
    /// Nobody answered in time (SIP 408 Request Timeout / 480).
    Timeout,
    /// The callee refused (SIP 603 Decline).
    Declined,
    /// The callee's box is not connected or cannot take calls (SIP 480 Temporarily Unavailable).
    Unavailable,
    /// A protocol or media failure (SIP 500).
    Error,
}

impl EndReason {
    /// The SIP final response for a call refused for this reason.
    pub fn sip_status(self) -> u16 {
        match self {
            EndReason::Normal => 487,
            EndReason::Busy => 486,
            EndReason::NotFound => 404,
            EndReason::Timeout => 408,
            EndReason::Declined => 603,
            EndReason::Unavailable => 480,
            EndReason::Error => 500,
        }
    }

    /// The reason for a SIP final error response from a phone.
    pub fn from_sip_status(code: u16) -> EndReason {
        match code {
            486 | 600 => EndReason::Busy,
            404 | 484 | 604 => EndReason::NotFound,
            408 => EndReason::Timeout,
            603 => EndReason::Declined,
            480 | 410 | 503 => EndReason::Unavailable,
            487 => EndReason::Normal,
            _ => EndReason::Error,
        }
    }
}

/// A phone registered an extension at this box (device → relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtUp<'a> {
    /// The extension.
    pub ext: &'a str,
}

/// Start a call (either direction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSetup<'a> {
    /// The sender's call id.
    pub call: u32,
    /// The dialled number.
    pub to: &'a str,
    /// The calling extension.
    pub from: &'a str,
    /// Flow the sender will send this call's audio on.
    pub flow: u64,
    /// RTP SSRC of that flow.
    pub ssrc: u32,
}

/// The callee is ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRinging {
    /// Call id (the one in the setup).
    pub call: u32,
}

/// The callee answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// Call id.
    pub call: u32,
    /// Flow the sender of the answer will send audio on.
    pub flow: u64,
    /// RTP SSRC of that flow.
    pub ssrc: u32,
}

/// The call ended, or was refused, or cancelled (either direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallEnd {
    /// Call id.
    pub call: u32,
    /// Why.
    pub reason: EndReason,
}

/// A DTMF digit in an answered call (either direction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dtmf<'a> {
    /// Call id.
    pub call: u32,
    /// One of `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: &'a str,
    /// Key-press duration in milliseconds.
    pub duration_ms: u16,
}
