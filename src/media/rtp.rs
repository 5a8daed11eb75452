//! RTP packets (RFC 3550) in the smoltcp style: [`Packet`] wraps a byte
//! buffer, checks its length once in [`Packet::new_checked`], and then every
//! accessor is infallible. [`Repr`] is the parsed, owned-free view used to
//! emit packets into a caller-owned buffer.
//!
//! Guarantees: no accessor panics on any input that passed `new_checked`;
//! `emit` never writes past the buffer it is given.

use thiserror::Error;

/// Byte ranges of the fixed RTP header.
mod field {
    use core::ops::Range;
    pub const VPXCC: usize = 0;
    pub const MPT: usize = 1;
    pub const SEQ: Range<usize> = 2..4;
    pub const TIMESTAMP: Range<usize> = 4..8;
    pub const SSRC: Range<usize> = 8..12;
    pub const FIXED_LEN: usize = 12;
}

/// The fixed header length.
pub const HEADER_LEN: usize = field::FIXED_LEN;
/// RTP version 2, the only one in use.
pub const VERSION: u8 = 2;

/// Why a buffer is not a usable RTP packet.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RtpError {
    /// Shorter than the fixed header, the CSRC list or the extension it announces.
    #[error("RTP packet truncated: {len} bytes, header needs {needed}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header claims.
        needed: usize,
    },
    /// Version field is not 2.
    #[error("RTP version {0} is not 2")]
    Version(u8),
    /// Padding length is zero or longer than the payload.
    #[error("RTP padding length is invalid")]
    Padding,
}

/// A read-only view of an RTP packet in a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    payload_start: usize,
    payload_end: usize,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Check the header, CSRC list, extension and padding against the buffer length.
    pub fn new_checked(buffer: T) -> Result<Self, RtpError> {
        let b = buffer.as_ref();
        if b.len() < field::FIXED_LEN {
            return Err(RtpError::Truncated {
                len: b.len(),
                needed: field::FIXED_LEN,
            });
        }
        let version = b[field::VPXCC] >> 6;
        if version != VERSION {
            return Err(RtpError::Version(version));
        }
        let csrc_count = usize::from(b[field::VPXCC] & 0x0f);
        let mut start = field::FIXED_LEN + 4 * csrc_count;
        if b.len() < start {
            return Err(RtpError::Truncated {
                len: b.len(),
                needed: start,
            });
        }
        if b[field::VPXCC] & 0x10 != 0 {
            // Header extension: 16-bit profile, 16-bit length in 32-bit words.
            if b.len() < start + 4 {
                return Err(RtpError::Truncated {
                    len: b.len(),
                    needed: start + 4,
                });
            }
            let words = usize::from(u16::from_be_bytes([b[start + 2], b[start + 3]]));
            start += 4 + 4 * words;
            if b.len() < start {
                return Err(RtpError::Truncated {
                    len: b.len(),
                    needed: start,
                });
            }
        }
        let mut end = b.len();
        if b[field::VPXCC] & 0x20 != 0 {
            let pad = usize::from(b[end - 1]);
            if pad == 0 || pad > end - start {
                return Err(RtpError::Padding);
            }
            end -= pad;
        }
        Ok(Packet {
            buffer,
            payload_start: start,
            payload_end: end,
        })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The marker bit (start of a talk spurt for audio).
    pub fn marker(&self) -> bool {
        self.bytes()[field::MPT] & 0x80 != 0
    }

    /// The 7-bit payload type.
    pub fn payload_type(&self) -> u8 {
        self.bytes()[field::MPT] & 0x7f
    }

    /// The sequence number.
    pub fn sequence(&self) -> u16 {
        let b = &self.bytes()[field::SEQ];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The media timestamp (48 kHz for Opus, RFC 7587).
    pub fn timestamp(&self) -> u32 {
        let b = &self.bytes()[field::TIMESTAMP];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The synchronisation source.
    pub fn ssrc(&self) -> u32 {
        let b = &self.bytes()[field::SSRC];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The payload, without CSRCs, extension or padding.
    pub fn payload(&self) -> &[u8] {
        &self.bytes()[self.payload_start..self.payload_end]
    }
}

/// The fields voxgate emits: no CSRCs, no extension, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (dynamic, 96..=127 for Opus).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl Repr {
    /// Parse the header fields of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        Repr {
            marker: p.marker(),
            payload_type: p.payload_type(),
            sequence: p.sequence(),
            timestamp: p.timestamp(),
            ssrc: p.ssrc(),
        }
    }

    /// Write the header and `payload` into `buf`, returning the bytes used,
    /// or `None` when `buf` is too small.
    pub fn emit(&self, payload: &[u8], buf: &mut [u8]) -> Option<usize> {
        let len = HEADER_LEN + payload.len();
        let out = buf.get_mut(..len)?;
        out[field::VPXCC] = VERSION << 6;
        out[field::MPT] = (u8::from(self.marker) << 7) | (self.payload_type & 0x7f);
        out[field::SEQ].copy_from_slice(&self.sequence.to_be_bytes());
        out[field::TIMESTAMP].copy_from_slice(&self.timestamp.to_be_bytes());
        out[field::SSRC].copy_from_slice(&self.ssrc.to_be_bytes());
        out[HEADER_LEN..].copy_from_slice(payload);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // V=2, M=1 PT=111, seq=0x1234, ts=0x00010203, ssrc=0xdeadbeef, payload "op".
    const FIXTURE: [u8; 14] = [
        0x80, 0xef, 0x12, 0x34, 0x00, 0x01, 0x02, 0x03, 0xde, 0xad, 0xbe, 0xef, b'o', b'p',
    ];

    #[test]
    fn parses_fixture() {
        let p = Packet::new_checked(&FIXTURE[..]).unwrap();
        assert!(p.marker());
        assert_eq!(p.payload_type(), 111);
        assert_eq!(p.sequence(), 0x1234);
        assert_eq!(p.timestamp(), 0x0001_0203);
        assert_eq!(p.ssrc(), 0xdead_beef);
        assert_eq!(p.payload(), b"op");
    }

    #[test]
    fn emit_matches_fixture() {
        let repr = Repr::parse(&Packet::new_checked(&FIXTURE[..]).unwrap());
        let mut buf = [0u8; 64];
        let n = repr.emit(b"op", &mut buf).unwrap();
        assert_eq!(&buf[..n], &FIXTURE[..]);
        assert_eq!(repr.emit(b"op", &mut buf[..13]), None);
    }

    #[test]
    fn skips_csrc_extension_and_padding() {
        let mut b = vec![0xb1, 0x60, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, 1 word
        b.extend_from_slice(b"xyz");
        b.extend_from_slice(&[0, 2]); // 2 bytes of padding
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), b"xyz");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            Packet::new_checked(&FIXTURE[..11]).unwrap_err(),
            RtpError::Truncated {
                len: 11,
                needed: 12
            }
        );
        let mut v1 = FIXTURE;
        v1[0] = 0x40;
        assert_eq!(
            Packet::new_checked(&v1[..]).unwrap_err(),
            RtpError::Version(1)
        );
        let mut csrc = FIXTURE;
        csrc[0] = 0x8f; // 15 CSRCs announced, none present
        assert!(matches!(
            Packet::new_checked(&csrc[..]),
            Err(RtpError::Truncated { .. })
        ));
        let mut pad = FIXTURE;
        pad[0] = 0xa0;
        pad[13] = 200;
        assert_eq!(
            Packet::new_checked(&pad[..]).unwrap_err(),
            RtpError::Padding
        );
        pad[13] = 0;
        assert_eq!(
            Packet::new_checked(&pad[..]).unwrap_err(),
            RtpError::Padding
        );
    }
}
