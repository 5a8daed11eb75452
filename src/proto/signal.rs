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

use super::control::{ErrorMsg, Message};
use crate::media::dtmf::Digit;
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

/// A call message, owned: what either side queues for the control stream,
/// and what it hands on after decoding one (the stream buffer is reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSignal {
    /// `ext_up` (device → relay).
    ExtUp(String),
    /// `ext_down` (device → relay).
    ExtDown(String),
    /// `call_setup`.
    Setup {
        /// The sender's call id.
        call: u32,
        /// Dialled number.
        to: String,
        /// Calling extension.
        from: String,
        /// Flow the sender sends the call's audio on.
        flow: u64,
        /// Its SSRC.
        ssrc: u32,
    },
    /// `call_ringing`.
    Ringing {
        /// Call id.
        call: u32,
    },
    /// `call_answer`.
    Answer {
        /// Call id.
        call: u32,
        /// Flow the sender of the answer sends audio on.
        flow: u64,
        /// Its SSRC.
        ssrc: u32,
    },
    /// `call_end`.
    End {
        /// Call id.
        call: u32,
        /// Why.
        reason: EndReason,
    },
    /// `dtmf`.
    Dtmf {
        /// Call id.
        call: u32,
        /// The key (`0`-`9`, `*`, `#`, `A`-`D`).
        digit: char,
        /// Duration.
        duration_ms: u16,
    },
    /// `error` (relay → device; never produced by [`CallSignal::from_message`]).
    Error {
        /// Machine-readable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
}

impl CallSignal {
    /// The call message in `m`, if it is one; a `dtmf` whose digit is not
    /// one DTMF key is `None` (and so refused as unexpected).
    pub fn from_message(m: &Message<'_>) -> Option<CallSignal> {
        Some(match m {
            Message::ExtUp(e) => CallSignal::ExtUp(e.ext.to_string()),
            Message::ExtDown(e) => CallSignal::ExtDown(e.ext.to_string()),
            Message::CallSetup(s) => CallSignal::Setup {
                call: s.call,
                to: s.to.to_string(),
                from: s.from.to_string(),
                flow: s.flow,
                ssrc: s.ssrc,
            },
            Message::CallRinging(r) => CallSignal::Ringing { call: r.call },
            Message::CallAnswer(a) => CallSignal::Answer {
                call: a.call,
                flow: a.flow,
                ssrc: a.ssrc,
            },
            Message::CallEnd(e) => CallSignal::End {
                call: e.call,
                reason: e.reason,
            },
            Message::Dtmf(d) => {
                let mut chars = d.digit.chars();
                let c = chars.next()?;
                if chars.next().is_some() {
                    return None;
                }
                let digit = Digit::from_char(c)?.as_char();
                CallSignal::Dtmf {
                    call: d.call,
                    digit,
                    duration_ms: d.duration_ms,
                }
            }
            _ => return None,
        })
    }

    /// The control message (borrowing this signal's strings; `digit_buf`
    /// holds a DTMF key's text).
    pub fn to_message<'a>(&'a self, digit_buf: &'a mut [u8; 4]) -> Message<'a> {
        match self {
            CallSignal::ExtUp(ext) => Message::ExtUp(ExtUp { ext }),
            CallSignal::ExtDown(ext) => Message::ExtDown(ExtUp { ext }),
            CallSignal::Setup {
                call,
                to,
                from,
                flow,
                ssrc,
            } => Message::CallSetup(CallSetup {
                call: *call,
                to,
                from,
                flow: *flow,
                ssrc: *ssrc,
            }),
            CallSignal::Ringing { call } => Message::CallRinging(CallRinging { call: *call }),
            CallSignal::Answer { call, flow, ssrc } => Message::CallAnswer(CallAnswer {
                call: *call,
                flow: *flow,
                ssrc: *ssrc,
            }),
            CallSignal::End { call, reason } => Message::CallEnd(CallEnd {
                call: *call,
                reason: *reason,
            }),
            CallSignal::Dtmf {
                call,
                digit,
                duration_ms,
            } => Message::Dtmf(Dtmf {
                call: *call,
                digit: digit.encode_utf8(digit_buf),
                duration_ms: *duration_ms,
            }),
            CallSignal::Error { code, message } => Message::Error(ErrorMsg { code, message }),
        }
    }
}

/// Whether `ext` is a valid extension to register: 2-8 digits, not
/// starting with 9 (the relay's own services: 900 echo, 901 record).
pub fn valid_extension(ext: &str) -> bool {
    (2..=8).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_digit()) && !ext.starts_with('9')
}

pub fn valid_number(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NUMBER
        && n.bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_through_messages() {
        let all = [
            CallSignal::ExtUp("201".into()),
            CallSignal::ExtDown("201".into()),
            CallSignal::Setup {
                call: 3,
                to: "900".into(),
                from: "201".into(),
                flow: 16,
                ssrc: 5,
            },
            CallSignal::Ringing { call: 3 },
            CallSignal::Answer {
                call: 3,
                flow: 17,
                ssrc: 6,
            },
            CallSignal::End {
                call: 3,
                reason: EndReason::Declined,
            },
            CallSignal::Dtmf {
                call: 3,
                digit: '*',
                duration_ms: 90,
            },
        ];
        for sig in all {
            let mut d = [0u8; 4];
            let m = sig.to_message(&mut d);
            assert_eq!(CallSignal::from_message(&m), Some(sig.clone()));
        }
        // A digit that is not one key is not a call message.
        for bad in ["", "12", "x"] {
            let m = Message::Dtmf(Dtmf {
                call: 1,
                digit: bad,
                duration_ms: 1,
            });
            assert_eq!(CallSignal::from_message(&m), None, "{bad:?}");
        }
        // Lowercase keys are normalised.
        let m = Message::Dtmf(Dtmf {
            call: 1,
            digit: "a",
            duration_ms: 1,
        });
        assert!(matches!(
            CallSignal::from_message(&m),
            Some(CallSignal::Dtmf { digit: 'A', .. })
        ));
    }
}
