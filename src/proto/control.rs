//! The control-stream codec: each message is a big-endian `u16` length and
//! then a JSON object with a `"type"` field (wire protocol v1, ARCHITECTURE.md).
//!
//! Sans-IO: [`encode`] writes into a caller-owned buffer, [`decode_frame`]
//! reads from whatever bytes the stream has delivered so far and says how many
//! it consumed. JSON goes through `serde-json-core`, so decoding never
//! allocates and every string borrows from the input.
//!
//! Guarantees: a frame longer than [`MAX_MESSAGE`] is rejected from its length
//! prefix alone, before its body is buffered; unknown message types and
//! malformed JSON are errors, never panics.

pub use super::signal::{CallAnswer, CallEnd, CallRinging, CallSetup, Dtmf, EndReason, ExtUp};
use serde::{Deserialize, Serialize};
use serde_json_core::heapless::Vec as HVec;
use thiserror::Error;

/// Largest JSON body accepted or sent, in bytes.
pub const MAX_MESSAGE: usize = 2048;
/// Length prefix size.
pub const PREFIX: usize = 2;

/// Why a control frame could not be encoded or decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The length prefix announces more than [`MAX_MESSAGE`] bytes.
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    Oversize(usize),
    /// The length prefix is zero.
    #[error("empty control message")]
    Empty,
    /// The body is not a JSON object of the expected shape.
    #[error("malformed control message: {0}")]
    Malformed(serde_json_core::de::Error),
    /// A string holds a JSON escape; v1 messages never need one, and
    /// borrowed strings would otherwise keep the raw escape text.
    #[error("escaped strings are not allowed in control messages")]
    Escape,
    /// The `type` field names no message this version knows.
    #[error("unknown control message type")]
    UnknownType,
    /// The message does not fit the output buffer.
    #[error("control message does not fit in {0} bytes")]
    NoSpace(usize),
}

/// Which way a media flow carries audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Device to relay.
    Up,
    /// Relay to device.
    Down,
}

/// First message of the device on a fresh connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Device id (also the certificate's common name).
    pub device: &'a str,
    /// voxgate version of the device.
    pub version: &'a str,
    /// Capabilities such as `"opus"`, `"fec"`, `"dtx"`.
    #[serde(borrow)]
    pub caps: HVec<&'a str, 8>,
}

/// The relay's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// voxgate version of the relay.
    pub version: &'a str,
    /// Relay-assigned session number, for logs on both sides.
    pub session: u64,
}

/// Announces a media flow and its RTP parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowOpen<'a> {
    /// Flow id used as the datagram prefix.
    pub flow: u64,
    /// Direction of the audio.
    pub dir: Direction,
    /// RTP synchronisation source of the flow.
    pub ssrc: u32,
    /// Codec name; `"opus"` in v1.
    pub codec: &'a str,
    /// Frame duration in milliseconds.
    pub frame_ms: u16,
}

/// Ends a media flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowClose {
    /// Flow id.
    pub flow: u64,
}

/// Receiver report for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Flow id the report is about.
    pub flow: u64,
    /// Packets received.
    pub received: u64,
    /// Packets missing from the sequence.
    pub lost: u64,
    /// Packets that arrived too late to use.
    pub late: u64,
    /// Interarrival jitter, microseconds.
    pub jitter_us: u32,
}

/// Liveness probe; answered by [`Message::Pong`] with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Opaque id echoed in the pong.
    pub id: u64,
}

/// A refused request or a protocol error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg<'a> {
    /// Machine-readable code, e.g. `"unknown_type"`.
    pub code: &'a str,
    /// Human-readable explanation.
    pub message: &'a str,
}

/// Enrollment request (ALPN `voxgate-enroll/1`): a one-time token, the
/// device id asked for, and a PKCS#10 CSR signed by the device key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Enroll<'a> {
    /// One-time enrollment token (secret: never formatted).
    pub token: &'a str,
    /// Device id to name in the certificate.
    pub device: &'a str,
    /// Base64 (standard, padded) DER of the CSR.
    pub csr: &'a str,
}

impl std::fmt::Debug for Enroll<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroll")
            .field("token", &"[redacted]")
            .field("device", &self.device)
            .field("csr_len", &self.csr.len())
            .finish()
    }
}

/// The relay's answer to [`Enroll`]: the issued certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolled<'a> {
    /// Base64 DER of the device certificate.
    pub cert: &'a str,
    /// Its expiry, Unix seconds.
    pub not_after: i64,
}

/// Certificate renewal over the live session (device to relay): a CSR for
/// the device's next key (a fresh one where the backend can create it),
/// signed by that key. The session's certificate authenticates the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renew<'a> {
    /// Base64 (standard, padded) DER of the CSR.
    pub csr: &'a str,
}

/// The relay asks the device to renew its certificate now rather than at
/// two thirds of its lifetime: the issuing CA was rotated, and
/// certificates of the old one will be refused after a date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenewNow<'a> {
    /// Why, for the device's log.
    pub reason: &'a str,
}

/// The relay announces a new fleet root (root rotation): the new root,
/// and a cross certificate (the new root's name and key signed by the root
/// the devices pinned), so a device takes it only on the old root's word
/// ([`crate::pki::roots`]). `only` ends the overlap: keep this root and drop
/// the others. Sent at the start of every session once a root was rotated,
/// and again when it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustRoot<'a> {
    /// Base64 (standard, padded) DER of the new root.
    pub root: &'a str,
    /// Base64 DER of the cross certificate; empty once `only` is set.
    pub cross: &'a str,
    /// Trust only this root from now on.
    pub only: bool,
}

/// The device asks the relay to send one of its uplink flows straight back
/// on the downlink flow, for this session only (`voxgate setup` measures
/// the round trip with it). The relay answers with the same message once
/// the downlink flow is announced, or with an error; `on: false` stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Echo {
    /// The uplink flow to echo (announced with [`FlowOpen`] first).
    pub flow: u64,
    /// Start (`true`) or stop (`false`).
    pub on: bool,
}

/// Every control message of protocol v1.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message<'a> {
    /// See [`Hello`].
    Hello(#[serde(borrow)] Hello<'a>),
    /// See [`Welcome`].
    Welcome(Welcome<'a>),
    /// See [`FlowOpen`].
    FlowOpen(FlowOpen<'a>),
    /// See [`FlowClose`].
    FlowClose(FlowClose),
    /// See [`Stats`].
    Stats(Stats),
    /// See [`Ping`].
    Ping(Ping),
    /// Answer to a ping.
    Pong(Ping),
    /// See [`ErrorMsg`].
    Error(ErrorMsg<'a>),
    /// See [`Enroll`].
    Enroll(Enroll<'a>),
    /// See [`Enrolled`].
    Enrolled(Enrolled<'a>),
    /// A phone registered this extension (see [`ExtUp`]).
    ExtUp(ExtUp<'a>),
    /// The extension's last phone unregistered.
    ExtDown(ExtUp<'a>),
    /// See [`CallSetup`].
    CallSetup(CallSetup<'a>),
    /// See [`CallRinging`].
    CallRinging(CallRinging),
    /// See [`CallAnswer`].
    CallAnswer(CallAnswer),
    /// See [`CallEnd`].
    CallEnd(CallEnd),
    /// See [`Dtmf`].
    Dtmf(Dtmf<'a>),
    /// See [`Renew`].
    Renew(Renew<'a>),
    /// The relay's answer to [`Renew`]: the new certificate (same shape as
    /// [`Enrolled`]).
    Renewed(Enrolled<'a>),
    /// See [`RenewNow`].
    RenewNow(RenewNow<'a>),
    /// See [`TrustRoot`].
    TrustRoot(TrustRoot<'a>),
    /// See [`Echo`].
    Echo(Echo),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
}

/// Write `msg` as one length-prefixed frame into `buf`; returns the frame length.
pub fn encode(msg: &Message<'_>, buf: &mut [u8]) -> Result<usize, ControlError> {
    if buf.len() < PREFIX {
        return Err(ControlError::NoSpace(buf.len()));
    }
    let limit = (buf.len() - PREFIX).min(MAX_MESSAGE);
    let n = serde_json_core::to_slice(msg, &mut buf[PREFIX..PREFIX + limit])
        .map_err(|_| ControlError::NoSpace(limit))?;
    // n <= MAX_MESSAGE < u16::MAX
    buf[..PREFIX].copy_from_slice(&(n as u16).to_be_bytes());
    Ok(PREFIX + n)
}

/// Decode one frame from the front of `buf`.
///
/// `Ok(None)` means more bytes are needed. On success returns the message and
/// the bytes consumed. An oversize prefix is reported as soon as the two
/// prefix bytes are present.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, ControlError> {
    let Some(prefix) = buf.get(..PREFIX) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len > MAX_MESSAGE {
        return Err(ControlError::Oversize(len));
    }
    if len == 0 {
        return Err(ControlError::Empty);
    }
    let Some(body) = buf.get(PREFIX..PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, PREFIX + len)))
}

/// Decode one JSON body (without its prefix).
pub fn decode_body(body: &[u8]) -> Result<Message<'_>, ControlError> {
    fn de<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, ControlError> {
        serde_json_core::from_slice::<T>(b)
            .map(|(v, _)| v)
            .map_err(ControlError::Malformed)
    }
    if body.contains(&b'\\') {
        return Err(ControlError::Escape);
    }
    let env: Envelope<'_> = de(body)?;
    Ok(match env.ty {
        "hello" => Message::Hello(de(body)?),
        "welcome" => Message::Welcome(de(body)?),
        "flow_open" => Message::FlowOpen(de(body)?),
        "flow_close" => Message::FlowClose(de(body)?),
        "stats" => Message::Stats(de(body)?),
        "ping" => Message::Ping(de(body)?),
        "pong" => Message::Pong(de(body)?),
        "error" => Message::Error(de(body)?),
        "enroll" => Message::Enroll(de(body)?),
        "enrolled" => Message::Enrolled(de(body)?),
        "ext_up" => Message::ExtUp(de(body)?),
        "ext_down" => Message::ExtDown(de(body)?),
        "call_setup" => Message::CallSetup(de(body)?),
        "call_ringing" => Message::CallRinging(de(body)?),
        "call_answer" => Message::CallAnswer(de(body)?),
        "call_end" => Message::CallEnd(de(body)?),
        "dtmf" => Message::Dtmf(de(body)?),
        "renew" => Message::Renew(de(body)?),
        "renewed" => Message::Renewed(de(body)?),
        "renew_now" => Message::RenewNow(de(body)?),
        "trust_root" => Message::TrustRoot(de(body)?),
        "echo" => Message::Echo(de(body)?),
        _ => return Err(ControlError::UnknownType),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    #[test]
    fn hello_fixture() {
        let bytes =
            frame(r#"{"type":"hello","device":"gw-1","version":"0.1.0","caps":["opus","fec"]}"#);
        let (msg, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let Message::Hello(h) = &msg else {
            panic!("not hello: {msg:?}")
        };
        assert_eq!(h.device, "gw-1");
        assert_eq!(&h.caps[..], &["opus", "fec"]);
        let mut buf = [0u8; 256];
        let n = encode(&msg, &mut buf).unwrap();
        assert_eq!(&buf[..n], &bytes[..]);
    }

    #[test]
    fn round_trips_every_type() {
        let msgs = [
            Message::Welcome(Welcome {
                version: "0.1.0",
                session: 7,
            }),
            Message::FlowOpen(FlowOpen {
                flow: 4,
                dir: Direction::Down,
                ssrc: 0xdead_beef,
                codec: "opus",
                frame_ms: 20,
            }),
            Message::FlowClose(FlowClose { flow: 4 }),
            Message::Stats(Stats {
                flow: 0,
                received: 100,
                lost: 3,
                late: 1,
                jitter_us: 2500,
            }),
            Message::Ping(Ping { id: u64::MAX }),
            Message::Pong(Ping { id: 1 }),
            Message::Error(ErrorMsg {
                code: "unknown_type",
                message: "no such message",
            }),
            Message::ExtUp(ExtUp { ext: "201" }),
            Message::ExtDown(ExtUp { ext: "201" }),
            Message::CallSetup(CallSetup {
                call: 1,
                to: "202",
                from: "201",
                flow: 16,
                ssrc: 9,
            }),
            Message::CallRinging(CallRinging { call: 1 }),
            Message::CallAnswer(CallAnswer {
                call: 0x8000_0001,
                flow: 17,
                ssrc: 10,
            }),
            Message::CallEnd(CallEnd {
                call: 1,
                reason: EndReason::Busy,
            }),
            Message::Dtmf(Dtmf {
                call: 1,
                digit: "#",
                duration_ms: 100,
            }),
            Message::Renew(Renew { csr: "TUlJQg==" }),
            Message::Renewed(Enrolled {
                cert: "TUlJQw==",
                not_after: 1_800_000_000,
            }),
            Message::RenewNow(RenewNow {
                reason: "issuing CA rotated",
            }),
            Message::TrustRoot(TrustRoot {
                root: "TUlJRA==",
                cross: "",
                only: true,
            }),
        ];
        let mut buf = [0u8; 512];
        for m in msgs {
            let n = encode(&m, &mut buf).unwrap();
            let (back, used) = decode_frame(&buf[..n]).unwrap().unwrap();
            assert_eq!((back, used), (m, n));
        }
    }

    #[test]
    fn call_fixtures_and_sip_status_mapping() {
        let bytes = frame(
            r#"{"type":"call_setup","call":7,"to":"900","from":"201","flow":16,"ssrc":4660}"#,
        );
        let (m, _) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(
            m,
            Message::CallSetup(CallSetup {
                call: 7,
                to: "900",
                from: "201",
                flow: 16,
                ssrc: 4660
            })
        );
        let bytes = frame(r#"{"type":"call_end","call":7,"reason":"not_found"}"#);
        let (m, _) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(
            m,
            Message::CallEnd(CallEnd {
                call: 7,
                reason: EndReason::NotFound
            })
        );
        assert!(matches!(
            decode_frame(&frame(r#"{"type":"call_end","call":7,"reason":"bored"}"#)),
            Err(ControlError::Malformed(_))
        ));
        for r in [
            EndReason::Busy,
            EndReason::NotFound,
            EndReason::Timeout,
            EndReason::Declined,
            EndReason::Unavailable,
            EndReason::Error,
            EndReason::Normal,
        ] {
            assert_eq!(EndReason::from_sip_status(r.sip_status()), r);
        }
    }

    #[test]
    fn echo_fixture_round_trips_and_rejects_bad_fields() {
        let bytes = frame(r#"{"type":"echo","flow":2,"on":true}"#);
        let (m, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(m, Message::Echo(Echo { flow: 2, on: true }));
        let mut buf = [0u8; 64];
        let n = encode(&m, &mut buf).unwrap();
        assert_eq!(&buf[..n], &bytes[..]);
        let off = Message::Echo(Echo {
            flow: u64::MAX,
            on: false,
        });
        let n = encode(&off, &mut buf).unwrap();
        assert_eq!(decode_frame(&buf[..n]).unwrap().unwrap().0, off);
        for bad in [
            r#"{"type":"echo","flow":2}"#,
            r#"{"type":"echo","on":true}"#,
            r#"{"type":"echo","flow":-1,"on":true}"#,
            r#"{"type":"echo","flow":2,"on":"yes"}"#,
        ] {
            assert!(
                matches!(decode_frame(&frame(bad)), Err(ControlError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn partial_input_needs_more() {
        let bytes = frame(r#"{"type":"ping","id":3}"#);
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
        // Two frames back to back decode one at a time.
        let mut two = bytes.clone();
        two.extend_from_slice(&frame(r#"{"type":"pong","id":3}"#));
        let (_, used) = decode_frame(&two).unwrap().unwrap();
        let (m, _) = decode_frame(&two[used..]).unwrap().unwrap();
        assert_eq!(m, Message::Pong(Ping { id: 3 }));
    }

    #[test]
    fn rejects_oversize_from_prefix_alone() {
        let prefix = ((MAX_MESSAGE + 1) as u16).to_be_bytes();
        assert_eq!(
            decode_frame(&prefix),
            Err(ControlError::Oversize(MAX_MESSAGE + 1))
        );
        assert_eq!(decode_frame(&[0, 0]), Err(ControlError::Empty));
    }

    #[test]
    fn rejects_malformed_and_unknown() {
        for bad in [
            "not json",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"ping","id":"x"}"#,
            r#"{"type":"flow_open","flow":1,"dir":"sideways","ssrc":1,"codec":"opus","frame_ms":20}"#,
            "[1,2,3]",
        ] {
            assert!(
                matches!(decode_frame(&frame(bad)), Err(ControlError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            decode_frame(&frame(r#"{"type":"launch_missiles"}"#)),
            Err(ControlError::UnknownType)
        );
        assert_eq!(
            decode_frame(&frame(
                r#"{"type":"hello","device":"a\"b","version":"1","caps":[]}"#
            )),
            Err(ControlError::Escape)
        );
    }

    #[test]
    fn enroll_round_trips_and_never_shows_its_token() {
        let m = Message::Enroll(Enroll {
            token: "ABCDEFGHSECRETTOKEN",
            device: "gw-1",
            csr: "MIIBFTCBvAIBADA=",
        });
        let mut buf = [0u8; 512];
        let n = encode(&m, &mut buf).unwrap();
        assert_eq!(decode_frame(&buf[..n]).unwrap().unwrap().0, m);
        let shown = format!("{m:?} {m:#?}");
        assert!(!shown.contains("SECRETTOKEN"), "{shown}");
        assert!(shown.contains("gw-1"));
    }

    #[test]
    fn encode_reports_no_space() {
        let m = Message::Ping(Ping { id: 1 });
        assert!(matches!(
            encode(&m, &mut [0u8; 8]),
            Err(ControlError::NoSpace(_))
        ));
    }
}
