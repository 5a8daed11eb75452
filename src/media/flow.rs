//! RTP-over-QUIC datagram framing (draft-ietf-avtcore-rtp-over-quic): a QUIC
//! variable-length integer flow identifier (RFC 9000 §16) followed by exactly
//! one RTP packet.
//!
//! Guarantees: decoding checks every length before reading; encoding writes
//! into a caller-owned buffer and never allocates.

use super::rtp::{self, Packet, RtpError};
use thiserror::Error;

/// Largest flow id a QUIC varint can carry.
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;

/// Why a datagram is not an RTP-over-QUIC packet.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The datagram ends inside the flow-id varint.
    #[error("datagram ends inside the flow identifier")]
    TruncatedFlowId,
    /// The RTP packet after the flow id is invalid.
    #[error("invalid RTP packet: {0}")]
    Rtp(#[from] RtpError),
}

/// Decode a QUIC varint, returning the value and the bytes it used.
pub fn decode_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        v = (v << 8) | u64::from(*byte);
    }
    Some((v, len))
}

/// Encode `v` (at most [`MAX_FLOW_ID`]) as a QUIC varint in its shortest form.
/// Returns the bytes written, or `None` if `buf` is too small or `v` too large.
pub fn encode_varint(v: u64, buf: &mut [u8]) -> Option<usize> {
    let (len, tag) = match v {
        0..=0x3f => (1, 0x00),
        0x40..=0x3fff => (2, 0x40),
        0x4000..=0x3fff_ffff => (4, 0x80),
        0x4000_0000..=MAX_FLOW_ID => (8, 0xc0),
        _ => return None,
    };
    let out = buf.get_mut(..len)?;
    let be = v.to_be_bytes();
    out.copy_from_slice(&be[8 - len..]);
    out[0] |= tag;
    Some(len)
}

/// Split a datagram into its flow id and checked RTP packet.
pub fn decode(datagram: &[u8]) -> Result<(u64, Packet<&[u8]>), FrameError> {
    let (flow, n) = decode_varint(datagram).ok_or(FrameError::TruncatedFlowId)?;
    Ok((flow, Packet::new_checked(&datagram[n..])?))
}

/// Write flow id + RTP header + payload into `buf`; returns the length used.
pub fn encode(flow: u64, repr: &rtp::Repr, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
    let n = encode_varint(flow, buf)?;
    let m = repr.emit(payload, &mut buf[n..])?;
    Some(n + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_rfc9000_examples() {
        // RFC 9000 Appendix A.1 sample encodings.
        let cases: [(&[u8], u64); 4] = [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(decode_varint(bytes), Some((value, bytes.len())));
            let mut buf = [0u8; 8];
            let n = encode_varint(value, &mut buf).unwrap();
            assert_eq!(&buf[..n], bytes);
        }
        // Non-minimal two-byte encoding of 37 still decodes.
        assert_eq!(decode_varint(&[0x40, 0x25]), Some((37, 2)));
        assert_eq!(encode_varint(MAX_FLOW_ID + 1, &mut [0u8; 8]), None);
        assert_eq!(encode_varint(15_293, &mut [0u8; 1]), None);
    }

    #[test]
    fn datagram_fixture_round_trip() {
        // flow 2, then RTP: PT 111, seq 7, ts 960, ssrc 0x01020304, payload [0xfc, 0xff].
        let fixture = [
            0x02, 0x80, 0x6f, 0x00, 0x07, 0x00, 0x00, 0x03, 0xc0, 0x01, 0x02, 0x03, 0x04, 0xfc,
            0xff,
        ];
        let (flow, p) = decode(&fixture).unwrap();
        assert_eq!(flow, 2);
        assert_eq!(
            (p.sequence(), p.timestamp(), p.ssrc()),
            (7, 960, 0x0102_0304)
        );
        assert_eq!(p.payload(), &[0xfc, 0xff]);
        let mut buf = [0u8; 64];
        let n = encode(2, &rtp::Repr::parse(&p), p.payload(), &mut buf).unwrap();
        assert_eq!(&buf[..n], &fixture[..]);
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(decode(&[]).unwrap_err(), FrameError::TruncatedFlowId);
        assert_eq!(decode(&[0x40]).unwrap_err(), FrameError::TruncatedFlowId);
        assert!(matches!(
            decode(&[0x01, 0x80, 0x6f]),
            Err(FrameError::Rtp(_))
        ));
    }
}
